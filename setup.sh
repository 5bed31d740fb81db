#!/usr/bin/env bash
# Set up a fresh Debian machine for PALLM: system packages, a virtual environment, the project.
# Usage: bash setup.sh            (as root, or with sudo available for apt-get)
set -euo pipefail
cd "$(dirname "$0")"

# cmake and g++ build llama-cpp-python (the local teacher) from source; chromium runs the annotation UI's
# browser tests (Playwright drives the system chromium: no browser download).
APT_PACKAGES=(ffmpeg sox espeak-ng libsndfile1 git cmake g++ chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    SUDO=$([[ $(id -u) == 0 ]] && echo "" || echo "sudo")
    echo "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found; PALLM needs Python 3.11" >&2; exit 1; }
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# dev = the dataset builder, Whisper, the local teacher, Hugging Face datasets (to read the output), test tools.
# llama-cpp-python compiles for a few minutes, once per environment, for the CPU it is built on (-march=native).
# Some virtual machines advertise Intel AMX without enabling it, and the server then dies of a protection fault
# (ldtilecfg) on its first request: build without AMX, which a 135M-parameter teacher does not need. It is
# compiled here, never taken from pip's wheel cache, where an earlier install may have left one with AMX.
if [[ $(uname -m) == x86_64 ]]; then
    NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    export CFLAGS="${CFLAGS:-} $NO_AMX" CXXFLAGS="${CXXFLAGS:-} $NO_AMX"
fi
LLAMA=$(grep -o '"llama-cpp-python\[server\]==[^"]*"' pyproject.toml | tr -d '"')
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip install -q --no-cache-dir "$LLAMA"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "ready: .venv/bin/pallm --help"

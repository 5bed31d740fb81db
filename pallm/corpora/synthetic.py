"""The built-in demo corpus: neutral sentences spoken by espeak-ng voices in several emotions.

Like RAVDESS, the words carry no emotion: every voice says the same few neutral sentences in every
emotion, and only the prosody differs. Each emotion is rendered by an SSML `<prosody>` element that
shifts pitch, pitch range, speaking rate and volume relative to the voice's own defaults (happy,
angry, fearful: higher, wider, faster, louder; sad, calm: lower, narrower, slower, softer).
It is a smoke-test corpus for the pipeline, not a stand-in for human emotional speech.

Layout written by `synthesize()`:

    <corpus_dir>/<speaker>/<speaker>_<emotion>_<NN>.wav   22.05 kHz mono 16-bit (espeak-ng's own rate)
    <corpus_dir>/metadata.csv                             one row per clip: labels, text, prosody
    <corpus_dir>/pallm-synthetic.json                     marker: generator version, parameters, file sizes and hashes

`<speaker>` is the espeak-ng voice with `+` replaced by `-` (`en-us+f3` -> `en-us-f3`); `NN` is the
1-based sentence number. Fold = 1-based speaker index, so every split is speaker-independent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, NamedTuple
from xml.sax.saxutils import escape

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pallm.corpora.base import CorpusAdapter, CorpusError, ItemError, Quarantined, SplitOptions, read_text, utterance
from pallm.labels import UnknownLabel
from pallm.paths import cache_dir

#: Bump whenever the generated audio or layout changes: the marker and the default folder carry it.
GENERATOR_VERSION = 1
MARKER = "pallm-synthetic.json"
METADATA = "metadata.csv"
CORPUS = "synthetic"


class Prosody(NamedTuple):
    """SSML `<prosody>` attributes for one emotion, relative to the voice's defaults."""

    pitch: str
    range: str
    rate: str
    volume: str


#: Volumes stop at +35%: louder settings clip some voices (peaks at full scale).
PROFILES: dict[str, Prosody] = {
    "neutral": Prosody("+0%", "+0%", "+0%", "+0%"),
    "calm": Prosody("-8%", "-30%", "-15%", "-25%"),
    "happy": Prosody("+25%", "+60%", "+15%", "+20%"),
    "sad": Prosody("-20%", "-60%", "-30%", "-45%"),
    "angry": Prosody("+10%", "+40%", "+20%", "+35%"),
    "fearful": Prosody("+40%", "+30%", "+25%", "+10%"),
    "surprised": Prosody("+35%", "+100%", "+0%", "+20%"),
}

DEFAULT_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful")

DEFAULT_SENTENCES = (
    "The chairs are next to the window.",
    "The train leaves at seven in the morning.",
    "The box is on the kitchen table.",
    "We walked along the road to the station.",
)

_VOICE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]+)*(\+[A-Za-z0-9]+)?$")


class Voice(BaseModel):
    """One synthetic speaker: an espeak-ng voice (`language+variant`) and the gender it portrays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    espeak: str
    gender: Literal["female", "male"]

    @field_validator("espeak")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _VOICE.match(v):
            raise ValueError(f"voice {v!r} is not an espeak-ng `language[+variant]` name such as en-us+f3")
        return v

    @property
    def speaker(self) -> str:
        """Speaker id used in file names and rows (`en-us+f3` -> `en-us-f3`)."""
        return self.espeak.replace("+", "-")


# en-gb+<variant> is not used: espeak-ng 1.51 silently ignores the variant there (same audio as
# plain en-gb), so a "female" en-gb+f4 would be a male voice. en-gb-x-rp and en-gb-scotland honour it.
DEFAULT_VOICES = (
    Voice(espeak="en-us+f3", gender="female"),
    Voice(espeak="en-us+m3", gender="male"),
    Voice(espeak="en-gb-x-rp+f4", gender="female"),
    Voice(espeak="en-gb-x-rp+m7", gender="male"),
    Voice(espeak="en-gb-scotland+f2", gender="female"),
    Voice(espeak="en-gb-scotland+m1", gender="male"),
)


class SyntheticOptions(SplitOptions):
    """What to synthesise, and which speakers form the test and validation splits (fold = speaker index)."""

    voices: list[Voice] = Field(default_factory=lambda: list(DEFAULT_VOICES))
    emotions: list[str] = Field(default_factory=lambda: list(DEFAULT_EMOTIONS))
    sentences: list[str] = Field(default_factory=lambda: list(DEFAULT_SENTENCES))
    test_folds: list[int] = Field(default_factory=lambda: [1])
    validation_folds: list[int] = Field(default_factory=lambda: [2])

    @field_validator("voices")
    @classmethod
    def _check_voices(cls, v: list[Voice]) -> list[Voice]:
        if not v:
            raise ValueError("give at least one voice")
        speakers = [x.speaker for x in v]
        dups = sorted({s for s in speakers if speakers.count(s) > 1})
        if dups:
            raise ValueError(f"voices repeat speaker(s) {dups}")
        return v

    @field_validator("emotions")
    @classmethod
    def _check_emotions(cls, v: list[str]) -> list[str]:
        unknown = [e for e in v if e not in PROFILES]
        if unknown:
            raise ValueError(f"no prosody profile for {unknown}; known: {', '.join(PROFILES)}")
        if not v or len(set(v)) != len(v):
            raise ValueError("give one or more distinct emotions")
        return v

    @field_validator("sentences")
    @classmethod
    def _check_sentences(cls, v: list[str]) -> list[str]:
        if not v or len(v) > 99:
            raise ValueError("give 1 to 99 sentences")
        if any(not s.strip() or not s.isprintable() for s in v) or len(set(v)) != len(v):
            raise ValueError("sentences must be distinct, non-empty, printable one-liners")
        return v


class _Clip(NamedTuple):
    speaker_index: int
    voice: Voice
    emotion: str
    sentence: int  # 1-based
    text: str

    @property
    def local_id(self) -> str:
        return f"{self.voice.speaker}_{self.emotion}_{self.sentence:02d}"

    @property
    def rel_path(self) -> str:
        return f"{self.voice.speaker}/{self.local_id}.wav"


def default_dir() -> Path:
    """Default folder: `synthetic-v<N>` in the pallm cache (see `pallm.paths.cache_dir`)."""
    return cache_dir(f"synthetic-v{GENERATOR_VERSION}")


def parameters(options: SyntheticOptions) -> dict[str, Any]:
    """Everything that determines the audio, as recorded in the marker (split settings excluded)."""
    return {
        "voices": [v.model_dump() for v in options.voices],
        "emotions": list(options.emotions),
        "sentences": list(options.sentences),
        "profiles": {e: PROFILES[e]._asdict() for e in options.emotions},
    }


def _clips(options: SyntheticOptions) -> list[_Clip]:
    return [
        _Clip(i, voice, emotion, n, text)
        for i, voice in enumerate(options.voices, start=1)
        for emotion in options.emotions
        for n, text in enumerate(options.sentences, start=1)
    ]


def _read_marker(corpus_dir: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((corpus_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_complete(corpus_dir: Path, options: SyntheticOptions) -> bool:
    """Whether `corpus_dir` holds a complete corpus of this generator version and these parameters."""
    marker = _read_marker(corpus_dir)
    if marker is None or marker.get("version") != GENERATOR_VERSION or marker.get("parameters") != parameters(options):
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, entry in files.items():
        try:
            if (corpus_dir / rel).stat().st_size != entry["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def synthesize(corpus_dir: Path, options: SyntheticOptions | None = None) -> None:
    """Write the synthetic corpus into `corpus_dir` unless a complete one with the same parameters is there.

    Generation goes into a temporary sibling folder that is renamed into place only once every
    file and the marker are written, so an interrupted run never leaves a corpus that looks
    complete. A stale corpus of ours (other version or parameters, or files missing) is replaced;
    a non-empty folder without our marker is refused rather than overwritten.
    Raises CorpusError if espeak-ng is missing or fails, or if the folder holds something else.
    """
    options = options or SyntheticOptions()
    if is_complete(corpus_dir, options):
        return
    if corpus_dir.exists() and not corpus_dir.is_dir():
        raise CorpusError(f"{corpus_dir} is a file; point the synthetic corpus at a folder (it may be missing)")
    ours = (corpus_dir / MARKER).exists()
    if corpus_dir.is_dir() and any(corpus_dir.iterdir()) and not ours:
        raise CorpusError(
            f"{corpus_dir} is not empty and holds no {MARKER}: refusing to overwrite it; point the synthetic "
            "corpus at an empty or missing folder"
        )
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise CorpusError("espeak-ng is not installed; install espeak-ng: apt-get install espeak-ng")

    corpus_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(corpus_dir, "partial")
    try:
        _generate(espeak, tmp, options)
        _install(tmp, corpus_dir, options)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sibling(corpus_dir: Path, kind: str) -> Path:
    """A new hidden folder next to `corpus_dir` (mkdir, not mkdtemp: the corpus keeps umask permissions)."""
    path = corpus_dir.parent / f".{corpus_dir.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _install(tmp: Path, corpus_dir: Path, options: SyntheticOptions) -> None:
    """Move the finished corpus `tmp` into place atomically (rename), replacing a stale corpus of ours."""
    old: Path | None = None
    if corpus_dir.is_dir() and any(corpus_dir.iterdir()):
        old = _sibling(corpus_dir, "old")
        os.rename(corpus_dir, old / "corpus")
    try:
        os.rename(tmp, corpus_dir)  # replaces a missing or empty folder in one step
    except OSError as e:
        # Another process may have installed the same corpus meanwhile: that is success.
        if is_complete(corpus_dir, options):
            return
        raise CorpusError(
            f"could not move the generated corpus into {corpus_dir} ({e.strerror}); is something else writing there?"
        ) from e
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _run(cmd: list[str], what: str) -> bytes:
    """Run espeak-ng; CorpusError naming `what` it was doing if it fails or hangs."""
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=120, env={**os.environ, "LC_ALL": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        raise CorpusError(f"espeak-ng hung for 120 s ({what})") from None
    if proc.returncode != 0:
        why = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise CorpusError(f"espeak-ng failed ({what}): {why}")
    return proc.stdout


def _check_voice(espeak: str, voice: Voice) -> None:
    """Fail if espeak-ng ignores the voice's variant (it does so silently, e.g. for en-gb+f4)."""
    if "+" not in voice.espeak:
        return
    base = voice.espeak.split("+", 1)[0]
    probe, what = "voice check", f"checking voice {voice.espeak}"
    if _run([espeak, "-v", voice.espeak, "--stdout", probe], what) == _run(
        [espeak, "-v", base, "--stdout", probe], what
    ):
        raise CorpusError(
            f"espeak-ng ignores the variant of voice {voice.espeak!r} (same audio as plain {base!r}), so its gender "
            "label would be wrong; pick another voice, e.g. en-us+f3 or en-gb-x-rp+f4 (see espeak-ng --voices=variant)"
        )


def _ssml(text: str, prosody: Prosody) -> str:
    attrs = " ".join(f'{k}="{v}"' for k, v in prosody._asdict().items())
    return f"<speak><prosody {attrs}>{escape(text)}</prosody></speak>"


def _render(espeak: str, root: Path, clip: _Clip) -> None:
    out = root / clip.rel_path
    ssml = _ssml(clip.text, PROFILES[clip.emotion])
    _run(
        [espeak, "-m", "-b", "1", "-v", clip.voice.espeak, "-w", str(out), ssml],
        f"voice {clip.voice.espeak}, {clip.rel_path}",
    )
    if not out.is_file() or out.stat().st_size <= 44:
        raise CorpusError(f"espeak-ng wrote no audio for {clip.rel_path}")


def _generate(espeak: str, root: Path, options: SyntheticOptions) -> None:
    clips = _clips(options)
    for voice in options.voices:
        (root / voice.speaker).mkdir()
    # espeak-ng is single-threaded and each call is short: a few threads overlap process start-up.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda v: _check_voice(espeak, v), options.voices))
        list(pool.map(lambda c: _render(espeak, root, c), clips))

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "path", "speaker", "speaker_index", "gender", "voice", "emotion", "sentence", "text",
                     *Prosody._fields])  # fmt: skip
    for c in clips:
        writer.writerow([c.local_id, c.rel_path, c.voice.speaker, c.speaker_index, c.voice.gender, c.voice.espeak,
                         c.emotion, c.sentence, c.text, *PROFILES[c.emotion]])  # fmt: skip
    (root / METADATA).write_text(buf.getvalue(), encoding="utf-8", newline="")

    files = {}
    for rel in [METADATA, *(c.rel_path for c in clips)]:
        data = (root / rel).read_bytes()
        files[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    version = _run([espeak, "--version"], "--version").decode("utf-8", "replace")
    m = re.search(r"text-to-speech:\s*(\S+)", version)
    marker = {
        "generator": "pallm.corpora.synthetic",
        "version": GENERATOR_VERSION,
        "espeak_ng": m.group(1) if m else "unknown",
        "parameters": parameters(options),
        "files": files,
    }
    # The marker is written last: its presence is what makes the folder count as complete.
    (root / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def scan(corpus_dir: Path, options: SyntheticOptions) -> Iterator[dict[str, Any] | Quarantined]:
    """Synthesise the corpus into `corpus_dir` if needed, then yield one row per clip of `metadata.csv`."""
    synthesize(corpus_dir, options)
    try:
        text = read_text(corpus_dir / METADATA)
    except ItemError as e:
        raise CorpusError(f"{corpus_dir / METADATA}: {e}; delete {corpus_dir} to regenerate it") from None
    for line, rec in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        rel = rec.get("path") or f"{METADATA}:{line}"
        source = corpus_dir / rel
        if not source.is_file():
            yield Quarantined(None, CORPUS, rel, "ingest", f"{METADATA} line {line} names a missing file; "
                              f"delete {corpus_dir} to regenerate the corpus")  # fmt: skip
            continue
        fold = int(rec["speaker_index"])
        try:
            yield utterance(
                corpus=CORPUS,
                local_id=rec["id"],
                source=source,
                corpus_dir=corpus_dir,
                emotion_native=rec["emotion"],
                speaker=rec["speaker"],
                gender=rec["gender"],
                split=options.split_for(fold),
                fold=fold,
                transcript_ref=rec["text"],
            )
        except UnknownLabel as e:
            yield Quarantined(f"{CORPUS}/{rec['id']}", CORPUS, rel, "ingest", f"{METADATA} line {line}: {e}")


ADAPTER = CorpusAdapter(
    license_id="cc0-1.0",
    name=CORPUS,
    scan=scan,
    default_path=default_dir,
    options=SyntheticOptions,
    license=(
        "CC0-1.0: the clips are generated by this project with espeak-ng; espeak-ng is GPL-3.0-or-later, "
        "but the GPL does not cover the speech it outputs, and we dedicate the corpus to the public domain"
    ),
    homepage="https://github.com/espeak-ng/espeak-ng",
    citation="Synthetic demo corpus generated by pallm.corpora.synthetic with eSpeak NG (https://github.com/espeak-ng/espeak-ng).",
    description=(
        "SYNTHETIC speech, not human: espeak-ng voices (female and male) saying the same neutral sentences in "
        "several emotions rendered only by rule-based prosody (pitch, range, rate, volume), so the words carry no "
        "emotion. A built-in demo and smoke test of the pipeline; not evidence of how a model handles real emotion."
    ),
    synthetic=True,
)

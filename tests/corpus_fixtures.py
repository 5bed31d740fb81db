"""Small corpus trees in the exact layout and line formats of the real releases, for adapter tests.

Each `make_*_tree(root)` writes a tree of short, real WAV files (a voiced-like signal: a fundamental
with harmonics, a slow vibrato and a little noise, never silence) plus the corpus's text files,
including a few deliberately broken items, and returns what a correct adapter must report: the rows
it must yield (with the values to check) and the items it must quarantine (with a word the reason
must contain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

IEMOCAP_RATE = 16_000
EXPRESSO_RATE = 48_000
#: the first line of the real split files, verbatim
SPLIT_HEADER = (
    "# If only one segment is extracted, it will have the format: "
    '"{filename}\\t({startime(optional)},{endtime(optional)})"'
)
LONGFORM_TEXT = "Toxic chemicals are accumulating.   “We often think deep-sea trenches are remote,” says Alan."


def voiced(seconds: float, rate: int, f0: float, seed: int) -> np.ndarray:
    """A speech-like test signal: harmonics of a vibrato-modulated f0 under a syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t) ** 2
    x = 0.25 * x * envelope + 0.01 * rng.standard_normal(t.size)
    return (x / np.max(np.abs(x)) * 0.6).astype(np.float32)


def write_wav(path: Path, rate: int, *channels: np.ndarray) -> Path:
    """Write a 16-bit PCM WAV with one column per channel signal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = channels[0] if len(channels) == 1 else np.stack(channels, axis=1)
    sf.write(path, data, rate, subtype="PCM_16")
    return path


def _write_lines(path: Path, lines: list[bytes | str]) -> None:
    """Write lines as UTF-8, except those given as bytes, which are written as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")


# --------------------------------------------------------------------------------------------- IEMOCAP


def _emo_block(start: float, end: float, utt: str, label: str, vad: tuple[float, float, float]) -> list[str]:
    """One EmoEvaluation block: the summary line, annotator lines as in the real files, a blank line."""
    v, a, d = vad
    return [
        f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]",
        "C-E2:\tNeutral;\t()",
        "C-E3:\tNeutral;\t()",
        "A-E3:\tval 3; act 2; dom  3;\t()",
        "A-F1:\tval 2; act 3; dom  2;\t()",
        "",
    ]


_EMO_HEADER = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]


def make_iemocap_tree(root: Path) -> dict[str, Any]:
    """Write a small IEMOCAP release (Session1 and Session5) under `root`; return what a scan must find."""
    s1 = root / "Session1"
    impro, script, s5 = "Ses01F_impro01", "Ses01F_script01_1", "Ses05M_impro03"
    good: dict[str, dict[str, Any]] = {
        f"{impro}_F000": dict(label="neu", four="neu", vad=(2.5, 2.5, 2.5), t=(6.2901, 8.2357), text="Excuse me.",
                              speaker="session1-F", gender="female", session=1, dialog=impro, part="impro"),
        f"{impro}_M000": dict(label="exc", four="hap", vad=(3.5, 4.0, 3.0), t=(10.01, 11.3934),
                              text="Do you have your forms?", speaker="session1-M", gender="male", session=1,
                              dialog=impro, part="impro"),
        f"{impro}_M001": dict(label="xxx", four=None, vad=(2.0, 3.5, 3.5), t=(14.8872, 18.0175), text="Yeah.",
                              speaker="session1-M", gender="male", session=1, dialog=impro, part="impro"),
        f"{impro}_F004": dict(label="fru", four=None, vad=(2.0, 3.0, 3.5), t=(30.0, 32.5), text=None,
                              speaker="session1-F", gender="female", session=1, dialog=impro, part="impro"),
        f"{script}_F000": dict(label="ang", four="ang", vad=(1.5, 4.0, 4.5), t=(1.0, 3.25), text="What is it?",
                               speaker="session1-F", gender="female", session=1, dialog=script, part="script"),
        f"{script}_M000": dict(label="sad", four="sad", vad=(1.5, 2.0, 2.0), t=(3.5, 6.0), text="I'm sorry… really.",
                               speaker="session1-M", gender="male", session=1, dialog=script, part="script"),
        f"{s5}_F000": dict(label="hap", four="hap", vad=(4.0, 3.5, 3.0), t=(0.5, 2.0), text="That's great news!",
                           speaker="session5-F", gender="female", session=5, dialog=s5, part="impro"),
        f"{s5}_M000": dict(label="sad", four="sad", vad=(2.0, 2.0, 2.5), t=(2.5, 4.75), text="I know.",
                           speaker="session5-M", gender="male", session=5, dialog=s5, part="impro"),
    }  # fmt: skip

    # Labels: the good utterances, plus a malformed summary line (F002: no end time, two ratings),
    # a label with no audio (M002), an unknown label code (F003) and a bad line naming no utterance.
    impro_labels = list(_EMO_HEADER)
    for utt in (f"{impro}_F000", f"{impro}_M000"):
        impro_labels += _emo_block(*good[utt]["t"], utt, good[utt]["label"], good[utt]["vad"])
    malformed_line = len(impro_labels) + 1
    impro_labels += ["[12.0000 - ]\tSes01F_impro01_F002\tang\t[1.5000, 4.0000]", "C-E2:\tAnger;\t()", ""]
    impro_labels += _emo_block(14.8872, 18.0175, f"{impro}_M001", "xxx", (2.0, 3.5, 3.5))
    impro_labels += _emo_block(19.0, 21.0, f"{impro}_M002", "hap", (4.0, 3.0, 3.0))
    impro_labels += _emo_block(22.0, 24.0, f"{impro}_F003", "zzz", (3.0, 3.0, 3.0))
    impro_labels += _emo_block(*good[f"{impro}_F004"]["t"], f"{impro}_F004", "fru", (2.0, 3.0, 3.5))
    garbage_line = len(impro_labels) + 1
    impro_labels += ["[25.0 - 26.0] garbage", ""]
    _write_lines(s1 / "dialog/EmoEvaluation" / f"{impro}.txt", impro_labels)
    # The raw per-annotator files live in subfolders the adapter must not read as summary files.
    _write_lines(s1 / "dialog/EmoEvaluation/Categorical" / f"{impro}_e2_cat.txt", [f"{impro}_F000 :Neutral state; ()"])
    for dialog, utts in ((script, (f"{script}_F000", f"{script}_M000")), (s5, (f"{s5}_F000", f"{s5}_M000"))):
        session = root / f"Session{good[utts[0]]['session']}"
        lines = list(_EMO_HEADER)
        for utt in utts:
            lines += _emo_block(*good[utt]["t"], utt, good[utt]["label"], good[utt]["vad"])
        _write_lines(session / "dialog/EmoEvaluation" / f"{dialog}.txt", lines)

    # Transcripts: real quirks (an `M:` line, an `MXX0` non-utterance id) and one line that is not
    # UTF-8 (F001's), which must quarantine F001 only. F004 has no transcript line: transcript null.
    _write_lines(s1 / "dialog/transcriptions" / f"{impro}.txt", [
        f"{impro}_F000 [006.2901-008.2357]: Excuse me.",
        f"{impro}_M000 [010.0100-011.3934]: Do you have your forms?",
        f"{impro}_F001 [011.5000-014.0000]: ".encode() + b"Caf\xe9 is closed \xff today.",
        "M: Yeah, right.",
        f"{impro}_MXX0 [014.0000-014.5000]: [BREATHING]",
        f"{impro}_M001 [014.8872-018.0175]: Yeah.",
        f"{impro}_F002 [012.0000-013.0000]: No.",
    ])  # fmt: skip
    for dialog, utts in ((script, (f"{script}_F000", f"{script}_M000")), (s5, (f"{s5}_F000", f"{s5}_M000"))):
        session = root / f"Session{good[utts[0]]['session']}"
        _write_lines(
            session / "dialog/transcriptions" / f"{dialog}.txt",
            [f"{u} [{good[u]['t'][0]:08.4f}-{good[u]['t'][1]:08.4f}]: {good[u]['text']}" for u in utts],
        )

    # Audio: the good utterances, F001/F002/F003 (quarantined for their text), M009 with no label,
    # a stray copy whose name has a space, and a macOS sidecar that must be skipped quietly.
    for i, utt in enumerate([*good, f"{impro}_F001", f"{impro}_F002", f"{impro}_F003", f"{impro}_M009"]):
        dialog = utt.rsplit("_", 1)[0]
        session = root / f"Session{int(utt[3:5])}"
        write_wav(
            session / "sentences/wav" / dialog / f"{utt}.wav",
            IEMOCAP_RATE,
            voiced(0.5 + 0.05 * (i % 6), IEMOCAP_RATE, 110 + 15 * i, seed=i),
        )
    write_wav(s1 / "sentences/wav" / impro / f"{impro}_F000 copy.wav", IEMOCAP_RATE, voiced(0.5, IEMOCAP_RATE, 180, 99))
    (s1 / "sentences/wav" / impro / f"._{impro}_F000.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(60))

    rows = {
        f"iemocap/{utt}": dict(
            emotion_native=g["label"], emotion_4class=g["four"], valence=g["vad"][0], arousal=g["vad"][1],
            dominance=g["vad"][2], start_s=g["t"][0], end_s=g["t"][1], transcript_ref=g["text"],
            speaker_id=f"iemocap/{g['speaker']}", gender=g["gender"], session=g["session"], fold=g["session"],
            dialog=g["dialog"], part=g["part"], split="test" if g["session"] == 5 else "train",
            audio_path=f"Session{g['session']}/sentences/wav/{g['dialog']}/{utt}.wav",
        )
        for utt, g in good.items()
    }  # fmt: skip
    return {
        "root": root,
        "rows": rows,
        # id -> (path the record must carry, words its reason must contain)
        "quarantined_ids": {
            f"iemocap/{impro}_F001": (
                f"Session1/sentences/wav/{impro}/{impro}_F001.wav",
                [f"transcriptions/{impro}.txt line 3", "UTF-8"],
            ),
            f"iemocap/{impro}_F002": (
                f"Session1/sentences/wav/{impro}/{impro}_F002.wav",
                [f"EmoEvaluation/{impro}.txt line {malformed_line}", "malformed"],
            ),
            f"iemocap/{impro}_M002": (
                f"Session1/sentences/wav/{impro}/{impro}_M002.wav",
                [f"EmoEvaluation/{impro}.txt line", "does not exist"],
            ),
            f"iemocap/{impro}_F003": (
                f"Session1/sentences/wav/{impro}/{impro}_F003.wav",
                [f"EmoEvaluation/{impro}.txt line", "zzz"],
            ),
            f"iemocap/{impro}_M009": (
                f"Session1/sentences/wav/{impro}/{impro}_M009.wav",
                ["no summary line", f"EmoEvaluation/{impro}.txt"],
            ),
        },
        # path -> words the reason must contain, for records that name no utterance
        "quarantined_paths": {
            f"Session1/sentences/wav/{impro}/{impro}_F000 copy.wav": ["not an IEMOCAP utterance file"],
            f"Session1/dialog/EmoEvaluation/{impro}.txt": [f"line {garbage_line}", "malformed"],
        },
    }


# -------------------------------------------------------------------------------------------- Expresso


def make_expresso_tree(root: Path, *, with_splits: bool = True) -> dict[str, Any]:
    """Write a small Expresso release under `root`; return what a scan must find (official splits if `with_splits`)."""
    audio = root / "audio_48khz"
    _write_lines(root / "read_transcriptions.txt", [
        "ex01_default_00001\tHello there, *how* are you?",
        "ex01_default_emphasis_00002\tWas *this* element *always there?*",
        "ex01_default_essentials_00003\tGood morning.",
        "ex01_happy_00001\t*Oh my God*, it's *de-light*.",
        f"ex02_default_longform_00001\t{LONGFORM_TEXT}",
        b"ex02_sad_00001\tShe lost our grandchild\xa0in Montr\xe9al.",
        "ex02_sad_00002\tThe *rough cotton pants include a fly.",
        "ex02_whisper_00001 Pardon me?",
        "ex04_confused_00001\tReady for bed, lamb chop?",
        "",
        b"\xff\xfe broken line with no id",
    ])  # fmt: skip
    read = {
        "ex01/default/base/ex01_default_00001": dict(part="read", text="Hello there, how are you?",
                                                     emphasis=[{"index": 2, "word": "how"}]),
        "ex01/default/base/ex01_default_emphasis_00002": dict(part="read", text="Was this element always there?",
                                                              emphasis=[{"index": 1, "word": "this"},
                                                                        {"index": 3, "word": "always"},
                                                                        {"index": 4, "word": "there?"}]),
        "ex01/default/base/ex01_default_essentials_00003": dict(part="read", text="Good morning.", emphasis=[]),
        "ex01/default/longform/ex01_default_longform_00001": dict(part="longform", text=None, emphasis=None),
        "ex01/happy/base/ex01_happy_00001": dict(part="read", text="Oh my God, it's de-light.", emphasis=[
            {"index": 0, "word": "Oh"}, {"index": 1, "word": "my"}, {"index": 2, "word": "God,"},
            {"index": 4, "word": "de-light."}]),
        "ex02/default/longform/ex02_default_longform_00001": dict(
            part="longform", emphasis=[], text=LONGFORM_TEXT),
        "ex04/confused/base/ex04_confused_00001": dict(part="read", text="Ready for bed, lamb chop?", emphasis=[]),
    }  # fmt: skip
    broken_read = {
        "ex02/sad/base/ex02_sad_00001": ["read_transcriptions.txt line 6", "UTF-8"],
        "ex02/sad/base/ex02_sad_00002": ["read_transcriptions.txt line 7", "'*'"],
        "ex02/sad/base/ex02_sad_00003": ["no line for ex02_sad_00003", "read_transcriptions.txt"],
        "ex02/whisper/base/ex02_whisper_00001": ["read_transcriptions.txt line 8", "no tab"],
    }
    bad_names = ["ex02/sad/base/ex02_sad_00004 copy.wav", "ex02/sad/base/ex02_sàd_00005.wav",
                 "ex02/sad/ex02_sad_00006.wav", "ex03/happy/base/ex01_happy_00007.wav"]  # fmt: skip
    for i, rel in enumerate([*read, *broken_read]):
        write_wav(audio / "read" / f"{rel}.wav", EXPRESSO_RATE, voiced(0.5, EXPRESSO_RATE, 100 + 20 * i, seed=i))
    for i, rel in enumerate(bad_names):
        write_wav(audio / "read" / rel, EXPRESSO_RATE, voiced(0.5, EXPRESSO_RATE, 130 + 10 * i, seed=50 + i))
    (audio / "read/ex01/default/base/._ex01_default_00001.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(60))

    # Dialogues: stereo, a different voice on each channel (channel 1 = first speaker of the pair).
    conv = {
        "ex01-ex02/default/ex01-ex02_default_001": [("ex01", "default"), ("ex02", "default")],
        "ex03-ex02/sad-sympathetic/ex03-ex02_sad-sympathetic_001": [("ex03", "sad"), ("ex02", "sympathetic")],
        "ex04-ex01/animal-animaldir/ex04-ex01_animal-animaldir_005": [("ex04", "animal"), ("ex01", "animaldir")],
        "ex03-ex01/nonverbal/ex03-ex01_nonverbal_001": [("ex03", "nonverbal"), ("ex01", "nonverbal")],
    }
    for i, rel in enumerate(conv):
        write_wav(
            audio / "conversational" / f"{rel}.wav",
            EXPRESSO_RATE,
            voiced(0.75, EXPRESSO_RATE, 120 + 10 * i, seed=10 + i),
            voiced(0.75, EXPRESSO_RATE, 210 + 10 * i, seed=20 + i),
        )
    write_wav(
        audio / "conversational/ex04-ex03/default/ex04-ex03_fast_002.wav",
        EXPRESSO_RATE,
        voiced(0.5, EXPRESSO_RATE, 150, 30),
        voiced(0.5, EXPRESSO_RATE, 240, 31),
    )
    write_wav(audio / "conversational/ex01-ex02/singing/ex01-ex02_singing_001.wav", EXPRESSO_RATE,
              voiced(0.75, EXPRESSO_RATE, 260, 40))  # fmt: skip

    official = {
        "ex01-ex02_default_001": "validation",  # in train.txt (60.0s,) and dev.txt (,60.0s): dev wins
        "ex03-ex02_sad-sympathetic_001": "test",  # in train, dev and test: test wins
        "ex02_default_longform_00001": "test",
        "ex01_happy_00001": "test",
        "ex04_confused_00001": "validation",
    }
    if with_splits:
        _write_lines(root / "splits/train.txt", [
            SPLIT_HEADER, "ex01-ex02_default_001\t(60.0s,)", "ex03-ex02_sad-sympathetic_001\t(120.0s,)",
            "ex02_default_longform_00001\t(28.14s,)", "ex01_default_00001", "ex01_default_emphasis_00002",
            "ex01_default_essentials_00003", "ex01_default_longform_00001\t(32.98s,)", "ex03-ex01_nonverbal_001",
            "ex01_default_00009\t(60.0s;)",
        ])  # fmt: skip
        _write_lines(root / "splits/dev.txt", [
            SPLIT_HEADER, "ex01-ex02_default_001\t(,60.0s)", "ex03-ex02_sad-sympathetic_001\t(,60.0s)",
            "ex02_default_longform_00001\t(,14.07s)", "ex04_confused_00001",
        ])  # fmt: skip
        _write_lines(root / "splits/test.txt", [
            SPLIT_HEADER, "ex03-ex02_sad-sympathetic_001\t(60.0s,120.0s)",
            "ex02_default_longform_00001\t(14.07s,28.14s)",
            "ex01_happy_00001",
        ])  # fmt: skip

    def split_of(stem: str, speakers: list[str]) -> str:
        if with_splits:
            return official.get(stem, "train")
        return "test" if "ex04" in speakers else "train"  # the default fallback: speaker ex04 is the test fold

    rows: dict[str, dict[str, Any]] = {}
    for rel, r in read.items():
        spk, style, _, stem = rel.split("/")
        rows[f"expresso/{stem}"] = dict(
            speaker_id=f"expresso/{spk}", style=style, emotion_native=style, part=r["part"], channel=None,
            transcript_ref=r["text"], emphasis=r["emphasis"], fold=int(spk[2:]), split=split_of(stem, [spk]),
            audio_path=f"audio_48khz/read/{rel}.wav", dialog=None,
        )  # fmt: skip
    for rel, channels in conv.items():
        stem = rel.rsplit("/", 1)[1]
        for ch, (spk, style) in enumerate(channels):
            rows[f"expresso/{stem}/ch{ch}"] = dict(
                speaker_id=f"expresso/{spk}", style=style, emotion_native=style, part="conversational",
                channel=ch, transcript_ref=None, emphasis=None, fold=int(spk[2:]), split=split_of(stem, [spk]),
                audio_path=f"audio_48khz/conversational/{rel}.wav", dialog=stem,
            )  # fmt: skip
    quarantined_ids = {
        f"expresso/{rel.rsplit('/', 1)[1]}": (f"audio_48khz/read/{rel}.wav", words)
        for rel, words in broken_read.items()
    }
    quarantined_paths = {f"audio_48khz/read/{rel}": ["bad file name or place"] for rel in bad_names}
    quarantined_paths["audio_48khz/conversational/ex04-ex03/default/ex04-ex03_fast_002.wav"] = [
        "bad file name or place"
    ]
    quarantined_paths["read_transcriptions.txt"] = ["read_transcriptions.txt line 11", "UTF-8"]
    if with_splits:
        quarantined_paths["splits/train.txt"] = ["splits/train.txt line 10", "(60.0s;)"]
    return {
        "root": root,
        "rows": rows,
        "quarantined_ids": quarantined_ids,
        "quarantined_paths": quarantined_paths,
        "singing": {
            "id": "expresso/ex01-ex02_singing_001",
            "audio_path": "audio_48khz/conversational/ex01-ex02/singing/ex01-ex02_singing_001.wav",
        },
    }


def assert_quarantined_as_expected(bad: list[Any], tree: dict[str, Any]) -> None:
    """Every quarantine record a fixture tree expects is there, with its path and reason words, and no other."""
    by_id = {q.id: q for q in bad if q.id is not None}
    by_path = {q.path: q for q in bad if q.id is None}
    assert sorted(by_id) == sorted(tree["quarantined_ids"])
    assert sorted(by_path) == sorted(tree["quarantined_paths"])
    assert len(bad) == len(by_id) + len(by_path)
    for qid, (path, words) in tree["quarantined_ids"].items():
        assert by_id[qid].path == path
        for w in words:
            assert w in by_id[qid].reason, (qid, w, by_id[qid].reason)
    for path, words in tree["quarantined_paths"].items():
        for w in words:
            assert w in by_path[path].reason, (path, w, by_path[path].reason)


def scan_adapter(name: str, root: Path, **options: Any) -> tuple[dict[str, dict[str, Any]], list[Any]]:
    """Scan a corpus with its registered adapter: rows by id (asserting ids are unique) and quarantine records."""
    from pallm.corpora import get_adapter
    from pallm.corpora.base import Quarantined

    adapter = get_adapter(name)
    rows: dict[str, dict[str, Any]] = {}
    bad: list[Quarantined] = []
    for item in adapter.scan(root, adapter.options(**options)):
        if isinstance(item, Quarantined):
            bad.append(item)
        else:
            assert item["id"] not in rows, f"duplicate id {item['id']}"
            rows[item["id"]] = item
    return rows, bad


def assert_ids_stable(name: str, root: Path, moved: Path) -> None:
    """Two scans, and a scan of a copy elsewhere, give the same ids and rows; only the source path moves."""
    import shutil

    from pallm.corpora.base import SOURCE_KEY

    first, _ = scan_adapter(name, root)
    again, _ = scan_adapter(name, root)
    shutil.copytree(root, moved)
    elsewhere, _ = scan_adapter(name, moved)
    assert first and list(first) == list(again) == list(elsewhere)
    for rid, row in first.items():
        assert {k: v for k, v in row.items() if k != SOURCE_KEY} == {
            k: v for k, v in elsewhere[rid].items() if k != SOURCE_KEY
        }
        assert Path(elsewhere[rid][SOURCE_KEY]) == moved / row["audio_path"]
        assert Path(row[SOURCE_KEY]).is_absolute()

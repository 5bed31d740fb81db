"""The describe stage: per-speaker z-scores and cue words, once every chunk has been measured."""

from __future__ import annotations

from functools import partial

from pallm.cues.normalize import Z_COLUMNS, SpeakerNorms, z_scores
from pallm.cues.vocabulary import VOCABULARY_VERSION, describe
from pallm.stages import Row, Stage, per_row

VERSION = "1"


def describe_row(row: Row, norms: SpeakerNorms) -> Row:
    """z-scores and cue words for one measured row."""
    z = z_scores(row, norms)
    return z | {"cue_words": describe(row | z)}


def describe_stage(norms: SpeakerNorms, *, with_words: bool) -> Stage:
    """The stage bound to this build's speaker statistics (their digest keys each chunk's shards)."""
    return Stage(
        name="describe",
        version=f"{VERSION}+vocabulary{VOCABULARY_VERSION}",
        reads=("speaker_id", "flags", *(("transcript",) if with_words else ()), "emphasis_measured",
               "f0_slope_st_per_s", "pause_longest_s", *Z_COLUMNS.values()),
        writes=(*Z_COLUMNS, "cue_words"),
        process=per_row(partial(describe_row, norms=norms)),
    )  # fmt: skip

"""Checks on every teacher answer: grounding, label agreement, format.

Failing items are kept, with the verdict in `checks` and a flag for the review queue; the data
card reports the rates. Grounding applies the one rule of `pallm.cues.grounding`.
"""

from __future__ import annotations

from typing import Any

from pallm.cues.grounding import check_claims

MIN_RATIONALE_WORDS = 8
FLAGS = {"grounded": "teacher_ungrounded", "agrees": "teacher_disagrees", "well_formed": "teacher_malformed"}


def check_answers(row: dict[str, Any], answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The `checks` value for a row's four answers (understand, judge, reply, words_only)."""
    und = answers["understand"]
    grounding = check_claims(und["cited_cues"], row.get("cue_words") or [])
    problems = []
    if not und["cited_cues"]:
        problems.append("the rationale cites no cue")
    if und["emotion"].strip().lower() != row["emotion"]:
        problems.append(f"the rationale concludes {und['emotion']!r}, not the gold {row['emotion']!r}")
    if len(und["rationale"].split()) < MIN_RATIONALE_WORDS:
        problems.append(f"the rationale has fewer than {MIN_RATIONALE_WORDS} words")
    for task in ("reply", "words_only"):
        if len(answers[task]["reply"].split()) < 2:
            problems.append(f"the {task.replace('_', '-')} reply is under two words")
    return {
        "grounded": grounding.grounded,
        "agrees": answers["judge"]["emotion"] == row["emotion"],
        "well_formed": not problems,
        "unsupported_cues": list(grounding.failed),
        "problems": problems,
    }


def review_flags(checks: dict[str, Any]) -> list[str]:
    """The flags that send an item to review: one per failed check."""
    return [flag for check, flag in FLAGS.items() if not checks[check]]

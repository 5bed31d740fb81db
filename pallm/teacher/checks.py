"""Checks on every teacher answer: grounding, label agreement, format.

Failing items are kept, with the verdict in `checks` and a flag for the review queue; the data
card reports the rates. Grounding applies the one rule of `pallm.cues.grounding`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pallm.cues.grounding import check_claims, claims_in_text

MIN_RATIONALE_WORDS = 8
MIN_COPY_WORDS = 5  # shorter answers ("thanks, I will") may match an example by chance
#: A template slot copied instead of filled in: "<your reply>", "[emotion]", "...".
PLACEHOLDER = re.compile(r"<[^<>]{1,40}>|\[[a-z _-]{1,30}\]|^\s*\.\.\.\s*$")
FLAGS = {"grounded": "teacher_ungrounded", "agrees": "teacher_disagrees", "well_formed": "teacher_malformed"}


def check_answers(
    row: dict[str, Any], answers: dict[str, dict[str, Any]], examples: Sequence[str] = ()
) -> dict[str, Any]:
    """The `checks` value for a row's four answers (understand, judge, reply, words_only).

    `examples` are the prompts' worked examples: an answer that copies one is not well-formed.
    """
    und = answers["understand"]
    claims = [*und["cited_cues"], *claims_in_text(und["rationale"])]
    grounding = check_claims(claims, row.get("cue_words") or [])
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
    texts = {"rationale": und["rationale"], "reply": answers["reply"]["reply"],
             "words-only reply": answers["words_only"]["reply"]}  # fmt: skip
    said = _words(row.get("transcript") or row.get("transcript_ref") or "")
    for name, text in texts.items():
        if said and _words(text) == said:
            problems.append(f"the {name} only repeats what was said")
        copied = len(_words(text)) >= MIN_COPY_WORDS and any(
            " ".join(_words(text)) in " ".join(_words(e)) for e in examples
        )
        if copied:
            problems.append(f"the {name} copies the prompt's example")
        if PLACEHOLDER.search(text):
            problems.append(f"the {name} holds placeholder text ({PLACEHOLDER.search(text).group(0)})")
    return {
        "grounded": grounding.grounded,
        "agrees": answers["judge"]["emotion"] == row["emotion"],
        "well_formed": not problems,
        "unsupported_cues": list(grounding.failed),
        "problems": problems,
    }


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def review_flags(checks: dict[str, Any]) -> list[str]:
    """The flags that send an item to review: one per failed check."""
    return [flag for check, flag in FLAGS.items() if not checks[check]]

"""Checks on every teacher answer: grounding, label agreement, format.

Failing items are kept, with the verdict in `checks` and a flag for the review queue; the data
card reports the rates. Grounding applies the one rule of `pallm.cues.grounding`. `failures` says
what is wrong with each task's answer, in words the repair request can quote back to the teacher.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pallm.cues.grounding import Grounding, check_claims, claims_in_text, cue_name, normalize_cue

MIN_RATIONALE_WORDS = 8
MIN_COPY_WORDS = 5  # shorter answers ("thanks, I will") may match an example by chance
#: An answer that keeps this share of what was said, in order, and adds at most `REPEAT_EXTRA_WORDS` words
#: repeats it: "Oh, dogs are sitting by the door." A question that turns it around ("Why are the dogs sitting
#: by the door?") adds more and passes.
REPEAT_SHARE, REPEAT_EXTRA_WORDS = 0.8, 2
#: A run of this many words from a repair request, in its answer, is the request's wording read back.
ECHO_RUN_WORDS = 6
#: A template slot copied instead of filled in: "<your reply>", "[emotion]", "...".
PLACEHOLDER = re.compile(r"<[^<>]{1,40}>|\[[a-z _-]{1,30}\]|^\s*\.\.\.\s*$")
FLAGS = {"grounded": "teacher_ungrounded", "agrees": "teacher_disagrees", "well_formed": "teacher_malformed"}
#: The tasks whose answers are checked for form (the blind judgement is checked for agreement only).
_TEXTS = {"understand": ("rationale", "rationale"), "reply": ("reply", "reply"),
          "words_only": ("reply", "words-only reply")}  # fmt: skip


def grounding(row: dict[str, Any], understanding: dict[str, Any]) -> Grounding:
    """The grounding verdict on an understanding answer: its cited cues and the cues its prose claims."""
    claims = [*understanding["cited_cues"], *claims_in_text(understanding["rationale"])]
    return check_claims(claims, row.get("cue_words") or [])


def form_problems(
    row: dict[str, Any], task: str, answer: dict[str, Any], examples: Sequence[str] = (), note: str | None = None
) -> list[str]:
    """What is wrong with the form of one task's answer (empty when nothing is). `note`: the repair request
    this task was asked with; an answer that reads it back is not an answer."""
    if task not in _TEXTS:
        return []
    key, name = _TEXTS[task]
    text = answer[key]
    words = _words(text)
    problems = []
    if task == "understand":
        if not answer["cited_cues"]:
            problems.append("the rationale cites no cue")
        if answer["emotion"].strip().lower() != row["emotion"]:
            problems.append(f"the rationale concludes {answer['emotion']!r}, not the gold {row['emotion']!r}")
        if len(text.split()) < MIN_RATIONALE_WORDS:
            problems.append(f"the rationale has fewer than {MIN_RATIONALE_WORDS} words")
    elif len(text.split()) < 2:
        problems.append(f"the {name} is under two words")
    if _repeats(words, _words(row.get("transcript") or row.get("transcript_ref") or "")):
        problems.append(f"the {name} only repeats what was said")
    if len(words) >= MIN_COPY_WORDS and any(" ".join(words) in " ".join(_words(e)) for e in examples):
        problems.append(f"the {name} copies the prompt's example")
    if note and _echoes(words, note):
        problems.append(f"the {name} repeats the request to fix it")
    if PLACEHOLDER.search(text):
        problems.append(f"the {name} holds placeholder text ({PLACEHOLDER.search(text).group(0)})")
    return problems


def failures(
    row: dict[str, Any], task: str, answer: dict[str, Any], examples: Sequence[str] = (), note: str | None = None
) -> list[str]:
    """Every check one task's answer fails, said so that the teacher can fix it: the form problems,
    and for the rationale each claim the measurement does not support, with what was measured."""
    found = form_problems(row, task, answer, examples, note)
    if task == "understand":
        measured = {cue_name(c): c for c in row.get("cue_words") or []}
        for claim in grounding(row, answer).failed:
            was = measured.get(cue_name(claim)) if cue_name(claim) != "emphasis" else None
            found.append(f"it says {claim!r}, but the measured cue is {normalize_cue(was)!r}" if was
                         else f"it says {claim!r}, which was not measured")  # fmt: skip
    return found


def check_answers(
    row: dict[str, Any],
    answers: dict[str, dict[str, Any]],
    examples: Sequence[str] = (),
    notes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The `checks` value for a row's four answers (understand, judge, reply, words_only).

    `examples` are the worked examples the row's prompts showed: an answer that copies one is not well-formed;
    `notes` the repair request asked for a task, by task: an answer that reads it back is not either.
    """
    notes = notes or {}
    problems = [p for task in _TEXTS for p in form_problems(row, task, answers[task], examples, notes.get(task))]
    verdict = grounding(row, answers["understand"])
    return {
        "grounded": verdict.grounded,
        "agrees": answers["judge"]["emotion"] == row["emotion"],
        "well_formed": not problems,
        "unsupported_cues": list(verdict.failed),
        "problems": problems,
    }


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _repeats(words: list[str], said: list[str]) -> bool:
    """Whether `words` are what was said, give or take `REPEAT_EXTRA_WORDS` (by the longest common subsequence)."""
    if not said or not words:
        return False
    row = [0] * (len(said) + 1)
    for w in words:
        diag = 0
        for j, s in enumerate(said, 1):
            diag, row[j] = row[j], diag + 1 if w == s else max(row[j], row[j - 1])
    kept = row[-1]
    return kept >= REPEAT_SHARE * len(said) and len(words) - kept <= REPEAT_EXTRA_WORDS


def _echoes(words: list[str], source: str, run: int = ECHO_RUN_WORDS) -> bool:
    """Whether `words` hold a run of `run` consecutive words of `source`."""
    said = f" {' '.join(_words(source))} "
    return any(f" {' '.join(words[i : i + run])} " in said for i in range(len(words) - run + 1))


def review_flags(checks: dict[str, Any]) -> list[str]:
    """The flags that send an item to review: one per failed check."""
    return [flag for check, flag in FLAGS.items() if not checks[check]]

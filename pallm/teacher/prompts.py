"""Versioned prompt templates: one YAML file per teacher task in `prompts/`.

A template holds its task, version, token budget, a Jinja2 system and user message, and optionally
several worked examples. Each row's prompt shows one example: the one whose cues overlap the row's
measured cues most (ties by a stable hash of the transcript), so a small model that copies its example
copies cues close to the clip's, and no single example can be copied into every answer. The version
is part of every cache key, so editing a template without bumping its version is caught by the content
hash too (the rendered messages are hashed), and bumping it re-asks only that task.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import yaml

PROMPTS_DIR = Path(__file__).parent / "prompts"
TASKS = ("understand", "judge", "reply", "words_only")


@dataclass(frozen=True)
class PromptTemplate:
    """One task's prompt: rendered into chat messages for a row's evidence."""

    task: str
    version: str
    max_tokens: int
    system: str
    user: str
    examples: tuple[dict[str, Any], ...] = field(default=())

    @property
    def tag(self) -> str:
        return f"{self.task}@{self.version}"

    @cached_property
    def _compiled(self) -> tuple[jinja2.Template, jinja2.Template]:  # compiled once, rendered for every row
        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        return env.from_string(self.system), env.from_string(self.user)

    def example_for(self, evidence: dict[str, Any]) -> dict[str, Any] | None:
        """The worked example this row's prompt shows: most cues in common, then a stable hash."""
        if not self.examples:
            return None
        have = set(evidence.get("cue_words") or [])
        spin = int(hashlib.sha256(str(evidence.get("transcript", "")).encode()).hexdigest(), 16)
        n = len(self.examples)
        return max(
            enumerate(self.examples), key=lambda ie: (len(have & set(ie[1].get("cue_words", ()))), (ie[0] - spin) % n)
        )[1]

    def messages(self, **evidence: Any) -> list[dict[str, str]]:
        """The chat messages for this evidence (transcript, cue_words, emotion, ...)."""
        system, user = self._compiled
        example = self.example_for(evidence)
        return [
            {"role": "system", "content": system.render(**evidence, example=example).strip()},
            {"role": "user", "content": user.render(**evidence, example=example).strip()},
        ]


def load_template(path: Path) -> PromptTemplate:
    """Read one template file; ValueError names what is missing."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = [k for k in ("task", "version", "max_tokens", "system", "user") if k not in (data or {})]
    if missing:
        raise ValueError(f"prompt template {path} lacks {', '.join(missing)}")
    examples = data.get("examples") or []
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise ValueError(f"prompt template {path}: examples must be a list of mappings")
    return PromptTemplate(
        str(data["task"]), str(data["version"]), int(data["max_tokens"]), data["system"], data["user"], tuple(examples)
    )


def templates(folder: Path = PROMPTS_DIR) -> dict[str, PromptTemplate]:
    """Every task's template from `folder`, by task name."""
    found = {t.task: t for t in map(load_template, sorted(folder.glob("*.yaml")))}
    missing = [t for t in TASKS if t not in found]
    if missing:
        raise ValueError(f"no prompt template for task(s) {missing} in {folder}")
    return {t: found[t] for t in TASKS}

"""Versioned prompt templates: one YAML file per teacher task in `prompts/`.

A template holds its task, version, token budget, system message and a Jinja2 user message. The
version is part of every cache key, so editing a template without bumping its version is caught by
the content hash too (the rendered messages are hashed), and bumping it re-asks only that task.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    @property
    def tag(self) -> str:
        return f"{self.task}@{self.version}"

    @cached_property
    def _user_template(self) -> jinja2.Template:  # compiled once, rendered for every row
        return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(self.user)

    def messages(self, **evidence: Any) -> list[dict[str, str]]:
        """The chat messages for this evidence (transcript, cue_words, emotion, ...)."""
        user = self._user_template.render(**evidence).strip()
        return [{"role": "system", "content": self.system.strip()}, {"role": "user", "content": user}]


def load_template(path: Path) -> PromptTemplate:
    """Read one template file; ValueError names what is missing."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = [k for k in ("task", "version", "max_tokens", "system", "user") if k not in (data or {})]
    if missing:
        raise ValueError(f"prompt template {path} lacks {', '.join(missing)}")
    return PromptTemplate(
        str(data["task"]), str(data["version"]), int(data["max_tokens"]), data["system"], data["user"]
    )


def templates(folder: Path = PROMPTS_DIR) -> dict[str, PromptTemplate]:
    """Every task's template from `folder`, by task name."""
    found = {t.task: t for t in map(load_template, sorted(folder.glob("*.yaml")))}
    missing = [t for t in TASKS if t not in found]
    if missing:
        raise ValueError(f"no prompt template for task(s) {missing} in {folder}")
    return {t: found[t] for t in TASKS}

"""What each teacher task must answer: pydantic models, and the JSON schemas sent to the server."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pallm.labels import SENTIMENTS

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, v: Any) -> Any:
        # A raw newline or tab inside a string (which JSON forbids and some servers send) becomes a space.
        if isinstance(v, str):
            return _CONTROL.sub(" ", v)
        if isinstance(v, list):
            return [_CONTROL.sub(" ", x) if isinstance(x, str) else x for x in v]
        return v


class Understanding(_Answer):
    # The cues come first: a small model then writes its rationale with the cues it cited in view.
    cited_cues: list[str] = Field(max_length=12)
    rationale: str = Field(min_length=1)
    emotion: str
    sentiment: str


class Judgement(_Answer):
    emotion: str
    sentiment: str


class Reply(_Answer):
    reply: str = Field(min_length=1)


ANSWERS: dict[str, type[_Answer]] = {
    "understand": Understanding,
    "judge": Judgement,
    "reply": Reply,
    "words_only": Reply,
}


class MalformedAnswer(ValueError):
    """An answer that is not the JSON object its task asks for."""


def json_schema(
    task: str, emotions: Sequence[str], *, gold: tuple[str, str] | None = None, cues: Sequence[str] | None = None
) -> dict[str, Any]:
    """The JSON schema of a task's answer, with the choices a server that enforces schemas keeps to.

    The judgement's labels are restricted to `emotions`; the rationale's label to the gold one and its
    cited cues to `cues`, the clip's measured cue words (none measured: none cited). So a server that
    enforces the schema cannot cite an unmeasured cue; the grounding check then judges the rationale's prose.
    """
    schema = ANSWERS[task].model_json_schema()
    schema.pop("title", None)
    schema["additionalProperties"] = False
    props = schema["properties"]
    for p in props.values():
        p.pop("title", None)
    if task == "judge":
        props["emotion"]["enum"] = list(emotions)
        props["sentiment"]["enum"] = list(SENTIMENTS)
    if task == "understand":
        if gold is not None:
            props["emotion"]["enum"], props["sentiment"]["enum"] = [gold[0]], [gold[1]]
        cited = props["cited_cues"]
        cited["minItems"] = 1
        if cues is not None:
            choices = list(dict.fromkeys(cues))
            if choices:  # none measured: maxItems 0 says it; an empty enum would be a rule without alternatives
                cited["items"]["enum"] = choices
            cited["minItems"], cited["maxItems"] = min(1, len(choices)), min(cited["maxItems"], len(choices))
        props["rationale"]["maxLength"] = 600
    return schema


def parse(task: str, data: Any, emotions: Sequence[str]) -> dict[str, Any]:
    """Validate a decoded answer; MalformedAnswer says what is wrong with it."""
    try:
        answer = ANSWERS[task].model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'answer'}: {x['msg']}" for x in e.errors())
        raise MalformedAnswer(f"answer fails the schema: {problems}") from None
    out = answer.model_dump()
    if task == "judge":
        out["emotion"] = out["emotion"].lower()
        out["sentiment"] = out["sentiment"].lower()
        if out["emotion"] not in emotions:
            raise MalformedAnswer(f"answer fails the schema: emotion {out['emotion']!r} is not one of {list(emotions)}")
        if out["sentiment"] not in SENTIMENTS:
            raise MalformedAnswer(f"answer fails the schema: sentiment {out['sentiment']!r} is not one of {SENTIMENTS}")
    return out

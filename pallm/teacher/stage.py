"""The teacher stage: four answers per utterance, checked, as the dataset's training targets.

For each row it asks the understanding, blind-judgement, reply and words-only-reply prompts (or
writes them with the rules teacher), checks the answers and writes `rationale`, `cited_cues`,
`teacher_label`, `reply`, `words_only_reply`, `teacher` and `checks`, adding a review flag per
failed check. A row whose request still fails after the retry budget is quarantined with the last
error; the answers it did get stay in the cache, so a rerun asks only for what is missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Coroutine
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel

from pallm.config import TeacherConfig
from pallm.corpora.base import ItemError
from pallm.cues.grounding import GROUNDING_VERSION
from pallm.labels import corpus_emotions
from pallm.lexical import text_of
from pallm.resident import LoadLog, resident
from pallm.stages import Row, Stage
from pallm.teacher import batch, rules
from pallm.teacher.answers import json_schema
from pallm.teacher.cache import Answer, open_cache, request_key
from pallm.teacher.checks import check_answers, failures, review_flags
from pallm.teacher.client import Request, Stats, TeacherClient
from pallm.teacher.prompts import PROMPTS_DIR, TASKS, PromptTemplate, templates

# 4: an answer that reads back its repair request fails; 3: one repair per failing
# answer; 2: only the clip's own cues cited, control characters read
VERSION = "4"
COLUMNS = ("rationale", "cited_cues", "teacher_label", "reply", "words_only_reply", "teacher", "checks")
T = TypeVar("T")


class Answered(NamedTuple):
    """A row's answers: after repair, as first given, every repair answer (used or not), the examples shown,
    the repair note asked for each task repaired."""

    final: dict[str, Answer]
    first: dict[str, Answer]
    repairs: list[Answer]
    examples: list[str]
    notes: dict[str, str]


class TeacherIdentity(BaseModel):
    """What decides the answers, for the stage fingerprint: backend, model, prompts, sampling."""

    backend: str
    model: str
    prompts: list[str]
    sampling: dict[str, Any]
    repair: bool


def evidence(row: Row) -> dict[str, Any]:
    """What the prompts see of a row."""
    emotions = corpus_emotions(row["corpus"])
    cue_words = list(row.get("cue_words") or [])
    return {
        "transcript": text_of(row),
        "cue_words": cue_words,
        "emotion": row["emotion"],
        "sentiment": row.get("sentiment") or "unspecified",
        "emotions": emotions if row["emotion"] in emotions or row["emotion"] in ("other", "unknown")
        else (*emotions, row["emotion"]),
    }  # fmt: skip


class TeacherStep:
    """The stage's work. The client, its event-loop thread and the cache are made on first use and
    shared by every chunk task of the process (on a cluster, through `pallm.resident`), so the concurrency
    bound holds for the whole process."""

    def __init__(self, cfg: TeacherConfig, model: str, cache: str) -> None:
        self.cfg = cfg
        self.model = model
        self.cache = cache
        self.templates: dict[str, PromptTemplate] = templates(cfg.prompts or PROMPTS_DIR)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: TeacherClient | None = None
        self._closed_stats = Stats()  # what the last client did, kept after close()
        self.loads = LoadLog()

    def __reduce__(self) -> tuple[Any, ...]:
        # To another process without the client: each worker opens its own (the cache is shared).
        return TeacherStep, (self.cfg, self.model, self.cache)

    @property
    def prompt_version(self) -> str:
        if self.cfg.backend == "rules":
            return f"rules@{rules.RULES_VERSION}"
        return " ".join(self.templates[t].tag for t in TASKS)

    @property
    def stats(self) -> Stats:
        """What the client did (requests, cache hits, retries, tokens), also after close()."""
        return self._client.stats if self._client else self._closed_stats

    def __call__(self, rows: list[Row]) -> list[Row | ItemError]:
        if self.cfg.backend == "rules":
            answers: list[Answered | ItemError] = [Answered(a, a, [], [], {}) for a in map(self._rules, rows)]
        else:
            answers = self._ask(rows)
        return [a if isinstance(a, ItemError) else self._columns(r, a) for r, a in zip(rows, answers, strict=True)]

    def requests(self, row: Row) -> list[Request]:
        """The four requests for a row, each with its cache key."""
        ev = evidence(row)
        out = []
        for task in TASKS:
            tpl = self.templates[task]
            messages = tpl.messages(**ev)
            schema = json_schema(task, ev["emotions"], gold=(row["emotion"], ev["sentiment"]), cues=ev["cue_words"])
            key = request_key(task, tpl.version, self.model, self.cfg.sampling(), schema, messages)
            out.append(Request(task, tpl.version, messages, schema, tuple(ev["emotions"]), tpl.max_tokens, key))
        return out

    def _ask(self, rows: list[Row]) -> list[Answered | ItemError]:
        """Each row's answers after repair, with its first answers; or the error that quarantines it."""
        per_row = [self.requests(r) for r in rows]
        # Task by task, not row by row: consecutive requests then share their long prefix (system
        # message and instructions), which servers such as llama.cpp reuse instead of re-reading.
        flat = [qs[t] for t in range(len(TASKS)) for qs in per_row]
        got = self._answers(flat)
        out: list[Answered | ItemError] = []
        repairs: list[tuple[int, Request, list[str]]] = []
        for i, (row, qs) in enumerate(zip(rows, per_row, strict=True)):
            answers = [got[q.key] for q in qs]
            errors = [a for a in answers if isinstance(a, str)]
            if errors:
                out.append(ItemError(f"teacher failed after {self.cfg.retries + 1} tries: {errors[-1]}"))
                continue
            first = {q.task: a for q, a in zip(qs, answers, strict=True) if isinstance(a, Answer)}
            examples = [q.messages[0]["content"] for q in qs]  # the worked examples these prompts showed
            entry = Answered(dict(first), first, [], examples, {})
            out.append(entry)
            if self.cfg.repair:
                for q in qs:
                    if found := failures(row, q.task, first[q.task].data, examples):
                        entry.notes[q.task] = repair_note(found)
                        repairs.append((i, self._repair(q, entry.notes[q.task]), found))
        if repairs:
            again = self._answers([q for _, q, _ in repairs])
            for i, q, found in repairs:
                answer, entry = again[q.key], out[i]
                assert not isinstance(entry, ItemError)
                if not isinstance(answer, Answer):
                    continue  # a failed repair request costs the row nothing: it keeps its first answer
                entry.repairs.append(answer)
                # The second answer replaces the first only when it fails fewer checks.
                if len(failures(rows[i], q.task, answer.data, entry.examples, entry.notes[q.task])) < len(found):
                    entry.final[q.task] = answer
        return out

    def _repair(self, q: Request, note: str) -> Request:
        """The request that asks again once, with `note` (`repair_note`) after the prompt; cached like any other.

        The failed answer itself is not shown: a small model shown its answer writes it again. In the system
        message instead, the note left SmolLM2's rationales shorter and more often copied (40 RAVDESS rows)."""
        *head, user = q.messages
        messages = [*head, {**user, "content": f"{user['content']}\n\n{note}"}]
        key = request_key(q.task, f"{q.version}+repair", self.model, self.cfg.sampling(), q.schema, messages)
        return Request(q.task, q.version, messages, q.schema, q.emotions, q.max_tokens, key)

    def _answers(self, requests: list[Request]) -> dict[str, Answer | str]:
        client = self._ensure_client()
        if self.cfg.batch_api:
            self._run(batch.prefill(client, requests, self.cfg.batch_poll_s))
        return dict(zip((q.key for q in requests), self._run(client.ask_all(requests)), strict=True))

    def _rules(self, row: Row) -> dict[str, Answer]:
        ev = evidence(row)
        data = {
            "understand": rules.understand(ev["transcript"], ev["cue_words"], row["emotion"], row.get("sentiment")),
            "judge": rules.judge(ev["cue_words"], ev["emotions"]),
            "reply": rules.reply(row["emotion"], row.get("sentiment")),
            "words_only": rules.words_only(ev["transcript"]),
        }
        return {task: Answer(d, 0, 0) for task, d in data.items()}

    def _columns(self, row: Row, answered: Answered) -> Row:
        answers, first = answered.final, answered.first
        data = {task: a.data for task, a in answers.items()}
        # An answer that copies its example, or reads back its repair request, is caught.
        checks = check_answers(row, data, answered.examples, answered.notes)
        before = check_answers(row, {task: a.data for task, a in first.items()}, answered.examples)
        checks["repaired"] = [t for t in TASKS if answers[t] is not first[t]]
        checks["first_grounded"], checks["first_well_formed"] = before["grounded"], before["well_formed"]
        flags = list(row.get("flags") or [])
        flags += [f for f in review_flags(checks) if f not in flags]
        spent = [*first.values(), *answered.repairs]  # every repair asked is paid for, used or not
        return {
            "rationale": data["understand"]["rationale"],
            "cited_cues": data["understand"]["cited_cues"],
            "teacher_label": data["judge"]["emotion"],
            "reply": data["reply"]["reply"],
            "words_only_reply": data["words_only"]["reply"],
            "teacher": {
                "backend": self.cfg.backend,
                "model": self.model,
                "prompt_version": self.prompt_version,
                "prompt_tokens": sum(a.prompt_tokens for a in spent),
                "completion_tokens": sum(a.completion_tokens for a in spent),
            },
            "checks": checks,
            "flags": flags,
        }

    def _ensure_client(self) -> TeacherClient:
        with self._lock:
            if self._client is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="teacher-loop", daemon=True).start()
                self._loop = loop
                api_key = os.environ.get(self.cfg.api_key_env) or "not-needed"  # local servers want none
                cfg = self.cfg
                if cfg.backend == "local" and cfg.structured == "auto":  # llama-cpp-python has no json_schema
                    cfg = cfg.model_copy(update={"structured": "json_object"})
                self._client = self.loads.timed(f"teacher client {self.model}", lambda: TeacherClient(
                    cfg, base_url=cfg.base_url, model=self.model, api_key=api_key, cache=open_cache(self.cache)
                ))  # fmt: skip
            return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the client and the cache and stop the event loop (a later call starts them again)."""
        with self._lock:
            if self._client is None or self._loop is None:
                return
            client, loop = self._client, self._loop
            self._client = self._loop = None
            self._closed_stats = client.stats
        asyncio.run_coroutine_threadsafe(client.close(), loop).result()
        client.cache.close()
        loop.call_soon_threadsafe(loop.stop)


def repair_note(found: list[str]) -> str:
    """What a repair request adds to its prompt: the checks the first answer failed."""
    return f"A first answer to this failed a check: {'; '.join(found)}. Do not make that mistake."


def model_name(cfg: TeacherConfig) -> str:
    """The model the answers come from, as it is recorded and cached."""
    if cfg.backend == "rules":
        return f"rules@{rules.RULES_VERSION}"
    if cfg.backend == "local" and not cfg.model:
        from pallm.teacher import local

        return local.model_name(cfg)
    assert cfg.model, "the openai backend needs a model"
    return cfg.model


def check_teacher(cfg: TeacherConfig) -> None:
    """Fail before any work on what would fail every request: no key for OpenAI, no local server package."""
    if cfg.backend == "openai" and not cfg.base_url and not os.environ.get(cfg.api_key_env):
        raise ValueError(f"the openai teacher needs an API key in ${cfg.api_key_env} (or --teacher-base-url)")
    if cfg.backend == "local" and importlib.util.find_spec("llama_cpp") is None:
        raise FileNotFoundError("the local teacher needs llama-cpp-python[server]: pip install -e '.[teacher]'")


def teacher_stage(cfg: TeacherConfig, cache: str, *, with_words: bool) -> Stage:
    """The teacher stage for this config; its answers are cached in `cache` (a SQLite file or a database URL)."""
    check_teacher(cfg)
    model = model_name(cfg)
    step = TeacherStep(cfg, model, cache)
    identity = TeacherIdentity(
        backend=cfg.backend, model=model, prompts=step.prompt_version.split(),
        sampling=cfg.sampling() if cfg.backend != "rules" else {}, repair=cfg.repair and cfg.backend != "rules",
    )  # fmt: skip
    return resident(Stage(
        name="teacher",
        version=f"{VERSION}+grounding{GROUNDING_VERSION}",
        reads=("id", "corpus", "emotion", "sentiment", "cue_words", "flags", "transcript_ref",
               *(("transcript",) if with_words else ())),
        writes=(*COLUMNS, "flags"),
        process=step,
        config=identity,
        batch_size=max(16, 8 * cfg.concurrency),
    ))  # fmt: skip

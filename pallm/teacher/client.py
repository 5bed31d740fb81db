"""The teacher client: any OpenAI-compatible endpoint through the `openai` library's async client.

What it adds to the library: the answer cache (a cached request is never sent), a bound on the
requests in flight for the whole build, retries with exponential backoff and full jitter that
honour `Retry-After`, structured output negotiated with the server (JSON schema, else JSON mode,
else plain prompting, validated with pydantic either way), and per-request accounting. Errors that
no retry can fix for any item (a refused key, an unknown model) stop the build with `TeacherFatal`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import openai

from pallm.config import TeacherConfig
from pallm.teacher.answers import MalformedAnswer, parse
from pallm.teacher.cache import Answer, AnswerCache

log = logging.getLogger(__name__)

MODES = {"auto": ("json_schema", "json_object", "off"), "json_schema": ("json_schema",),
         "json_object": ("json_object",), "off": ("off",)}  # fmt: skip
RETRY_AFTER_CAP_S = 300.0


class TeacherFatal(RuntimeError):
    """The endpoint refuses every request (bad key, unknown model, wrong URL): the build stops."""


@dataclass(frozen=True)
class Request:
    """One question to the teacher, with what its answer must look like."""

    task: str
    version: str
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    emotions: tuple[str, ...]
    max_tokens: int
    key: str


@dataclass
class Stats:
    """What the client did: requests sent, answers served from the cache, retries, failures, tokens."""

    requests: int = 0
    cached: int = 0
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds_waiting: float = 0.0


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TeacherClient:
    """Asks requests concurrently; call its coroutines from one event loop (see `TeacherStep`)."""

    def __init__(self, cfg: TeacherConfig, *, base_url: str | None, model: str, api_key: str, cache: AnswerCache):
        self.cfg = cfg
        self.model = model
        self.cache = cache
        self.stats = Stats()
        self._modes = list(MODES[cfg.structured])
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0,  # our own retries, below
            timeout=openai.Timeout(cfg.timeout_s, connect=min(10.0, cfg.timeout_s)),
        )  # fmt: skip
        self._sem: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Future[Answer | str]] = {}
        self._fatal: TeacherFatal | None = None
        self._rng = random.Random()

    @property
    def api(self) -> openai.AsyncOpenAI:
        """The underlying `openai` client (for the Batch API)."""
        return self._client

    @property
    def mode(self) -> str:
        """The structured-output mode in use (the first the server has not refused)."""
        return self._modes[0]

    async def ask_all(self, requests: Sequence[Request]) -> list[Answer | str]:
        """Each request's answer, or the last error after the retry budget (a string)."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
        try:
            async with asyncio.TaskGroup() as group:  # a fatal error cancels the requests not yet sent
                tasks = [group.create_task(self.ask(r)) for r in requests]
        except* TeacherFatal as eg:
            self._fatal = eg.exceptions[0]
            for running in list(self._inflight.values()):
                running.cancel()
            raise self._fatal from None
        return [t.result() for t in tasks]

    async def ask(self, req: Request) -> Answer | str:
        """One request: from the cache, or from the endpoint with retries; the error text if all tries fail.

        Identical requests (the words-only reply to a sentence many clips share) are sent once.
        """
        running = self._inflight.get(req.key)
        if running is None:
            running = self._inflight[req.key] = asyncio.ensure_future(self._ask(req))
            running.add_done_callback(lambda _: self._inflight.pop(req.key, None))
        else:
            self.stats.cached += 1
        return await asyncio.shield(running)

    async def _ask(self, req: Request) -> Answer | str:
        hit = self.cache.get(req.key)
        if hit is not None:
            self.stats.cached += 1
            return hit
        assert self._sem is not None
        last = "no attempt made"
        for attempt in range(self.cfg.retries + 1):
            try:
                async with self._sem:
                    if self._fatal is not None:  # the endpoint refused us meanwhile: send nothing more
                        raise self._fatal
                    answer = await self._complete(req, attempt)
            except (_Retryable, MalformedAnswer) as e:
                last = str(e)
                if attempt == self.cfg.retries:
                    break
                delay = self._delay(attempt, getattr(e, "retry_after", None))
                log.info("teacher %s: %s; retry %d in %.1f s", req.task, last, attempt + 1, delay)
                self.stats.retries += 1
                self.stats.seconds_waiting += delay
                await asyncio.sleep(delay)
            except _ItemRefused as e:
                last = str(e)
                break
            else:
                self.cache.put(req.key, req.task, self.model, answer)
                return answer
        self.stats.failed += 1
        return f"{req.task}: {last}"

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:  # the server said when: wait that long, plus a little jitter
            return min(retry_after, RETRY_AFTER_CAP_S) + self._rng.uniform(0, 0.1 * self.cfg.backoff_s)
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt)
        return self._rng.uniform(0, cap)  # full jitter: retries of many requests spread out

    async def _complete(self, req: Request, attempt: int) -> Answer:
        while True:
            mode = self.mode
            try:
                resp = await self._client.chat.completions.create(**self.arguments(req, attempt, mode))
            except openai.APIStatusError as e:
                # Servers refuse an unknown response_format in different ways (llama.cpp: HTTP 500).
                if mode != "off" and e.status_code != 429 and _about_response_format(e):
                    if self.mode == mode and len(self._modes) > 1:
                        self._modes.pop(0)  # ask the next way, for this request and every later one
                        log.warning("teacher endpoint refused %s output (%s); using %s", mode, _short(e), self.mode)
                    if self.mode != mode:
                        continue
                if isinstance(e, openai.BadRequestError | openai.UnprocessableEntityError):
                    raise _ItemRefused(f"request refused: HTTP {e.status_code} {_short(e)}") from None
                if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError | openai.NotFoundError):
                    raise TeacherFatal(
                        f"the teacher endpoint refused the request (HTTP {e.status_code}: {_short(e)}); "
                        "check --teacher-base-url, --teacher-model and the API key variable"
                    ) from None
                raise _Retryable(f"HTTP {e.status_code} {_short(e)}", _retry_after(e.response)) from None
            except openai.APITimeoutError:
                raise _Retryable(f"no answer within {self.cfg.timeout_s:g} s") from None
            except openai.APIConnectionError as e:
                raise _Retryable(f"connection failed: {_short(e.__cause__ or e)}") from None
            except (openai.APIError, ValueError) as e:  # a body that is not a chat completion
                raise _Retryable(f"unreadable response: {_short(e)}") from None
            self.stats.requests += 1
            return self.answer_from(req, resp, mode)

    def arguments(self, req: Request, attempt: int, mode: str) -> dict[str, Any]:
        """The `chat.completions.create` arguments of a request (the seed moves on with each retry)."""
        s = self.cfg.sampling()
        args: dict[str, Any] = {
            "model": self.model, "messages": req.messages, "temperature": s["temperature"], "top_p": s["top_p"],
            "max_tokens": min(req.max_tokens, s["max_tokens"]),
        }  # fmt: skip
        if s["seed"] is not None:
            args["seed"] = s["seed"] + attempt  # a retry after a bad answer must not get the same answer again
        if mode == "json_schema":
            args["response_format"] = {
                "type": "json_schema", "json_schema": {"name": req.task, "schema": req.schema, "strict": True},
            }  # fmt: skip
        elif mode == "json_object":
            args["response_format"] = {"type": "json_object", "schema": req.schema}  # servers that know it use it
        return args

    def answer_from(self, req: Request, resp: Any, mode: str) -> Answer:
        """The validated answer in a chat completion; MalformedAnswer says what is wrong with it."""
        usage = getattr(resp, "usage", None)
        prompt, completion = (usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else (0, 0)
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion
        choices = getattr(resp, "choices", None)
        if not choices:
            raise MalformedAnswer("the response holds no choices")
        choice = choices[0]
        text = (choice.message.content or "") if choice.message else ""
        if choice.finish_reason == "length":
            raise MalformedAnswer(f"answer cut off at {min(req.max_tokens, self.cfg.max_tokens)} tokens")
        if not text.strip():
            raise MalformedAnswer("empty completion")
        return Answer(parse(req.task, _decode(text, mode), req.emotions), prompt, completion)

    async def close(self) -> None:
        await self._client.close()


class _ItemRefused(Exception):
    """The endpoint refuses this request (HTTP 400): another try would get the same answer."""


def _decode(text: str, mode: str) -> Any:
    # strict=False: a raw control character inside a string (a newline in a rationale) is not a broken answer;
    # the answer models turn it into a space.
    try:
        return json.loads(text, strict=False)
    except ValueError as e:
        if mode == "off":  # plain prompting: the object may come wrapped in prose or a code fence
            first, last = text.find("{"), text.rfind("}")
            if 0 <= first < last:
                try:
                    return json.loads(text[first : last + 1], strict=False)
                except ValueError:
                    pass
        raise MalformedAnswer(f"invalid JSON: {e}") from None


def _retry_after(response: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if given."""
    if response is None:
        return None
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _about_response_format(e: openai.APIStatusError) -> bool:
    text = f"{e.message} {e.body}".lower()
    return any(w in text for w in ("response_format", "json_schema", "grammar"))


def _short(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

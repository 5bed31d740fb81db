"""The Batch API option: a chunk's uncached requests as one batch job, at half the price.

The requests go up as a JSONL file (`files.create(purpose="batch")`), a batch job runs them
(`batches.create`, polled with `batches.retrieve`), and each line of its output file is validated
like a live answer and committed to the cache. Whatever the job does not answer well (an error
line, a malformed answer, a failed or expired job) is left to the live path, with its retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

from openai.types.chat import ChatCompletion

from pallm.teacher.answers import MalformedAnswer
from pallm.teacher.client import Request, TeacherClient

log = logging.getLogger(__name__)
DONE = ("completed", "failed", "expired", "cancelled")


async def prefill(client: TeacherClient, requests: Sequence[Request], poll_s: float) -> int:
    """Answer the requests the cache lacks through one batch job; returns how many answers it cached."""
    missing = {q.key: q for q in requests if client.cache.get(q.key) is None}
    if not missing:
        return 0
    mode = client.mode
    lines = [
        json.dumps(
            {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": client.arguments(q, 0, mode)}
        )
        for key, q in missing.items()
    ]
    api = client.api
    upload = await api.files.create(file=("requests.jsonl", "\n".join(lines).encode()), purpose="batch")
    job = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    log.info("teacher batch %s: %d requests", job.id, len(missing))
    while job.status not in DONE:
        await asyncio.sleep(poll_s)
        job = await api.batches.retrieve(job.id)
    if job.status != "completed" or not job.output_file_id:
        log.warning("teacher batch %s ended %s; its requests go live", job.id, job.status)
        return 0
    output = await api.files.content(job.output_file_id)
    cached = 0
    for line in output.text.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        q = missing.get(item.get("custom_id", ""))
        response = item.get("response") or {}
        if q is None or response.get("status_code") != 200:
            continue
        try:
            answer = client.answer_from(q, ChatCompletion.model_validate(response["body"]), mode)
        except (MalformedAnswer, ValueError, KeyError) as e:
            log.info("teacher batch answer for %s unusable (%s); asked live", q.task, e)
            continue
        client.cache.put(q.key, q.task, client.model, answer)
        client.stats.requests += 1
        cached += 1
    return cached

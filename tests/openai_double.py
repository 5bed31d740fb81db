"""A loopback server that speaks the OpenAI chat-completions protocol and injects faults on demand.

The real local teacher (llama.cpp) cannot produce a 429 or a cut-off body when a test asks, so
this double does: each request takes the next fault from `faults` (or from `fault_for`, by the
task it asks), and answers validly otherwise. It records every request it receives.
"""

from __future__ import annotations

import email
import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("500", "429", "hang", "cut", "bad_body", "invalid_json", "schema", "empty", "length")


@dataclass
class Seen:
    """One request as received."""

    task: str
    key: str  # hash of the messages: the same question asked again has the same key
    fault: str | None
    status: int
    format: str  # the response_format type asked for ("text" when none)
    at: float  # time.monotonic() when received


@dataclass
class Double:
    """The server's state: faults to inject and what it has seen; files and batch jobs (Batch API)."""

    faults: deque[str] = field(default_factory=deque)
    fault_for: Callable[[str, dict[str, Any]], str | None] | None = None
    retry_after: str = "1"
    hang_s: float = 30.0
    delay_s: float = 0.0
    refuse_json_schema: bool = False
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""
    authorization: set[str] = field(default_factory=set)  # the Authorization headers received
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)

    def answered(self) -> list[Seen]:
        return [s for s in self.seen if s.status == 200 and s.fault is None]

    def upload(self, content_type: str, raw: bytes) -> dict[str, Any]:
        """POST /v1/files: keep the uploaded file (multipart/form-data)."""
        msg = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        data = next(p.get_payload(decode=True) for p in msg.get_payload() if p.get_filename())
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": 0, "filename": "x",
                "purpose": "batch", "status": "processed"}  # fmt: skip

    def next_fault(self, task: str, body: dict[str, Any]) -> str | None:
        """The fault for this request: the next queued one, else what `fault_for` says (call with the lock)."""
        if self.faults:
            return self.faults.popleft()
        return self.fault_for(task, body) if self.fault_for else None

    def run_batch(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/batches: answer every line now (faults apply per line); the job shows as in progress."""
        out = []
        for line in self.files[spec["input_file_id"]].decode().splitlines():
            item = json.loads(line)
            body = item["body"]
            task = task_of(body)
            with self.lock:
                fault = self.next_fault(task, body)
                self.seen.append(Seen(task, _key(body), fault, 200, "batch", time.monotonic()))
            content = json.dumps({"answer": "no idea"}) if fault else json.dumps(answer_for(task, body))
            out.append({"id": f"r{len(out)}", "custom_id": item["custom_id"],
                        "response": {"status_code": 200, "body": completion(body, content)}})  # fmt: skip
        output_id = f"file-{len(self.files)}"
        self.files[output_id] = "\n".join(map(json.dumps, out)).encode()
        job = {"id": f"batch-{len(self.batches)}", "object": "batch", "endpoint": spec["endpoint"],
               "input_file_id": spec["input_file_id"], "completion_window": "24h", "status": "in_progress",
               "created_at": 0, "output_file_id": output_id}  # fmt: skip
        self.batches[job["id"]] = job
        return job


def _key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:16]


def completion(body: dict[str, Any], content: str, finish: str = "stop") -> dict[str, Any]:
    """A chat.completion response body."""
    return {
        "id": "chatcmpl-double", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }  # fmt: skip


def task_of(body: dict[str, Any]) -> str:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["name"]
    text = " ".join(m["content"] for m in body["messages"])
    if "Answer with one integer from 1" in text:
        return "grade"
    if '"rationale"' in text:
        return "understand"
    if "Which emotion" in text:
        return "judge"
    return "reply" if "how they feel" in text else "words_only"


def answer_for(task: str, body: dict[str, Any]) -> dict[str, Any] | str:
    """A valid answer, built from the prompt the way a careful teacher would (a reply judge's grade: 9 for a
    reply that is the reference, else 2)."""
    user = body["messages"][-1]["content"]
    if task == "grade":
        reference = re.search(r'for reference: "(.*)"\n', user).group(1)
        return "9" if f'The assistant replied: "{reference}"' in user else "2"
    cues = re.search(r"Measured voice cues: (.*)\.", user)
    cue_list = [c.strip() for c in cues.group(1).split(";")] if cues and "stand out" not in cues.group(1) else []
    if task == "understand":
        emotion = re.search(r"Emotion: (\w+)", user).group(1)
        sentiment = re.search(r"Sentiment: (\w+)", user).group(1)
        return {"rationale": f"The speaker's voice shows {', '.join(cue_list) or 'no marked cue'}, which fits "
                             f"a {emotion} delivery rather than the neutral words.",
                "cited_cues": cue_list[:2], "emotion": emotion, "sentiment": sentiment}  # fmt: skip
    if task == "judge":
        choices = re.search(r"Choose one of: (.*)\.\n", user).group(1).split(", ")
        return {"emotion": choices[len(cue_list) % len(choices)], "sentiment": "neutral"}
    return {"reply": "I hear you, and I'm glad you told me." if task == "reply" else "Good to know, thank you."}


class _Handler(BaseHTTPRequestHandler):
    double: Double

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        d = self.double
        if self.path.startswith("/v1/batches/"):
            job = d.batches[self.path.rsplit("/", 1)[1]]
            job["status"] = "completed"  # in progress at creation, done at the first look
            return self._send(200, job)
        if self.path.startswith("/v1/files/") and self.path.endswith("/content"):
            data = d.files[self.path.split("/")[3]]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        return self._send(200, {"object": "list", "data": [{"id": "double", "object": "model", "owned_by": "t"}]})

    def do_POST(self) -> None:
        d = self.double
        d.authorization.add(self.headers.get("Authorization", ""))
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/files":
            return self._send(200, d.upload(self.headers["Content-Type"], raw))
        if self.path == "/v1/batches":
            return self._send(200, d.run_batch(json.loads(raw)))
        body = json.loads(raw)
        task = task_of(body)
        key = _key(body)
        with d.lock:
            fault = d.next_fault(task, body)
        if d.refuse_json_schema and (body.get("response_format") or {}).get("type") == "json_schema":
            fault = "refuse_schema"
        status = {"500": 500, "429": 429, "refuse_schema": 400, "401": 401}.get(fault or "", 200)
        fmt = (body.get("response_format") or {}).get("type", "text")
        with d.lock:
            d.seen.append(Seen(task, key, fault, status, fmt, time.monotonic()))
        if d.delay_s:
            time.sleep(d.delay_s)
        if fault == "500":
            return self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
        if fault == "429":
            return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                              {"Retry-After": d.retry_after})  # fmt: skip
        if fault == "401":
            return self._send(401, {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}})
        if fault == "refuse_schema":
            return self._send(400, {"error": {"message": "response_format json_schema is not supported",
                                              "type": "invalid_request_error"}})  # fmt: skip
        if fault == "hang":
            time.sleep(d.hang_s)
            return None
        if fault == "bad_body":
            return self._send(200, b'{"id": "x", "choices": [{"mess')
        if fault == "cut":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4000")
            self.end_headers()
            self.wfile.write(b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [')
            self.wfile.flush()
            self.close_connection = True
            return None
        answer = answer_for(task, body)
        content = answer if isinstance(answer, str) else json.dumps(answer)
        finish = "stop"
        if fault == "echo":  # a valid answer that fails a check: its text only repeats what was said
            said = re.search(r'Said: "(.*)"', body["messages"][-1]["content"])
            content = json.dumps({**answer, "rationale": said.group(1) if said else "..."})
        elif fault == "control_char":  # a raw newline and tab inside a string, as some servers send
            content = content.replace(", which", ",\n\twhich", 1) if task == "understand" else content
        elif fault == "invalid_json":
            content = content[: len(content) // 2]
        elif fault == "schema":
            content = json.dumps({"answer": "no idea"})
        elif fault == "empty":
            content = ""
        elif fault == "length":
            content, finish = content[:20], "length"
        self._send(200, completion(body, content, finish))
        return None


@contextmanager
def serve(double: Double | None = None) -> Iterator[Double]:
    """Run the double on a free loopback port; yields it with `base_url` set."""
    double = double or Double()
    handler = type("Handler", (_Handler,), {"double": double})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    double.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()

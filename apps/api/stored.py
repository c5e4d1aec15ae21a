"""Stored chat completions on the request path: what a request asks (``store``, ``metadata``), and handing the
finished completion to one writer thread through a bounded queue, so storing never slows or fails an answer.

``wanted`` takes ``store`` and ``metadata`` out of the body (the inference process knows neither) and checks
the metadata against OpenAI's limits (400). ``capture`` leaves the response as it is and, once it is complete
(a JSON answer at once; a stream after its last chunk), puts the completion on the queue. When the queue is
full the completion is dropped and counted (``dropped``), and the answer goes out all the same.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections

from . import metadata as metadata_rule
from .auth import ApiError

log = logging.getLogger(__name__)

SAMPLING = ("temperature", "top_p", "seed", "n", "max_tokens", "max_completion_tokens", "stop", "user")


def check_metadata(metadata, param: str = "metadata") -> dict:
    """OpenAI's metadata (``apps.api.metadata``), or a 400 naming what breaks the rule."""
    found = metadata_rule.problem(metadata, param)
    if found is not None:
        message, code = found
        raise ApiError(400, message, param=param, code=code)
    return dict(metadata or {})


@dataclass
class Wanted:
    project_id: int
    key_id: int | None
    metadata: dict
    stored_by: str
    request: dict = field(default_factory=dict)


def wanted(body, key) -> Wanted | None:
    """Pop ``store`` and ``metadata`` from a chat body (checked either way); what to store, or None."""
    if not isinstance(body, dict):
        return None
    store = body.pop("store", None)
    metadata = check_metadata(body.pop("metadata", None))
    if store is not None and not isinstance(store, bool):
        raise ApiError(400, "store must be true or false.", param="store")
    if store:
        stored_by = "request"
    else:
        from .selectors import stores_every_completion

        if store is False or not stores_every_completion(key.project_id):
            return None
        stored_by = "project"
    request = {name: body[name] for name in SAMPLING if body.get(name) is not None}
    request["messages"] = body.get("messages")
    return Wanted(key.project_id, key.pk, metadata, stored_by, request)


def capture(response, want: Wanted | None):
    """Queue the completion ``response`` carries once it is complete; the response itself is not changed."""
    if want is None or response.status_code != 200:
        return response
    if not response.streaming:
        submit(want, json.loads(response.content), streamed=False)
        return response
    counted = getattr(response, "counted_usage", None)  # what the inference process counted (``views.forward_chat``)
    response.streaming_content = _tap(response.streaming_content, want, counted if counted is not None else {})
    return response


class _Assembled:
    """One choice of a stream put back together: its content, refusal and tool calls, and how it finished."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict] = {}
        self.finish: str | None = None

    def add(self, choice: dict) -> None:
        delta = choice.get("delta") or {}
        self.content.append(delta.get("content") or "")
        self.refusal.append(delta.get("refusal") or "")
        for part in delta.get("tool_calls") or ():
            call = self.calls.setdefault(
                part.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] = part.get("id") or call["id"]
            function = part.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        self.finish = choice.get("finish_reason") or self.finish

    def message(self) -> dict:
        message = {"role": "assistant", "content": "".join(self.content) or (None if self.calls else "")}
        if any(self.refusal):
            message["refusal"] = "".join(self.refusal)
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return message


def _tap(chunks, want: Wanted, counted: dict):
    """Pass SSE chunks through unchanged, assembling the completion; queued only when the stream ended. Its usage
    is the inference process's count (``counted``), also when the caller did not ask for it in the stream."""
    choices: dict[int, _Assembled] = {}
    head: dict = {}
    for raw in chunks:
        yield raw
        line = raw.decode(errors="replace").strip() if isinstance(raw, bytes) else str(raw).strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            usage = head.pop("usage", None) or counted.get("usage")
            assembled = [
                {"index": i, "message": c.message(), "finish_reason": c.finish or "stop"}
                for i, c in sorted(choices.items())
            ]
            submit(want, {**head, "choices": assembled, **({"usage": usage} if usage else {})}, streamed=True)
            return
        chunk = json.loads(data)
        head.setdefault("id", chunk.get("id"))
        head.setdefault("created", chunk.get("created"))
        head.setdefault("model", chunk.get("model"))
        if chunk.get("usage"):
            head["usage"] = chunk["usage"]
        for choice in chunk.get("choices") or []:
            choices.setdefault(choice["index"], _Assembled()).add(choice)


# --- the writer --------------------------------------------------------------------------------------------
class Writer:
    """One daemon thread per process draining a bounded queue into ``services.save_stored_completion``."""

    def __init__(self) -> None:
        self.queue: queue.Queue | None = None
        self.thread: threading.Thread | None = None
        self.dropped = 0
        self.lock = threading.Lock()

    def start(self) -> queue.Queue:
        with self.lock:
            if self.queue is None:
                self.queue = queue.Queue(maxsize=settings.FTSTUDIO_STORE_QUEUE_SIZE)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._drain, name="stored-completions", daemon=True)
                self.thread.start()
            return self.queue

    def put(self, item: dict) -> bool:
        try:
            self.start().put_nowait(item)
            return True
        except queue.Full:
            with self.lock:
                self.dropped += 1
            log.warning("stored completions: queue full, %s dropped so far", self.dropped)
            return False

    def _drain(self) -> None:
        from .services import save_stored_completion

        q = self.queue
        while True:
            item = q.get()
            try:
                save_stored_completion(**item)
            except Exception:  # a bad row must not stop the writer
                log.exception("stored completions: could not save %s", item.get("completion", {}).get("id"))
            finally:
                q.task_done()
                if q.empty():
                    close_old_connections()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue is not None and self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)


writer = Writer()


def submit(want: Wanted, completion: dict, *, streamed: bool) -> bool:
    return writer.put(
        {
            "project_id": want.project_id,
            "key_id": want.key_id,
            "metadata": want.metadata,
            "stored_by": want.stored_by,
            "request": want.request,
            "completion": completion,
            "streamed": streamed,
        }
    )

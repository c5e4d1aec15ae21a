"""OpenAI chat-completion answers written from the engine's rows. No Django here, no torch, no I/O.

The inference process (``worker.serve``) reads the engine's events and writes what this module builds:

* :func:`completion`: the ``chat.completion`` object of a finished (not streamed) answer;
* :class:`ChunkStream`: the ``chat.completion.chunk`` server-sent events of a streamed one, choice by choice:
  text as it comes, except text that may begin a tool call (held until the choice ends, then sent as
  ``tool_calls`` or as content), logprobs, the finish reason, and usage when the caller asked for it;
* :func:`fingerprint`: OpenAI's ``system_fingerprint`` (which weights and which engine wrote the answer).

Tool calls are read back in the model family's form (``worker.chat_format``), one only when
``parallel_tool_calls`` is false or the caller used the legacy ``functions``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from worker.protocol import ChatRequest

# In system_fingerprint: bump when the same seed may give other tokens (a change in worker/runner.py's numbers).
ENGINE_VERSION = "ftstudio-engine-2"


def fingerprint(extension: dict) -> str:
    """OpenAI's system_fingerprint: which weights (base model, adapter) and engine wrote the answer, so a
    caller comparing seeded answers knows when a difference comes from a change here."""
    served = f"{extension.get('base')}|{extension.get('adapter')}|{ENGINE_VERSION}"
    return "fp_" + hashlib.sha256(served.encode()).hexdigest()[:12]


def tool_calls(chat: ChatRequest, text: str) -> tuple[str | None, list]:
    """The answer's content and the tool calls read from it in the model family's form (none unless tools
    were offered); one call only when parallel_tool_calls is false."""
    if chat.tool_format is None:
        return text, []
    content, calls = chat.tool_format.parse(text)
    return content, (calls if chat.parallel_tool_calls and not chat.legacy_functions else calls[:1])


def finish_reason(chat: ChatRequest, reason: str, calls: list) -> str:
    if not calls or reason == "length":
        return reason
    return "function_call" if chat.legacy_functions else "tool_calls"


def usage(requests) -> dict:
    prompt = len(requests[0].prompt_ids)
    completion = sum(len(r.output_ids) for r in requests)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def server_error(message: str) -> dict:
    """OpenAI's error object for an answer the engine failed to finish."""
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def completion(chat: ChatRequest, requests) -> dict:
    """The ``chat.completion`` object of finished rows (one choice per row)."""
    choices = []
    for r in requests:
        content, calls = tool_calls(chat, r.text)
        message = {"role": "assistant", "content": content, "refusal": None}
        if calls and chat.legacy_functions:
            message["function_call"] = calls[0].openai()["function"]
        elif calls:
            message["tool_calls"] = [c.openai() for c in calls]
        choices.append(
            {
                "index": r.index,
                "message": message,
                "logprobs": {"content": r.logprobs, "refusal": None} if chat.logprobs else None,
                "finish_reason": finish_reason(chat, r.finish_reason, calls),
            }
        )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "system_fingerprint": fingerprint(chat.extension),
        "choices": choices,
        "usage": usage(requests),
    }


class ChunkStream:
    """The server-sent events of one streamed answer. Each method takes one engine event and returns the
    ``data: ...`` events it makes (none, one or several), to be written in order."""

    def __init__(self, chat: ChatRequest, requests) -> None:
        self.chat, self.requests = chat, requests
        self.ident, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.seen = [""] * len(requests)  # text delivered so far, per choice
        self.shown = [0] * len(requests)  # characters of it sent as content
        self.logprobs_sent = [0] * len(requests)

    def _chunk(self, choices, usage=None) -> bytes:
        payload = {
            "id": self.ident,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.chat.model,
            "system_fingerprint": fingerprint(self.chat.extension),
            "choices": choices,
        }
        if self.chat.include_usage:
            payload["usage"] = usage
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def opening(self) -> list[bytes]:
        """Every choice's first chunk: the assistant role, empty content."""
        return [
            self._chunk(
                [
                    {
                        "index": r.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    for r in self.requests
                ]
            )
        ]

    def delta(self, index: int, value: str) -> list[bytes]:
        """New text of one choice (and its tokens' logprobs when asked)."""
        chat, r = self.chat, self.requests[index]
        logprobs = None
        if chat.logprobs:
            logprobs = {"content": r.logprobs[self.logprobs_sent[index] :], "refusal": None}
            self.logprobs_sent[index] += len(logprobs["content"])
        self.seen[index] += value
        if chat.tool_format is not None:  # text that may begin a tool call waits for the end
            safe = max(self.shown[index], chat.tool_format.hold_from(self.seen[index]))
            value, self.shown[index] = self.seen[index][self.shown[index] : safe], safe
        if value or logprobs:
            return [
                self._chunk(
                    [{"index": index, "delta": {"content": value}, "logprobs": logprobs, "finish_reason": None}]
                )
            ]
        return []

    def done(self, index: int, reason: str) -> list[bytes]:
        """One choice ended: the text held back, its tool calls, its finish reason."""
        chat, seen, shown = self.chat, self.seen, self.shown
        out = []
        content, calls = tool_calls(chat, seen[index])
        rest = (content or "")[shown[index] :] if calls else seen[index][shown[index] :]
        if chat.tool_format is not None and rest:
            out.append(
                self._chunk([{"index": index, "delta": {"content": rest}, "logprobs": None, "finish_reason": None}])
            )
        for k, call in enumerate(calls):
            if chat.legacy_functions:
                delta = {"function_call": call.openai()["function"]}
            else:
                delta = {"tool_calls": [{"index": k, **call.openai()}]}
            out.append(self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]))
            if chat.legacy_functions:
                break
        reason = finish_reason(chat, reason, calls)
        out.append(self._chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]))
        return out

    def closing(self) -> list[bytes]:
        """After every choice ended: usage (when the caller asked for it) and ``[DONE]``."""
        out = [self._chunk([], usage(self.requests))] if self.chat.include_usage else []
        return [*out, b"data: [DONE]\n\n"]


def error_event(message: str) -> bytes:
    """The event that ends a stream the engine failed to finish (a client never takes it for a whole answer)."""
    return b"data: " + json.dumps(server_error(message)).encode() + b"\n\n"

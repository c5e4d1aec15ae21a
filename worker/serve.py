"""The inference process: the engine behind OpenAI's chat-completions wire format over HTTP. No Django here.

    python -m worker.serve            # 127.0.0.1:$FTSTUDIO_INFERENCE_PORT (default 8001)

It runs beside the web server and the Celery worker (``make run``; the ``inference`` service in
docker-compose), so chat answers while a training run occupies the worker. The web process (``apps/api``)
authenticates the caller, resolves the public model id and forwards the request here with one extension
field, ``ftstudio``: ``{"base": model dir, "adapter": adapter dir or null, "client": key id,
"client_limit": N}``, plus ``base_key``/``adapter_key`` (keys in the artifact store) when one is configured.
Every POST carries ``Authorization: Bearer <FTSTUDIO_INFERENCE_SECRET>`` (``worker/inference_auth.py``); without a
secret the process only listens on loopback. Paths must lie under this process's roots (``FTSTUDIO_INFERENCE_ROOTS``).
A folder that is not on this node's disk (trained on another node) is fetched by its key from the artifact store
(``FTSTUDIO_ARTIFACTS_URL``) into this node's bounded cache (``FTSTUDIO_ARTIFACT_CACHE``,
``FTSTUDIO_ARTIFACT_CACHE_BYTES``): `Resolver`.

Requests are read by ``worker.protocol.parse_chat_request``, the one definition of which OpenAI fields are
supported; the web process calls it too, so a field this engine cannot honour is a 400 naming it before anything
is forwarded. Answers (the JSON object, the stream's chunks) are built by ``worker.answers``; this module is the
HTTP side: authentication, body limits, handing rows to the engine (``worker.engine``), the caller's connection,
draining on SIGTERM, and the process's command line.

Endpoints: ``POST /v1/chat/completions`` (JSON, or SSE chunks ending with ``data: [DONE]``),
``GET /health`` (queue figures). A client that disconnects mid-stream cancels its rows at the next token.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from worker.answers import ChunkStream, completion, error_event, server_error
from worker.artifacts import (
    ArtifactStoreConfigError,
    ArtifactStoreError,
    LocalCache,
    Store,
    cache_location,
    from_env,
    var_dir,
)
from worker.engine import Engine
from worker.inference_auth import shared_secret
from worker.protocol import ChatRequest, EngineError, bad_request, error_body, parse_chat_request

log = logging.getLogger(__name__)

# A body above this is refused unread (FTSTUDIO_INFERENCE_MAX_BODY_BYTES). The web process already caps what callers
# send (FTSTUDIO_API_MAX_BODY_BYTES, 2 MiB); this leaves room for its re-encoding (non-ASCII text as \u escapes).
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
CLIENT_POLL_SECONDS = 0.25  # how often a request waiting for tokens checks that its client is still there


class Resolver:
    """Where this process finds a folder the web process names: the path itself when it is on this node's disk,
    else a copy fetched by its store key into this node's bounded cache (one fetch at a time)."""

    def __init__(self, store: Store | None, cache: LocalCache) -> None:
        self.store, self.cache = store, cache
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env=os.environ) -> Resolver:
        media = env.get("FTSTUDIO_MEDIA_ROOT", str(var_dir(env) / "media"))
        return cls(
            from_env(media, env) if env.get("FTSTUDIO_ARTIFACTS_URL") else None, LocalCache(*cache_location(env))
        )

    def __call__(self, path: str | None, key: str | None, what: str) -> str | None:
        here = bool(path) and any(Path(path, n).is_file() for n in ("config.json", "adapter_config.json"))
        if here or not key or self.store is None:
            return path
        try:
            with self._lock:
                return str(self.cache.fetch(self.store, key))
        except ArtifactStoreError as exc:
            raise EngineError(
                f"The {what} is not on this node and could not be fetched from the artifact store: {exc}",
                status=503,
                code="artifact_store_unavailable",
                kind="server_error",
            ) from exc


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the listen backlog: a burst of clients must not be reset (the default is 5)

    def __init__(
        self,
        address,
        engine: Engine,
        *,
        max_tokens_cap: int,
        default_max_tokens: int,
        resolve: Resolver | None = None,
        secret: str = "",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        super().__init__(address, Handler)
        self.engine, self.max_tokens_cap, self.default_max_tokens = engine, max_tokens_cap, default_max_tokens
        self.secret, self.max_body_bytes = secret, max_body_bytes  # secret "": no check (loopback only, see main)
        self.resolve = resolve or Resolver(None, LocalCache("/nonexistent", 0))
        self.vllm = None  # a worker.vllm.VllmForwarder when FTSTUDIO_VLLM_URL hands chat to a vLLM server
        self.draining = threading.Event()  # SIGTERM: new requests get a 503, open answers get a grace period
        self.open: dict[int, tuple[list, queue.SimpleQueue]] = {}  # answers being written, by handler id
        self._open_lock = threading.Lock()

    def drain(self, grace: float) -> None:
        """Stop admitting, let the open answers finish for ``grace`` seconds, end the rest with an error event (a
        client never takes a cut answer for a whole one), then stop serving."""
        self.draining.set()
        log.info("shutting down: %d answers open, %.0f s to finish them", len(self.open), grace)
        deadline = time.monotonic() + grace
        while self.open and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._open_lock:
            left = list(self.open.values())
        for requests, sink in left:
            sink.put((0, "error", "The inference process was stopped before this answer was finished; try again."))
            for r in requests:
                r.cancel()
        deadline = time.monotonic() + 5
        while self.open and time.monotonic() < deadline:  # the handlers write their error events
            time.sleep(0.05)
        self.shutdown()

    def handle_error(self, request, client_address):
        """A client that went away (a timed-out health probe, a closed stream) is not a server error."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s went away", client_address)
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        log.debug("%s " + format, self.address_string(), *args)

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - the stdlib's name
        if self.path == "/health":
            return self._json(200, {"status": "ok", **self.server.engine.stats()})
        return self._json(
            404,
            {
                "error": {
                    "message": f"No route {self.path}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )

    def do_POST(self):  # noqa: N802
        if self.path != "/v1/chat/completions":
            return self._json(
                404,
                {
                    "error": {
                        "message": f"No route {self.path}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
        requests = []
        try:
            if self.server.secret and not hmac.compare_digest(
                self.headers.get("Authorization", "").encode(), f"Bearer {self.server.secret}".encode()
            ):
                raise EngineError(
                    "Only the web process may call the inference process (the shared secret is missing or wrong).",
                    status=401,
                    code="invalid_api_key",
                )
            length = int(self.headers.get("Content-Length") or 0)
            if length > self.server.max_body_bytes:
                self.close_connection = True  # the body is left unread
                raise bad_request(
                    f"The body is {length} bytes; at most {self.server.max_body_bytes} are accepted.", None
                )
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError as exc:
                raise bad_request(f"The body is not valid JSON ({exc}).", None) from None
            chat = parse_chat_request(
                body,
                max_tokens_cap=self.server.max_tokens_cap,
                default_max_tokens=self.server.default_max_tokens,
                internal=True,
            )
            ext = chat.extension
            if not isinstance(ext.get("base"), str):
                raise bad_request(
                    "ftstudio.base (the base model's folder) is required by the inference process.", "ftstudio"
                )
            if self.server.draining.is_set():
                raise EngineError(
                    "The inference process is shutting down; try again in a moment.",
                    status=503,
                    code="inference_unavailable",
                    kind="server_error",
                )
            if self.server.vllm is not None:
                adapter = self.server.resolve(ext.get("adapter"), ext.get("adapter_key"), "adapter")
                adapter = self.server.engine.check_root(adapter, "adapter") if adapter else None
                return self._relay(chat, self.server.vllm.open(body, adapter))
            sink: queue.SimpleQueue = queue.SimpleQueue()
            model_dir = self.server.resolve(ext["base"], ext.get("base_key"), "base model")
            params, tools = chat.params, None
            if chat.tool_choice != "none":  # tools are shown to the model, and its calls read back in its form
                tools = chat.tools
                chat.tool_format = self.server.engine.tool_format(model_dir)
                if chat.forced_tools:  # required or named: the call is enforced by the grammar of that form
                    parallel = chat.parallel_tool_calls and chat.tool_choice == "required"  # named: that one call
                    grammar = chat.tool_format.grammar(chat.forced_tools, parallel)
                    params = [replace(p, grammar=grammar) for p in params]
            requests = self.server.engine.submit(
                model_dir=model_dir,
                adapter_path=self.server.resolve(ext.get("adapter"), ext.get("adapter_key"), "adapter"),
                messages=chat.messages,
                params=params,
                client=str(ext.get("client")) if ext.get("client") is not None else None,
                client_limit=int(ext.get("client_limit") or 0),
                sink=sink,
                scope=str(ext["scope"]) if ext.get("scope") is not None else None,
                tools=tools,
            )
            with self.server._open_lock:  # a SIGTERM's drain ends what is still open after its grace period
                self.server.open[id(self)] = (requests, sink)
            if chat.stream:
                self._stream(chat, requests, sink)
            else:
                self._complete(chat, requests, sink)
        except EngineError as exc:
            return self._json(exc.status, error_body(exc))
        finally:
            with self.server._open_lock:
                self.server.open.pop(id(self), None)
            for r in requests:  # a handler that ends for any reason (a client gone, an error) frees its rows
                r.cancel()

    def _client_gone(self) -> bool:
        """Whether the caller closed its connection (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    _client_checked = 0.0  # monotonic time the caller's connection was last looked at

    def _next_event(self, sink) -> tuple:
        """The next engine event; ConnectionResetError as soon as the caller is gone (its rows leave the batch).
        The connection is looked at every CLIENT_POLL_SECONDS, also while events keep coming (a JSON answer's
        tokens arrive at every step, and nothing is written to its caller until the end)."""
        while True:
            if time.monotonic() - self._client_checked >= CLIENT_POLL_SECONDS:
                self._client_checked = time.monotonic()
                if self._client_gone():
                    raise ConnectionResetError("the client went away")
            try:
                return sink.get(timeout=CLIENT_POLL_SECONDS)
            except queue.Empty:
                continue

    def _start_event_stream(self, prompt_tokens: int | None = None) -> None:
        """Headers of a server-sent event stream; the connection closes when it ends. ``prompt_tokens`` lets the
        web process count a stream that is cut off before its usage chunk."""
        self.send_response(200)
        if prompt_tokens is not None:
            self.send_header("X-Prompt-Tokens", str(prompt_tokens))
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _relay(self, chat: ChatRequest, upstream) -> None:
        """Pass the vLLM server's answer through, with ``model`` as the client named it."""
        with upstream:
            status = getattr(upstream, "status", None) or upstream.code
            if not chat.stream or status != 200:
                data = upstream.read()
                try:
                    payload = json.loads(data)
                except ValueError:
                    text = data.decode(errors="replace")[:500]
                    payload = {"error": {"message": text, "type": "api_error", "param": None, "code": "upstream_error"}}
                if status == 200:
                    payload["model"] = chat.model
                return self._json(status, payload)
            self._start_event_stream()
            try:
                for line in upstream:
                    if line.startswith(b"data: {"):
                        event = json.loads(line[len(b"data: ") :])
                        event["model"] = chat.model
                        line = b"data: " + json.dumps(event).encode() + b"\n"
                    self.wfile.write(line)
                    if not line.strip():
                        self.wfile.flush()
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                log.info("client went away mid-stream; the vLLM request is closed")

    def _wait(self, requests, sink, on_delta=None) -> str | None:
        """Deliver events until every choice is done; returns an error message if the engine failed."""
        remaining = len(requests)
        while remaining:
            index, kind, value = self._next_event(sink)
            if kind == "delta" and on_delta is not None:
                on_delta(index, value)
            elif kind == "done":
                remaining -= 1
            elif kind == "error":
                return value
        return None

    def _complete(self, chat: ChatRequest, requests, sink) -> None:
        error = self._wait(requests, sink)
        if error:
            return self._json(500, server_error(error))
        self._json(200, completion(chat, requests))

    def _stream(self, chat: ChatRequest, requests, sink) -> None:
        stream = ChunkStream(chat, requests)
        pending: list[bytes] = []  # chunks written together: one write and flush per wake-up, not per token

        def send() -> None:
            self.wfile.write(b"".join(pending))
            self.wfile.flush()
            pending.clear()

        self._start_event_stream(len(requests[0].prompt_ids))
        try:
            pending.extend(stream.opening())
            send()
            remaining = len(requests)
            while remaining:
                try:
                    index, kind, value = sink.get_nowait()
                except queue.Empty:
                    send()  # everything that was ready is out; wait for the next token
                    index, kind, value = self._next_event(sink)
                if kind == "delta":
                    pending.extend(stream.delta(index, value))
                elif kind == "done":
                    remaining -= 1
                    pending.extend(stream.done(index, value))
                elif kind == "error":
                    send()
                    self.wfile.write(error_event(value))
                    return
            pending.extend(stream.closing())
            send()
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away mid-stream; its rows leave the batch")
            for r in requests:
                r.cancel()


def default_roots() -> list[str]:
    """Model roots, the model cache and the media folder (adapters), as the web settings default them."""
    if os.environ.get("FTSTUDIO_INFERENCE_ROOTS"):
        return [p for p in os.environ["FTSTUDIO_INFERENCE_ROOTS"].split(",") if p.strip()]
    var = var_dir()
    cache = os.environ.get("FTSTUDIO_MODEL_CACHE", str(var / "models"))
    roots = [p for p in os.environ.get("FTSTUDIO_MODEL_ROOTS", cache).split(",") if p.strip()]
    return [*roots, cache, os.environ.get("FTSTUDIO_MEDIA_ROOT", str(var / "media"))]


def make_server(
    host: str,
    port: int,
    *,
    roots: list[str],
    max_batch: int = 32,
    max_adapters: int = 8,
    max_queue: int = 256,
    max_tokens_cap: int = 1024,
    default_max_tokens: int = 256,
    resolve: Resolver | None = None,
    secret: str = "",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Server:
    from worker.models import shipped_gguf_path

    shipped = shipped_gguf_path()
    resolve = resolve or Resolver.from_env()
    cache = [str(resolve.cache.root)] if resolve.store is not None else []
    engine = Engine(
        max_batch=max_batch,
        max_adapters=max_adapters,
        max_queue=max_queue,
        allowed_roots=[*roots, *([str(shipped.parent)] if shipped else []), *cache],
    )
    server = Server(
        (host, port),
        engine,
        max_tokens_cap=max_tokens_cap,
        default_max_tokens=default_max_tokens,
        resolve=resolve,
        secret=secret,
        max_body_bytes=max_body_bytes,
    )
    if os.environ.get("FTSTUDIO_VLLM_URL"):
        from worker.vllm import VllmForwarder

        server.vllm = VllmForwarder(
            os.environ["FTSTUDIO_VLLM_URL"], model=os.environ.get("FTSTUDIO_VLLM_MODEL") or None
        )
    return server


def main() -> None:
    import argparse

    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=env("FTSTUDIO_INFERENCE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("FTSTUDIO_INFERENCE_PORT", "8001")))
    parser.add_argument("--max-batch", type=int, default=int(env("FTSTUDIO_INFERENCE_MAX_BATCH", "32")))
    parser.add_argument("--max-adapters", type=int, default=int(env("FTSTUDIO_INFERENCE_MAX_ADAPTERS", "8")))
    parser.add_argument("--max-queue", type=int, default=int(env("FTSTUDIO_INFERENCE_MAX_QUEUE", "256")))
    parser.add_argument("--max-tokens-cap", type=int, default=int(env("FTSTUDIO_API_MAX_TOKENS", "1024")))
    parser.add_argument(
        "--threads",
        type=int,
        default=int(env("FTSTUDIO_INFERENCE_THREADS", "0")),
        help="torch threads (0: torch's default)",
    )
    parser.add_argument("--preload", action="append", default=[], help="a base model folder to load at start")
    args = parser.parse_args()
    logging.basicConfig(
        level=env("FTSTUDIO_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    loopback = args.host in {"127.0.0.1", "::1", "localhost"}
    secret = shared_secret(generate=loopback)
    if not secret:
        sys.stderr.write(
            f"ftstudio inference: set FTSTUDIO_INFERENCE_SECRET (the web process's value) to listen on {args.host}; "
            "without it only 127.0.0.1 is allowed.\n"
        )
        raise SystemExit(78)
    resolve = Resolver.from_env()
    if resolve.store is not None:
        try:  # wrong credentials or no bucket: stop now, naming the variable (like the web process and workers)
            resolve.store.check()
        except ArtifactStoreConfigError as exc:
            sys.stderr.write(f"ftstudio inference: the artifact store is not usable: {exc}\n")
            raise SystemExit(78) from exc
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    server = make_server(
        args.host,
        args.port,
        roots=default_roots(),
        max_batch=args.max_batch,
        max_adapters=args.max_adapters,
        max_queue=args.max_queue,
        max_tokens_cap=args.max_tokens_cap,
        resolve=resolve,
        secret=secret,
        max_body_bytes=int(env("FTSTUDIO_INFERENCE_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY_BYTES))),
    )
    for folder in args.preload:
        server.engine.prompt_ids(folder, [{"role": "user", "content": "warm up"}])
    grace = float(env("FTSTUDIO_INFERENCE_GRACE_SECONDS", "20"))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.drain, args=(grace,), daemon=True).start())
    log.info("inference process listening on http://%s:%d", args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.engine.close()


if __name__ == "__main__":
    main()

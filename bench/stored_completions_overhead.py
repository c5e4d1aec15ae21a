"""What storing chat completions adds to a chat request's latency at 32 concurrent requests.

The Studio's web layer (Django's threaded WSGI server in this process, as in production one process holds the
writer thread) in front of a stand-in inference process that answers at once (a fixed 40-token completion, JSON or
SSE): the measured difference is the Studio's own work for storing (taking ``store``/``metadata`` off the body,
capturing the answer, the queue, and the writer thread's inserts competing for the same process), not generation,
so the share it shows is an upper bound of what storage adds to a real request (which also waits for the model).

Sides alternate for ``--rounds`` rounds (bench/_rounds.py): storage off (no ``store``), then on (``store: true``
with two metadata pairs). Each side sends ``--requests`` chat requests (half streamed) from 32 threads with the
official ``openai`` client; a round prints both sides' p50/p95 latency; the last line is
``ratio=<median>`` of p50 latency with storage ÷ without (1.05 is the issue's bound).

    .venv/bin/python bench/stored_completions_overhead.py [--requests 640] [--concurrency 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _rounds import add_rounds_argument, alternate  # noqa: E402

WORDS = " ".join(f"word{i}" for i in range(40))


class Upstream(BaseHTTPRequestHandler):
    """A stand-in inference process: the same completion at once, as JSON or as SSE chunks with usage."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ident, model = f"chatcmpl-{time.perf_counter_ns()}-{threading.get_ident()}", body["model"]
        usage = {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}
        if not body.get("stream"):
            data = json.dumps(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": WORDS}, "finish_reason": "stop"}
                    ],
                    "usage": usage,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        chunks = [
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}],
            }
            for w in WORDS.split()
        ]
        chunks.append(
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
        )
        chunks.append(
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [],
                "usage": usage,
            }
        )
        data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(server) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=32)
    add_rounds_argument(parser, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ftstudio-store-bench-"))
    upstream = type("Backlog", (ThreadingHTTPServer,), {"request_queue_size": 256})(("127.0.0.1", 0), Upstream)
    serve(upstream)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{work / 'db.sqlite3'}")
    os.environ["FTSTUDIO_MODEL_ROOTS"] = str(work)
    os.environ["FTSTUDIO_INFERENCE_URL"] = f"http://127.0.0.1:{upstream.server_address[1]}"
    import django

    django.setup()
    import logging

    logging.disable(logging.INFO)
    from django.core.management import call_command
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    call_command("migrate", verbosity=0)
    import openai

    from apps.accounts.models import Membership, Project, Role
    from apps.api.models import StoredCompletion
    from apps.api.services import create_api_key
    from apps.api.stored import writer
    from apps.runs.models import BaseModel

    model_dir = work / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"")  # never loaded: the stand-in answers
    user = (
        __import__("django.contrib.auth", fromlist=["get_user_model"]).get_user_model().objects.create(username="bench")
    )
    project = Project.objects.create(name="Bench", slug="bench")
    Membership.objects.create(project=project, user=user, role=Role.PM)
    BaseModel.objects.create(name="stand-in", source_kind="local", source=str(model_dir))
    key = create_api_key(project=project, user=user, name="bench")[1]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    web = type("Backlog", (ThreadedWSGIServer,), {"request_queue_size": 256})(("127.0.0.1", 0), Quiet)
    web.set_app(get_wsgi_application())
    serve(web)
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{web.server_address[1]}/v1", api_key=key, max_retries=0, timeout=60
    )
    messages = [{"role": "user", "content": "Where is order #104? It was due on Monday."}]

    def one(i: int, store: bool) -> float:
        extra = {"store": True, "metadata": {"shop": "eu", "n": str(i)}} if store else {}
        start = time.perf_counter()
        if i % 2:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(model="stand-in", messages=messages, stream=True, **extra)
                if c.choices
            )
        else:
            text = (
                client.chat.completions.create(model="stand-in", messages=messages, **extra).choices[0].message.content
            )
        assert text.strip() == WORDS, text
        return time.perf_counter() - start

    def side(store: bool):
        def run(n: int):
            before = StoredCompletion.objects.count()
            with ThreadPoolExecutor(args.concurrency) as pool:
                latencies = sorted(pool.map(lambda i: one(i, store), range(args.requests)))
            writer.flush(timeout=120)
            stored = StoredCompletion.objects.count() - before
            assert stored == (args.requests if store else 0), stored
            return latencies, writer.dropped

        return run

    one(0, False)  # warm up: connections, imports

    def describe(off, on) -> str:
        def q(v, p):
            return v[min(len(v) - 1, int(p * len(v)))] * 1000

        return (
            f"off p50 {q(off[0], 0.5):.1f} ms p95 {q(off[0], 0.95):.1f} ms | "
            f"on p50 {q(on[0], 0.5):.1f} ms p95 {q(on[0], 0.95):.1f} ms | dropped {on[1]}"
        )

    print(f"{args.requests} requests per side, {args.concurrency} concurrent, half streamed; CPU: {_cpu()}")
    alternate(
        args.rounds,
        side(False),
        side(True),
        lambda off, on: statistics.median(on[0]) / statistics.median(off[0]),
        describe,
        digits=3,
    )


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()

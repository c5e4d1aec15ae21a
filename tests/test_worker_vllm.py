"""The inference process hands chat to a vLLM OpenAI server when FTSTUDIO_VLLM_URL is set.

vLLM cannot run here: a stub in the test speaks the endpoints the hand-off uses (``GET /v1/models``,
``POST /v1/load_lora_adapter``, ``POST /v1/chat/completions``, JSON and SSE) and records what it was sent."""

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.serve import make_server
from worker.vllm import VllmForwarder


class Stub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    loads: list[dict]
    chats: list[dict]

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _send(self, status, payload, content_type="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._send(200, {"object": "list", "data": [{"id": "served-base", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/load_lora_adapter":
            if any(load["lora_name"] == body["lora_name"] for load in self.server.loads):
                return self._send(400, b"The lora adapter has already been loaded.", "text/plain")
            self.server.loads.append(body)
            return self._send(200, b"Success: LoRA adapter added successfully.", "text/plain")
        self.server.chats.append(body)
        words = ["Hello", " from", f" {body['model']}"]
        if not body.get("stream"):
            return self._send(
                200,
                {
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )
        events = [
            {
                "object": "chat.completion.chunk",
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": w}}],
            }
            for w in words
        ]
        stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        self._send(200, stream, "text/event-stream")


@pytest.fixture
def vllm():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.loads, server.chats = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def inference(vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FTSTUDIO_VLLM_URL", f"http://127.0.0.1:{vllm.server_address[1]}")
    (tmp_path / "base").mkdir()
    (tmp_path / "run-7").mkdir()
    server = make_server("127.0.0.1", 0, roots=[str(tmp_path)])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()
    server.engine.close()


def chat(url, body):
    request = urllib.request.Request(
        url + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def body(tmp_path, adapter=None, **extra):
    ext = {"base": str(tmp_path / "base"), "adapter": str(adapter) if adapter else None, "client": "k1"}
    return {"model": "ft:run-7", "messages": [{"role": "user", "content": "Hi"}], "ftstudio": ext, **extra}


def test_a_run_s_adapter_is_loaded_into_vllm_once_and_named_as_the_model(inference, vllm):
    url, tmp_path = inference
    adapter = (tmp_path / "run-7").resolve()
    status, text = chat(url, body(tmp_path, adapter))
    assert status == 200
    answer = json.loads(text)
    name = VllmForwarder.lora_name(str(adapter))
    assert vllm.loads == [{"lora_name": name, "lora_path": str(adapter)}]
    assert vllm.chats[-1]["model"] == name and "ftstudio" not in vllm.chats[-1]
    assert answer["choices"][0]["message"]["content"] == f"Hello from {name}"
    assert answer["model"] == "ft:run-7"  # the client sees the id it asked for, not vLLM's lora name

    status, text = chat(url, body(tmp_path, adapter, stream=True))
    assert status == 200 and len(vllm.loads) == 1  # loaded once
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == f"Hello from {name}"
    assert {e["model"] for e in events} == {"ft:run-7"} and text.rstrip().endswith("data: [DONE]")


def test_the_base_model_goes_to_vllm_under_its_served_name(inference, vllm):
    url, tmp_path = inference
    status, text = chat(url, body(tmp_path))
    assert status == 200 and vllm.chats[-1]["model"] == "served-base" and vllm.loads == []
    assert json.loads(text)["choices"][0]["message"]["content"] == "Hello from served-base"


def test_an_adapter_vllm_already_holds_after_our_restart_is_used_as_it_is(vllm, tmp_path):
    url = f"http://127.0.0.1:{vllm.server_address[1]}"
    first, after_restart = VllmForwarder(url), VllmForwarder(url)
    assert first.ensure_adapter(str(tmp_path)) == after_restart.ensure_adapter(str(tmp_path))  # vLLM: 400 "already"
    assert len(vllm.loads) == 1


def test_an_adapter_outside_the_roots_is_refused_before_anything_is_forwarded(inference, vllm):
    url, tmp_path = inference
    status, text = chat(url, body(tmp_path, "/etc"))
    assert status == 403 and json.loads(text)["error"]["code"] == "forbidden_path"
    assert vllm.loads == [] and vllm.chats == []


def test_a_vllm_server_that_is_down_is_a_502_in_openai_s_shape(inference, vllm):
    url, tmp_path = inference
    vllm.shutdown()
    vllm.server_close()
    status, text = chat(url, body(tmp_path))
    error = json.loads(text)["error"]
    assert status == 502 and error["code"] == "upstream_unavailable" and "did not answer" in error["message"]

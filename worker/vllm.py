"""Optional hand-off of chat completions to a vLLM OpenAI server (a GPU node). No Django here.

When ``FTSTUDIO_VLLM_URL`` is set (e.g. ``http://vllm:8000``), the inference process (``worker.serve``) forwards
every chat completion to that server instead of its own engine. The vLLM server must be started with
``--enable-lora`` (and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), serve the same base model, and see the adapter
folders at the same paths. A run's adapter is loaded there on first use with ``POST /v1/load_lora_adapter``
(``lora_name``, ``lora_path``) and then named as the request's ``model``; the base model is named by
``FTSTUDIO_VLLM_MODEL`` (vLLM's ``--served-model-name``; by default the first id of its ``GET /v1/models``).

Tested against a stub that speaks those endpoints (tests/test_worker_vllm.py), not against a real vLLM.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request

from worker.protocol import EngineError


def _unavailable(url: str, exc: Exception) -> EngineError:
    return EngineError(
        f"The vLLM server at {url} did not answer ({exc}).", status=502, code="upstream_unavailable", kind="api_error"
    )


class VllmForwarder:
    def __init__(self, url: str, *, model: str | None = None, timeout: float = 600) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self._model = model
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def lora_name(adapter_path: str) -> str:
        return "ftstudio-" + hashlib.sha1(adapter_path.encode()).hexdigest()[:12]

    def _post(self, path: str, payload: dict):
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        return urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310 - an operator-set http(s) URL

    def base_model(self) -> str:
        if self._model is None:
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=30) as response:  # noqa: S310
                    self._model = json.load(response)["data"][0]["id"]
            except (OSError, ValueError, KeyError, IndexError) as exc:
                raise _unavailable(self.url, exc) from None
        return self._model

    def ensure_adapter(self, adapter_path: str) -> str:
        """Load the adapter into vLLM once (``POST /v1/load_lora_adapter``); returns its lora name."""
        name = self.lora_name(adapter_path)
        with self._lock:
            if name in self._loaded:
                return name
            try:
                self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": adapter_path}).close()
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                if "already" not in detail:  # vLLM answers 400 "... has already been loaded" after its restart
                    raise EngineError(
                        f"The vLLM server refused the adapter ({exc.code}): {detail[:300]}",
                        status=502,
                        code="upstream_adapter_refused",
                        kind="api_error",
                    ) from None
            except OSError as exc:
                raise _unavailable(self.url, exc) from None
            self._loaded.add(name)
        return name

    def open(self, body: dict, adapter_path: str | None):
        """Send the chat completion to vLLM with ``model`` set to the lora name (or the base model); returns the
        open response (an HTTPError is a response too: its status and OpenAI error body are relayed)."""
        payload = {k: v for k, v in body.items() if k != "ftstudio"}
        payload["model"] = self.ensure_adapter(adapter_path) if adapter_path else self.base_model()
        try:
            return self._post("/v1/chat/completions", payload)
        except urllib.error.HTTPError as exc:
            return exc
        except OSError as exc:
            raise _unavailable(self.url, exc) from None

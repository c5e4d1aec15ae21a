"""The shared secret between the web process and the inference process (no Django here).

The web process sends it as ``Authorization: Bearer <secret>`` with every forwarded chat request and the inference
process refuses a request without it, so reaching the inference port is not enough to call a model. It comes from
FTSTUDIO_INFERENCE_SECRET; in the local setup (web process in debug mode, inference process on loopback) it is
generated once into ``$FTSTUDIO_VAR_DIR/inference-secret`` and both processes read it from there.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping

from worker.artifacts import var_dir

SECRET_FILE = "inference-secret"


def shared_secret(env: Mapping[str, str] | None = None, *, generate: bool) -> str:
    """FTSTUDIO_INFERENCE_SECRET, else (``generate``) the local setup's generated one, else ""."""
    env = os.environ if env is None else env
    value = env.get("FTSTUDIO_INFERENCE_SECRET", "").strip()
    if value or not generate:
        return value
    path = var_dir(env) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        draft = path.with_name(f".{SECRET_FILE}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        try:
            os.link(draft, path)  # whole or not at all; the first process to start wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()

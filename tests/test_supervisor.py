"""The local setup's supervisor (scripts/supervise.py, started by `make run`): a child that dies is started again
with a line saying which and why while the others keep running; a taken port is one sentence naming it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # every test starts the supervisor or its port check as a process

SUPERVISE = str(Path(REPO) / "scripts" / "supervise.py")
SLEEPER = f"{sys.executable} -c 'import time; time.sleep(120)'"


def read_until(process, pattern: str, lines: list[str], timeout: float = 20.0) -> re.Match:
    """Read the supervisor's output until a line matches ``pattern`` (all lines read so far go to ``lines``)."""
    found: list[re.Match] = []

    def read():
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if match := re.search(pattern, line):
                found.append(match)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert found, f"no line matching {pattern!r} in:\n" + "\n".join(lines)
    return found[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_child_that_dies_is_started_again_and_the_others_keep_running():
    supervisor = subprocess.Popen(
        [sys.executable, SUPERVISE, "run", "--min-backoff", "0.2",
         "--child", "the worker", SLEEPER, "--child", "the web server", SLEEPER],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        pids = {}
        for _ in range(2):
            name, pid = read_until(supervisor, r"started (the worker|the web server) \(pid (\d+)\)", lines).groups()
            pids[name] = int(pid)
        os.kill(pids["the worker"], signal.SIGKILL)
        said = read_until(supervisor, r"the worker \(pid (\d+)\) was killed by signal 9 \(SIGKILL\).*again in", lines)
        assert int(said.group(1)) == pids["the worker"]
        restarted = int(read_until(supervisor, r"started the worker \(pid (\d+)\)", lines).group(1))
        assert restarted != pids["the worker"] and alive(restarted)
        assert alive(pids["the web server"])  # untouched
        assert supervisor.poll() is None

        os.kill(restarted, signal.SIGTERM)  # a second exit waits longer (back-off doubles)
        read_until(supervisor, r"the worker \(pid \d+\) was killed by signal 15 \(SIGTERM\).*again in 0.4 s", lines)
        read_until(supervisor, r"started the worker", lines)
    finally:
        supervisor.terminate()  # what Ctrl-C in run.sh does: everything stops
        assert supervisor.wait(timeout=30) == 0
    time.sleep(0.2)
    assert not any(alive(pid) for pid in pids.values())


def test_what_a_dead_child_leaves_behind_is_stopped_before_it_starts_again():
    """A SIGKILLed Celery worker leaves its embedded beat process running (it would keep sending the periodic tasks
    twice after the restart): the supervisor ends the child's whole process group."""
    spawner = f"{sys.executable} -c \"import subprocess, time; p = subprocess.Popen(['sleep', '120']); " \
        "print('grandchild', p.pid, flush=True); time.sleep(120)\""  # fmt: skip
    supervisor = subprocess.Popen(
        [sys.executable, SUPERVISE, "run", "--min-backoff", "30", "--child", "the worker", spawner],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        worker = int(read_until(supervisor, r"started the worker \(pid (\d+)\)", lines).group(1))
        grandchild = int(read_until(supervisor, r"grandchild (\d+)", lines).group(1))
        os.kill(worker, signal.SIGKILL)
        read_until(supervisor, r"the worker .* was killed by signal 9", lines)
        deadline = time.monotonic() + 5
        while alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(grandchild)
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=30)


@pytest.fixture
def two_free_ports():
    """A web port whose + 1 is free as well."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            web = probe.getsockname()[1]
        if web < 65535 and ports(web).returncode == 0:
            return web
    raise AssertionError("no two adjacent free ports on this machine")


def without_inference_port() -> dict:
    return {k: v for k, v in os.environ.items() if k != "FTSTUDIO_INFERENCE_PORT"}


def ports(web: int, env=None):
    return subprocess.run(
        [sys.executable, SUPERVISE, "ports", "--host", "127.0.0.1", "--web", str(web)],
        capture_output=True, text=True, env=env or without_inference_port(),
    )  # fmt: skip


def test_the_inference_port_follows_the_web_port_and_a_taken_port_is_one_sentence(two_free_ports):
    web = two_free_ports
    assert ports(web).stdout.strip() == str(web + 1)  # FTSTUDIO_PORT=8766 -> inference on 8767, not 8001

    with socket.socket() as other_instance:  # another program listens on the inference port
        other_instance.bind(("127.0.0.1", web + 1))
        other_instance.listen()
        result = ports(web)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.strip() == (
            f"Port {web + 1} (for the inference process, the web port + 1) is already taken, perhaps by another "
            f"Fine-Tuning Studio: stop it or start this one on another port (e.g. FTSTUDIO_PORT={web + 10})."
        )
        chosen = ports(web, env={**without_inference_port(), "FTSTUDIO_INFERENCE_PORT": str(web + 1)})
        assert "set FTSTUDIO_INFERENCE_PORT to a free one" in chosen.stderr and "Traceback" not in chosen.stderr

    with socket.socket() as other_instance:
        other_instance.bind(("127.0.0.1", web))
        other_instance.listen()
        result = ports(web)
        assert result.returncode == 1 and result.stderr.startswith(f"Port {web} (for the web server) is already taken")


def test_run_sh_starts_everything_under_the_supervisor_on_the_derived_port():
    script = (Path(REPO) / "scripts" / "run.sh").read_text()
    assert "supervise.py ports" in script and "supervise.py run" in script
    assert "wait -n" not in script and "8001" not in script

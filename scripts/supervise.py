"""The local setup's supervisor (`make run`, scripts/run.sh): runs the worker, the inference process and the web
server side by side; one that exits is started again after a back-off, with a line saying which and why, and the
others keep running. Ctrl-C (or SIGTERM) stops them all. Standard library only: it runs before anything else.

    supervise.py ports --host 127.0.0.1 --web 8000
        prints the inference port (FTSTUDIO_INFERENCE_PORT, else the web port + 1); exits 1 with one sentence
        when either port is taken.
    supervise.py run --child NAME COMMAND [--child NAME COMMAND ...]
        COMMAND is split like a shell would (no shell features).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

MAX_BACKOFF_S = 60.0
STEADY_S = 60.0  # a child that ran this long starts again after the shortest back-off


def say(line: str) -> None:
    print(f"[supervisor] {line}", flush=True)


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(host: str, web: int, inference: int, inference_chosen: bool) -> str:
    """One sentence naming the port that is taken, or "" when both are free."""
    another = f"stop it or start this one on another port (e.g. FTSTUDIO_PORT={web + 10})"
    if port_taken(host, web):
        return f"Port {web} (for the web server) is already taken, perhaps by another Fine-Tuning Studio: {another}."
    if port_taken("127.0.0.1", inference):
        if inference_chosen:
            return f"Port {inference} (for the inference process) is taken: set FTSTUDIO_INFERENCE_PORT to a free one."
        return (
            f"Port {inference} (for the inference process, the web port + 1) is already taken, perhaps by another "
            f"Fine-Tuning Studio: {another}."
        )
    return ""


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


class Child:
    def __init__(self, name: str, command: str) -> None:
        self.name, self.argv = name, shlex.split(command)
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.backoff = 0.0
        self.restart_at: float | None = None
        self.restarts = 0

    def start(self) -> None:
        # Its own process group: a Ctrl-C reaches the supervisor (via run.sh), which stops the children in order,
        # instead of killing them under it (which would look like a crash to restart).
        self.process = subprocess.Popen(self.argv, process_group=0)
        self.started, self.restart_at = time.monotonic(), None
        say(f"started {self.name} (pid {self.process.pid})")


def end_group(pgid: int) -> None:
    """Kill what is left of a child's process group (a worker's beat process outlives a SIGKILLed worker)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor:
    def __init__(self, children: list[Child], min_backoff: float = 1.0) -> None:
        self.children, self.min_backoff = children, min_backoff
        self.stopping = False

    def stop(self, signum=None, frame=None) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        for child in self.children:
            child.start()
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                code = child.process.poll() if child.restart_at is None else None
                if code is not None:
                    end_group(child.process.pid)
                    ran = now - child.started
                    child.backoff = (
                        self.min_backoff
                        if ran >= STEADY_S
                        else min(MAX_BACKOFF_S, max(self.min_backoff, child.backoff * 2))
                    )
                    child.restart_at, child.restarts = now + child.backoff, child.restarts + 1
                    say(
                        f"{child.name} (pid {child.process.pid}) {exit_reason(code)} after {ran:.0f} s; starting it "
                        f"again in {child.backoff:g} s (restart {child.restarts}); the others keep running"
                    )
                elif child.restart_at is not None and now >= child.restart_at and not self.stopping:
                    child.start()
            time.sleep(0.1)
        return self.shutdown()

    def shutdown(self, grace_s: float = 20.0) -> int:
        say("stopping " + ", ".join(child.name for child in self.children))
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in self.children:
            if child.process:
                end_group(child.process.pid)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ports = commands.add_parser("ports")
    ports.add_argument("--host", default="127.0.0.1")
    ports.add_argument("--web", type=int, required=True)
    run = commands.add_parser("run")
    run.add_argument("--child", nargs=2, action="append", metavar=("NAME", "COMMAND"), required=True)
    run.add_argument("--min-backoff", type=float, default=1.0, help="seconds before the first restart (doubles)")
    args = parser.parse_args(argv)
    if args.command == "ports":
        chosen = os.environ.get("FTSTUDIO_INFERENCE_PORT", "")
        inference = int(chosen) if chosen.isdigit() else args.web + 1
        problem = check_ports(args.host, args.web, inference, bool(chosen))
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print(inference)
        return 0
    return Supervisor([Child(n, c) for n, c in args.child], args.min_backoff).run()


if __name__ == "__main__":
    sys.exit(main())

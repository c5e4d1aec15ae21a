"""One run on several devices (DDP), and on several nodes (torchrun's c10d rendezvous). No Django here.

`run_distributed` is what the Celery task calls instead of `worker.train.train` when a run asks for more than one
device or node. It writes the job (the `TrainConfig`, the conversations) into a folder and starts

    python -m torch.distributed.run --nproc_per_node N [--standalone | --nnodes M --rdzv_backend c10d
        --rdzv_endpoint HOST:PORT --rdzv_id ID] -m worker.train_ddp JOB_DIR/job.json

Each rank (`worker/train_ddp.py`) calls the same `train()` with the same config, except the batch: the run's
``batch_size`` is the global batch per optimizer step before accumulation, split evenly over the ranks
(``batch_size / (devices × nodes)`` per device, the same ``grad_accum``), so a run gives the same global batch on
one process or on several. Backend ``nccl`` on CUDA, ``gloo`` on CPU.

The two processes talk through files in the job folder (the node's own disk; each node has its own folder):

- ``events.jsonl``: local rank 0 writes one JSON object a line (progress, metric, log, phase, checkpoint, result);
  this process reads them and calls the caller's `Hooks` with them, so the run's row, metrics, log tail and the
  artifact store hear exactly what the in-process path tells them. After a checkpoint event the rank waits until
  this process has stored it (``acks/<seq>``), as the in-process path waits for ``on_checkpoint``.
- ``control``: this process writes ``cancel`` or ``pause`` when its hooks ask for it; every rank reads its node's
  file at each check and the ranks all-reduce the flags, so all of them stop at the same step (a pause with a
  checkpoint of that step) whichever node was asked.
- ``error-rank<R>.txt``: a rank that raises writes its traceback there before dying; torchrun then stops the others
  and exits non-zero, and `run_distributed` raises `DistributedError` with that rank's message and log tail.

On several nodes each node's local rank 0 saves the checkpoints and the adapter into its own output folder
(``save_on_each_node``), because the rendezvous numbers the nodes by address, not by who hosts it. The node that
hosts the rendezvous reports and stores; the others only train (their hooks may still cancel or pause the run).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.train_config import Hooks, Metric, Progress, TrainConfig, TrainResult

POLL_SECONDS = 0.2
CHECK_SECONDS = 1.0  # how often the caller's should_cancel / should_pause (a database read) is asked
RDZV_TIMEOUT_SECONDS = 300  # how long the host waits for the other nodes to join


class DistributedError(RuntimeError):
    """The distributed launch failed: the message says which rank and why (the tail of its error)."""


@dataclass
class Launch:
    """Where and how wide a distributed run trains. ``nodes`` > 1 needs ``endpoint`` (HOST:PORT of the rendezvous,
    on the host node) and ``rdzv_id`` (the same on every node, e.g. ``run-12``)."""

    devices: int = 1  # processes per node (GPUs on a GPU node; CPU processes with gloo on a CPU node)
    nodes: int = 1
    endpoint: str = ""
    rdzv_id: str = ""
    host: bool = True  # this node reports events to its caller (the rendezvous host)

    @property
    def world_size(self) -> int:
        return self.devices * self.nodes

    def check(self) -> None:
        if self.devices < 1 or self.nodes < 1:
            raise ValueError(f"devices and nodes must be at least 1, got {self.devices} and {self.nodes}.")
        if self.nodes > 1 and (not self.endpoint or ":" not in self.endpoint or not self.rdzv_id):
            raise ValueError("A launch on several nodes needs a rendezvous endpoint HOST:PORT and an id.")


def per_device_batch(batch_size: int, world_size: int) -> int:
    """The batch of one rank: the global batch split evenly (ValueError when it does not divide)."""
    if world_size < 1 or batch_size % world_size:
        raise ValueError(
            f"Batch size {batch_size} does not split evenly over {world_size} devices: choose a multiple of "
            f"{world_size} so each device gets the same share of the global batch."
        )
    return batch_size // world_size


def check_devices(config: TrainConfig, launch: Launch) -> None:
    """A GPU node needs one GPU per process (ValueError saying so); a CPU launch runs its processes on the cores."""
    import torch

    if config.device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() < launch.devices:
        raise ValueError(
            f"The run asks for {launch.devices} devices per node but this node has {torch.cuda.device_count()} GPUs."
        )


def node_address() -> str:
    """This node's address for the rendezvous: FTSTUDIO_NODE_ADDRESS, else its hostname."""
    return os.environ.get("FTSTUDIO_NODE_ADDRESS") or socket.gethostname()


def free_port(host: str = "") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def torchrun_command(launch: Launch, job_file: Path) -> list[str]:
    """The torchrun command line for this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launch.devices)]
    if launch.nodes == 1:
        cmd += ["--standalone"]
    else:
        host = launch.endpoint.rsplit(":", 1)[0]
        cmd += [
            "--nnodes",
            str(launch.nodes),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            launch.endpoint,
            "--rdzv_id",
            launch.rdzv_id,
            "--rdzv_conf",
            f"is_host={int(launch.host)},join_timeout={RDZV_TIMEOUT_SECONDS}",
            "--local_addr",
            host if launch.host else node_address(),
        ]
    cmd += ["--max_restarts", "0", "-m", "worker.train_ddp", str(job_file)]
    return cmd


def write_job(job_dir: Path, config: TrainConfig, launch: Launch, train_conversations, val_conversations) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in [job_dir / "events.jsonl", job_dir / "control", *job_dir.glob("error-rank*.txt")]:
        stale.unlink(missing_ok=True)
    for ack in (job_dir / "acks").glob("*"):
        ack.unlink(missing_ok=True)
    (job_dir / "acks").mkdir(exist_ok=True)
    rank_config = config.to_dict() | {"batch_size": per_device_batch(config.batch_size, launch.world_size)}
    job = {
        "config": rank_config,
        "train": train_conversations,
        "val": val_conversations,
        "host": launch.host,
        "launcher_pid": os.getpid(),  # the ranks stop (as cancelled) when their launcher is gone
    }
    job_file = job_dir / "job.json"
    job_file.write_text(json.dumps(job))
    return job_file


class EventReader:
    """Reads the events rank 0 appends, whole lines only, and calls the hooks with them."""

    def __init__(self, job_dir: Path, hooks: Hooks) -> None:
        self.path, self.acks, self.hooks = job_dir / "events.jsonl", job_dir / "acks", hooks
        self.offset = 0
        self.result: dict | None = None

    def read(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for line in data[: end + 1].splitlines():
            if line.strip():
                self.dispatch(json.loads(line))

    def dispatch(self, event: dict) -> None:
        kind, hooks = event.pop("event"), self.hooks
        seq = event.pop("seq", None)
        if kind == "progress":
            hooks.on_progress(Progress(**event))
        elif kind == "metric":
            hooks.on_metric(Metric(**event))
        elif kind == "log":
            hooks.on_log(event["line"])
        elif kind == "phase":
            hooks.on_phase(event["phase"])
        elif kind == "checkpoint":
            hooks.on_checkpoint(event["path"])  # raises when the store stays down: the launch is stopped
            (self.acks / str(seq)).touch()
        elif kind == "result":
            self.result = event


def _stop(process: subprocess.Popen, grace: float = 20) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def failure_message(job_dir: Path, returncode: int) -> str:
    """The first failing rank's error (its last line, then the traceback tail), else torchrun's own log tail."""
    errors = sorted(job_dir.glob("error-rank*.txt"), key=lambda p: p.stat().st_mtime)
    if errors:
        text = errors[0].read_text(errors="replace").strip()
        rank = errors[0].stem.removeprefix("error-rank")
        last = text.splitlines()[-1] if text else "unknown error"
        tail = "\n".join(text.splitlines()[-12:])
        return f"Rank {rank} failed: {last}\n{tail}"
    log = job_dir / "torchrun.log"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
    return f"torchrun exited with status {returncode} (a rank died without an error: killed?)\n{tail}"


def run_distributed(
    config: TrainConfig,
    train_conversations: list[list[dict]],
    val_conversations: list[list[dict]],
    hooks: Hooks | None = None,
    *,
    launch: Launch,
    job_dir: str | Path | None = None,
    env: dict | None = None,
    on_started: Callable[[subprocess.Popen], None] | None = None,
) -> TrainResult:
    """Train (or resume) with torchrun on this node; returns what the host's rank 0 reported. Raises
    `DistributedError` when a rank fails (the run's error), ValueError for a launch that cannot be."""
    hooks = hooks or Hooks()
    launch.check()
    check_devices(config, launch)
    job_dir = Path(job_dir or Path(config.output_dir) / "ddp")
    job_file = write_job(job_dir, config, launch, train_conversations, val_conversations)
    reader = EventReader(job_dir, hooks if launch.host else _quiet(hooks))
    control = job_dir / "control"
    command = torchrun_command(launch, job_file)
    run_env = {
        **os.environ,
        **(env or {}),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, launch.devices)))
        ),
    }
    cwd = Path(__file__).resolve().parent.parent
    with open(job_dir / "torchrun.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    if on_started:
        on_started(process)
    asked, checked = "", 0.0
    try:
        while True:
            done = process.poll() is not None
            reader.read()
            if done:
                break
            if not asked and time.monotonic() - checked >= CHECK_SECONDS:
                checked = time.monotonic()
                asked = "cancel" if hooks.should_cancel() else "pause" if hooks.should_pause() else ""
                if asked:
                    tmp = control.with_suffix(".tmp")
                    tmp.write_text(asked)
                    tmp.replace(control)
            time.sleep(POLL_SECONDS)
    except BaseException:
        _stop(process)
        raise
    if process.returncode != 0:
        raise DistributedError(failure_message(job_dir, process.returncode))
    if reader.result is None:
        if not launch.host:
            return TrainResult(status="succeeded", global_step=0, total_steps=0)
        raise DistributedError(f"torchrun ended without a result from rank 0.\n{failure_message(job_dir, 0)}")
    return result_from(reader.result)


def result_from(event: dict) -> TrainResult:
    history = [Metric(**m) for m in event.pop("history", [])]
    return TrainResult(**event, history=history)


def _quiet(hooks: Hooks) -> Hooks:
    """A node that joins reports nothing (the host does); it still asks whether to cancel or pause."""
    return Hooks(should_cancel=hooks.should_cancel, should_pause=hooks.should_pause)

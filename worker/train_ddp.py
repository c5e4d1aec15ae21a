"""One rank of a distributed run, started by torchrun (see `worker/distributed.py`): ``python -m worker.train_ddp
JOB_DIR/job.json``. Calls the same `worker.train.train` with the same config (its batch already split per device).

Local rank 0 of the host node writes the events its launcher reads (``events.jsonl``); every rank reads its node's
``control`` file at each cancel/pause check and the flags are all-reduced (MAX), so all ranks stop at the same step.
One all-reduce per check: `should_cancel` reduces both flags and the `should_pause` that follows it uses that result.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

ACK_TIMEOUT_SECONDS = 900  # a checkpoint not stored by then: training goes on (the launcher fails the run anyway)


class RankHooks:
    """The `Hooks` of one rank: events to the launcher (the reporting rank only), stop flags synchronised."""

    def __init__(self, job_dir: Path, reporting: bool, launcher_pid: int = 0) -> None:
        self.job_dir, self.reporting, self.seq, self.launcher_pid = job_dir, reporting, 0, launcher_pid
        self.events = open(job_dir / "events.jsonl", "a", encoding="utf-8") if reporting else None  # noqa: SIM115
        self._pause: bool | None = (
            None  # the pause flag reduced with the last cancel check, until a pause check uses it
        )

    def emit(self, event: str, **values) -> int:
        self.seq += 1
        if self.events is not None:
            self.events.write(json.dumps({"event": event, "seq": self.seq, **values}) + "\n")
            self.events.flush()
        return self.seq

    def _flags(self) -> tuple[bool, bool]:
        """(cancel, pause) asked on any node: a collective, so every rank calls it at the same points."""
        import torch
        import torch.distributed as dist

        try:
            asked = (self.job_dir / "control").read_text().strip()
        except OSError:
            asked = ""
        if not self.launcher_alive():
            asked = "cancel"  # the Celery worker that launched this node was killed: nobody hears this run
        flags = torch.tensor([asked == "cancel", asked == "pause"], dtype=torch.int32)
        if dist.is_initialized():
            if dist.get_backend() == "nccl":
                flags = flags.cuda()
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def launcher_alive(self) -> bool:
        if not self.launcher_pid:
            return True
        try:
            os.kill(self.launcher_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def should_cancel(self) -> bool:
        cancel, self._pause = self._flags()
        return cancel

    def should_pause(self) -> bool:
        """The pause flag reduced by the cancel check before it (a check asks cancel, then pause; after a validation
        pass, the flag read at its last batch), else a fresh one.

        Every rank calls these in the same order and sees the same reduced flags, so whether a collective runs here
        is the same decision on every rank (no clock or rank-local state in it): the ranks stay in lock-step."""
        pause, self._pause = self._pause, None
        return self._flags()[1] if pause is None else pause

    def on_progress(self, p) -> None:
        self.emit("progress", **asdict(p))

    def on_metric(self, m) -> None:
        self.emit("metric", **asdict(m))

    def on_log(self, line: str) -> None:
        self.emit("log", line=line)

    def on_phase(self, phase: str) -> None:
        self.emit("phase", phase=phase)

    def on_checkpoint(self, path: str) -> None:
        """Wait until the launcher has stored it (as `train()` waits for the in-process hook)."""
        seq = self.emit("checkpoint", path=path)
        if self.events is None:
            return
        ack, deadline = self.job_dir / "acks" / str(seq), time.monotonic() + ACK_TIMEOUT_SECONDS
        while not ack.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def hooks(self):
        from worker.train_config import Hooks

        return Hooks.of(self)


def main(job_file: str) -> int:
    import torch
    import torch.distributed as dist

    from worker.train import train
    from worker.train_config import TrainConfig

    job_path = Path(job_file)
    job_dir = job_path.parent
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    try:
        job = json.loads(job_path.read_text())
        config = TrainConfig(**{k: (tuple(v) if k == "target_modules" else v) for k, v in job["config"].items()})
        cuda = (config.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank)
        config.device = "cuda" if cuda else "cpu"
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        reporter = RankHooks(
            job_dir, reporting=local_rank == 0 and bool(job.get("host", True)), launcher_pid=job.get("launcher_pid", 0)
        )
        result = train(config, job["train"], job["val"], reporter.hooks())
        if reporter.reporting:
            reporter.emit("result", **asdict(result))
        dist.barrier()
        dist.destroy_process_group()
        return 0
    except BaseException:
        (job_dir / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Executing a run inside the Celery task: claim, train through `worker.train`, report, record how it ended.

The Run row is the truth: a delivery of `runs.train_run` first claims the run in a transaction (status +
owner id + heartbeat + attempts); a second delivery of the same message finds it held by a live worker
(or finished) and does nothing. The claim's heartbeat is renewed by a thread for the task's whole life
(`apps/runs/leases.py`); every write of the task is filtered by its owner id, so a worker whose run was
taken over writes nothing more.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections import deque
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ftstudio.queueing import send_after_commit
from worker.train_config import TrainConfig

from . import artifacts, leases, methods
from .launching import RunError
from .models import Run, RunMetric, RunStatus
from .signals import announce
from .tasks import join_distributed_run, train_run

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


# --- execution (inside the Celery task) ---------------------------------------------------------------
def run_dir(run: Run) -> Path:
    return Path(settings.MEDIA_ROOT) / "runs" / str(run.pk)


def claim_run(run_pk: int, owner: str = "") -> Run | None:
    """Claim a run for this delivery, or None when a live worker holds it or it is finished."""
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(pk=run_pk).first()
        if run is None or run.is_finished:
            return None
        now = timezone.now()
        if run.status == RunStatus.RUNNING and not run.owner_gone(now):
            log.info("Run %s is held by live worker %s: duplicate delivery ignored", run_pk, run.worker_id)
            return None
        if run.cancel_requested:
            if run.mark_cancelled():
                announce(run.pk)
            return None
        if run.status == RunStatus.PAUSED:  # a delivery sent before the pause: the run waits for resume_paused_run
            return None
        if run.attempts >= MAX_ATTEMPTS:
            if run.mark_failed(
                f"The worker stopped {run.attempts} times (attempt limit {MAX_ATTEMPTS}); "
                f"last heartbeat {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC. Resume it from its last "
                "checkpoint once the cause is fixed."
                if run.heartbeat_at
                else f"The run did not finish in {MAX_ATTEMPTS} attempts."
            ):
                announce(run.pk)
            return None
        run.mark_running(owner=owner, now=now)
        return run


def execute_run(run_pk: int) -> str:
    """Train a claimed run to the end (or resume it); returns the final status, "skipped", "released" (the worker
    is shutting down: stopped at a checkpoint and re-queued) or "lost" (another worker took it over)."""
    owner = leases.new_owner_id()
    run = claim_run(run_pk, owner=owner)
    if run is None:
        return "skipped"
    with leases.Lease(Run, run.pk, owner) as lease:
        return _train_claimed(run, lease)


class RunReporter:
    """What training tells the run's row, written through the lease's owner-filtered rows: a worker whose run was
    taken over writes nothing (and marks its lease lost)."""

    def __init__(self, run: Run, lease: leases.Lease) -> None:
        self.run, self.lease, self.rows = run, lease, lease.rows()
        self.lines: deque[str] = deque(run.log_tail.splitlines()[-100:], maxlen=200)

    @property
    def log_tail(self) -> str:
        return "\n".join(self.lines)

    def on_log(self, line: str) -> None:
        self.lines.append(line)

    def on_progress(self, p) -> None:
        values = {
            "heartbeat_at": timezone.now(),
            "step": p.step,
            "total_steps": p.total_steps,
            "log_tail": self.log_tail,
        }
        if p.tokens_per_second:
            values["tokens_per_second"] = p.tokens_per_second
        if not leases.retry_once(lambda: self.rows.update(**values), f"Run {self.run.pk}: progress"):
            self.lease.lost.set()

    def on_metric(self, m) -> None:
        if self.lease.lost.is_set():
            return
        leases.retry_once(lambda: self._write_metric(m), f"Run {self.run.pk}: metric of step {m.step}")

    def _write_metric(self, m) -> None:
        if m.val_loss is not None and m.train_loss is None:  # a validation pass repeated after a resume
            RunMetric.objects.filter(run_id=self.run.pk, step=m.step, train_loss__isnull=True).delete()
        RunMetric.objects.update_or_create(  # a retried write after a lost reply finds its own row
            run_id=self.run.pk,
            step=m.step,
            train_loss__isnull=m.train_loss is None,
            defaults={
                "epoch": m.epoch,
                "train_loss": m.train_loss,
                "val_loss": m.val_loss,
                "learning_rate": m.learning_rate,
                "tokens_per_second": m.tokens_per_second,
                "train_accuracy": m.train_accuracy,
                "val_accuracy": m.val_accuracy,
                "reward_margin": m.reward_margin,
                "preference_accuracy": m.preference_accuracy,
                "rewards": m.rewards,
            },
        )

    def on_checkpoint(self, path: str) -> None:
        artifacts.store_checkpoint(
            self.run.pk, path, self.should_cancel
        )  # raises when the store stays down: the run fails, the folder stays; a cancel stops the wait
        leases.retry_once(
            lambda: self.rows.update(checkpoint_path=path, heartbeat_at=timezone.now()),
            f"Run {self.run.pk}: checkpoint",
        )

    def on_phase(self, phase: str) -> None:
        leases.retry_once(lambda: self.rows.update(phase=phase), f"Run {self.run.pk}: phase")

    pause_asked = False  # read with the cancel flag (asked first at every check)

    def should_cancel(self) -> bool:
        row = leases.retry_once(
            Run.objects.filter(pk=self.run.pk).values_list("worker_id", "cancel_requested", "pause_requested").first,
            f"Run {self.run.pk}: cancel check",
        )
        if row is None or row[0] != self.lease.owner_id:
            self.lease.lost.set()
        self.pause_asked = bool(row and row[2])
        return self.lease.lost.is_set() or bool(row and row[1])

    def should_pause(self) -> bool:
        """The worker is shutting down (warm) or a PM paused the run."""
        return leases.shutdown_requested.is_set() or self.pause_asked

    def hooks(self):
        from worker.train_config import Hooks

        return Hooks.of(self)


def _train(run: Run, reporter: RunReporter, hooks):
    """Resolve the base model (cancel is seen between its stages), then train or resume from the last checkpoint."""
    from worker.train import checkpoint_step, last_checkpoint, train
    from worker.train_config import stop_point

    output_dir = run_dir(run)
    stop_point(hooks)
    config = train_config(run, artifacts.base_model_dir(run.base_model), output_dir)
    train_data, val_data = methods.training_data(run)  # conversations, preference pairs or prompts
    if run.method == "reinforcement":
        hooks.call_model = methods.grader_model_caller(run.project)  # for graders that ask a model
    artifacts.fetch_newest_checkpoint(run.pk, output_dir, reporter.on_log)  # another node's newer checkpoint, if any
    # Metrics past the last checkpoint are logged again after a resume: drop them.
    resume = last_checkpoint(str(output_dir))
    resume_step = checkpoint_step(resume) if resume else 0
    if not reporter.lease.lost.is_set():
        RunMetric.objects.filter(run=run, step__gt=resume_step).delete()
        if resume_step or run.attempts > 1:  # a restart (worker lost, handed back, resumed): an event of its own
            restart = {"attempt": run.attempts, "step": resume_step, "at": timezone.now().isoformat()}
            reporter.rows.update(restarts=[*run.restarts, restart])
    if run.devices * run.nodes > 1:
        return _train_distributed(run, config, train_data, val_data, hooks, resume_step)
    return train(config, train_data, val_data, hooks)


def train_config(run: Run, model_dir: str, output_dir: Path) -> TrainConfig:
    return TrainConfig(
        model_dir=model_dir,
        output_dir=str(output_dir),
        attention=settings.FTSTUDIO_ATTENTION,
        liger_kernels=settings.FTSTUDIO_LIGER_KERNELS,
        **methods.config_fields(run),
        **{k: (tuple(v) if k == "target_modules" else v) for k, v in run.hyperparameters.items()},
    )


def _train_distributed(run: Run, config: TrainConfig, train_data, val_data, hooks, resume_step: int):
    """Train with torchrun on this node's devices; with several nodes this node hosts the rendezvous and asks
    ``nodes - 1`` more workers of the run's queue to join (`runs.join_distributed_run`)."""
    from worker.distributed import Launch, free_port, node_address, run_distributed

    launch = Launch(devices=run.devices, nodes=run.nodes)
    if run.nodes > 1:
        launch.endpoint = f"{node_address()}:{free_port()}"
        launch.rdzv_id = rendezvous_id(run)
        hooks.on_log(f"hosting the rendezvous at {launch.endpoint} for {run.nodes} nodes x {run.devices} device(s)")
        for _ in range(run.nodes - 1):
            send_after_commit(join_distributed_run, run.pk, launch.endpoint, launch.rdzv_id, resume_step)
    else:
        hooks.on_log(f"training on {run.devices} devices (DDP)")
    return run_distributed(config, train_data, val_data, hooks, launch=launch)


def rendezvous_id(run: Run) -> str:
    """The same on every node of one attempt; a new attempt (resume, re-send) meets under a new one."""
    return f"run-{run.pk}-{run.attempts}"


def execute_join(run_pk: int, endpoint: str, rdzv_id: str, resume_step: int = 0) -> str:
    """Take part in a run hosted by another worker (several nodes): train with torchrun against the host's
    rendezvous. This node writes nothing on the run (the host reports); it stops when the run is cancelled, paused
    or no longer running. Its files (the checkpoint it resumes from, its own checkpoints) go to a scratch folder
    under the run's, removed at the end. Returns "skipped", "joined" or "failed"."""
    import socket

    from worker.distributed import Launch, run_distributed
    from worker.train import last_checkpoint
    from worker.train_config import Hooks

    run = Run.objects.select_related("base_model", "dataset_version").filter(pk=run_pk).first()
    if run is None or run.status != RunStatus.RUNNING or rdzv_id != rendezvous_id(run):
        return "skipped"  # finished, or a message of an earlier attempt (its rendezvous is gone)
    output_dir = run_dir(run) / "nodes" / f"{socket.gethostname()}-{leases.new_owner_id().rsplit(':', 1)[-1]}"
    try:
        config = train_config(run, artifacts.base_model_dir(run.base_model), output_dir)
        if resume_step:
            _joiner_checkpoint(run, output_dir, resume_step)
            if not last_checkpoint(str(output_dir)).endswith(f"checkpoint-{resume_step}"):
                raise RunError(f"This node has no checkpoint-{resume_step} of run {run.pk} to resume from.")

        def stopped() -> tuple[bool, bool]:
            row = Run.objects.filter(pk=run_pk).values_list("status", "cancel_requested", "pause_requested").first()
            gone = row is None or row[0] != RunStatus.RUNNING
            return gone or bool(row[1]), bool(row and row[2]) or leases.shutdown_requested.is_set()

        launch = Launch(devices=run.devices, nodes=run.nodes, endpoint=endpoint, rdzv_id=rdzv_id, host=False)
        run_distributed(
            config,
            run.dataset_version.training_conversations("train"),
            run.dataset_version.training_conversations("val"),
            Hooks(should_cancel=lambda: stopped()[0], should_pause=lambda: stopped()[1]),
            launch=launch,
        )
    except Exception:  # the host's torchrun fails too, and the host records the run's failure
        log.exception("Run %s: this node's part failed", run_pk)
        return "failed"
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return "joined"


def _joiner_checkpoint(run: Run, output_dir: Path, step: int) -> None:
    """The checkpoint the host resumes from, on this node: from the artifact store, else from the run's folder
    when this node shares it (one machine, or a shared media volume)."""
    artifacts.fetch_newest_checkpoint(run.pk, output_dir)
    target = output_dir / "checkpoints" / f"checkpoint-{step}"
    source = run_dir(run) / "checkpoints" / f"checkpoint-{step}"
    if not target.is_dir() and source.is_dir():
        shutil.copytree(source, target)


def _train_claimed(run: Run, lease: leases.Lease) -> str:
    from worker.train_config import Stopped

    reporter = RunReporter(run, lease)
    reporter.on_log(f"attempt {run.attempts} started on {timezone.now():%Y-%m-%d %H:%M:%S} UTC")
    try:
        result = _train(run, reporter, reporter.hooks())
        if result.status == "succeeded":
            artifacts.store_adapter(run.pk, result.adapter_dir)
    except Stopped as exc:  # asked before training started (while the base model was being resolved)
        result, reason = None, exc.reason
    except Exception as exc:  # recorded on the run; the user sees the reason and the log tail
        if lease.lost.is_set():
            log.warning("Run %s: failed after another worker took it over (%s); nothing recorded", run.pk, exc)
            return "lost"
        log.exception("Run %s failed", run.pk)
        reporter.lines.extend(traceback.format_exc().splitlines()[-15:])
        error = failure_message(exc)
        if leases.retry_once(
            lambda: run.mark_failed(error, rows=reporter.rows, log_tail=reporter.log_tail, phase=""),
            f"Run {run.pk}: recording the failure",
        ):
            announce(run.pk)
        return RunStatus.FAILED
    else:
        reason = result.status
    return _record_outcome(run, reporter, reason, result)


def _record_outcome(run: Run, reporter: RunReporter, reason: str, result) -> str:
    """Write how training ended (unless another worker owns the run now): handed back, cancelled or succeeded."""
    if reporter.lease.lost.is_set():
        log.warning("Run %s was taken over by another worker: this one stopped without writing", run.pk)
        return "lost"
    if reason == "paused":
        return _release(run, reporter)
    if reason == "cancelled":
        shutil.rmtree(run_dir(run) / "adapter", ignore_errors=True)
        if leases.retry_once(
            lambda: run.mark_cancelled(
                rows=reporter.rows,
                step=result.global_step if result else run.step,
                log_tail=reporter.log_tail,
                adapter_path="",
                phase="",
            ),
            f"Run {run.pk}: recording the cancel",
        ):
            announce(run.pk)
        return RunStatus.CANCELLED
    results = {
        "step": result.global_step,
        "total_steps": result.total_steps,
        "adapter_path": result.adapter_dir,
        "final_train_loss": result.final_train_loss,
        "final_val_loss": result.final_val_loss,
        "log_tail": reporter.log_tail,
    }
    if result.tokens_per_second:
        results["tokens_per_second"] = result.tokens_per_second
    if leases.retry_once(lambda: run.mark_succeeded(rows=reporter.rows, **results), f"Run {run.pk}: recording success"):
        announce(run.pk)
    return RunStatus.SUCCEEDED


def _release(run: Run, reporter: RunReporter) -> str:
    """The worker is shutting down (warm), or the run was paused: hand the run back at its checkpoint without
    spending an attempt, and send it again (shutdown) or leave it paused until ``resume_paused_run``."""
    if Run.objects.filter(pk=run.pk, pause_requested=True).exists():
        reporter.on_log(
            f"paused on {timezone.now():%Y-%m-%d %H:%M:%S} UTC at a checkpoint (this attempt is not counted)"
        )
        return RunStatus.PAUSED if run.mark_paused(rows=reporter.rows, log_tail=reporter.log_tail) else "lost"
    reporter.on_log(
        f"worker shutting down: run handed back on {timezone.now():%Y-%m-%d %H:%M:%S} UTC (this attempt is not counted)"
    )
    if leases.retry_once(
        lambda: run.mark_handed_back(rows=reporter.rows, log_tail=reporter.log_tail), f"Run {run.pk}: handing back"
    ):
        send_after_commit(train_run, run.pk)
    return "released"


def failure_message(exc: BaseException) -> str:
    """What a PM reads on the run page and the CLI prints: a full or read-only disk said plainly."""
    from ftstudio.storage import storage_problem

    problem = storage_problem(exc)
    return problem or f"{type(exc).__name__}: {exc}"

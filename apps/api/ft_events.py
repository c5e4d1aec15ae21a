"""OpenAI's fine-tuning API, what a job tells: its events, checkpoints and metrics (reads only)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime

from apps.runs.models import RunStatus

from .fine_tuning import Invalid
from .models import FineTuningJob
from .selectors import checkpoint_model_id, checkpoint_steps, run_model_id


# --- events, checkpoints, metrics --------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    id: str
    at: datetime
    message: str
    level: str = "info"
    type: str = "message"
    data: dict | None = None


def events(job: FineTuningJob) -> list[Event]:
    """Message and metrics events, newest first: the job's stages and every metric its run logged."""
    tag = job.public_id.removeprefix("ftjob-")
    out = [Event(f"ftevent-{tag}-created", job.created_at, f"Created fine-tuning job: {job.public_id}")]
    if job.training_file:
        out.append(
            Event(
                f"ftevent-{tag}-validating",
                job.created_at,
                f"Validating training file: {job.training_file}"
                + (f" and validation file: {job.validation_file}" if job.validation_file else ""),
            )
        )
    if job.error:
        out.append(Event(f"ftevent-{tag}-invalid", job.finished_at or job.updated_at, job.error["message"], "error"))
    run = job.run
    if run is not None:
        report = job.files_report or {}
        if report:
            parts = [
                f"{name.replace('_', ' ')}: {r['examples']} examples ({r['already_in_project']} already in the project)"
                for name, r in report.items()
                if isinstance(r, dict)
            ]
            out.append(
                Event(
                    f"ftevent-{tag}-validated",
                    run.created_at,
                    "Files validated, moving job to queued state; "
                    + "; ".join(parts)
                    + f"; dataset version v{run.dataset_version.number}"
                    + (f", preference version p{run.preference_version.number}" if run.preference_version_id else ""),
                )
            )
        overlap = (report.get("validation_file") or {}).get("also_in_training_file")
        if overlap:
            out.append(
                Event(
                    f"ftevent-{tag}-overlap",
                    run.created_at,
                    f"{overlap} validation example{'s' if overlap > 1 else ''} also appear in the training file: kept "
                    "in validation, so the validation loss is partly measured on examples the model trains on",
                    "warn",
                )
            )
        if run.started_at:
            out.append(Event(f"ftevent-{tag}-started", run.started_at, "Fine-tuning job started"))
        for number, restart in enumerate(run.restarts or [], 1):
            since = f"step {restart['step']}, its last checkpoint" if restart.get("step") else "the beginning"
            out.append(
                Event(
                    f"ftevent-{tag}-restart{number}",
                    datetime.fromisoformat(restart["at"]),
                    f"Fine-tuning job restarted (attempt {restart.get('attempt')}): training goes on from {since}",
                )
            )
        for m in run.metrics.order_by("step", "id"):
            if m.train_loss is not None:
                out.append(
                    Event(
                        f"ftevent-{tag}-m{m.step}",  # by step: the same id when a resumed run logs it again
                        m.created_at,
                        f"Step {m.step}/{run.total_steps}: training loss={m.train_loss:.4f}",
                        type="metrics",
                        data={
                            "step": m.step,
                            "train_loss": m.train_loss,
                            "train_mean_token_accuracy": m.train_accuracy,
                            "total_steps": run.total_steps,
                            "learning_rate": m.learning_rate,
                            "epoch": m.epoch,
                        },
                    )
                )
            if m.val_loss is not None:
                out.append(
                    Event(
                        f"ftevent-{tag}-v{m.step}",
                        m.created_at,
                        f"Step {m.step}/{run.total_steps}: validation loss={m.val_loss:.4f}",
                        type="metrics",
                        data={
                            "step": m.step,
                            "valid_loss": m.val_loss,
                            "valid_mean_token_accuracy": m.val_accuracy,
                            "total_steps": run.total_steps,
                        },
                    )
                )
        end = run.finished_at or run.updated_at
        if run.status == RunStatus.SUCCEEDED:
            out.append(Event(f"ftevent-{tag}-model", end, f"New fine-tuned model created: {run_model_id(run)}"))
            out.append(Event(f"ftevent-{tag}-succeeded", end, "The job has successfully completed"))
        elif run.status == RunStatus.FAILED:
            out.append(Event(f"ftevent-{tag}-failed", end, f"Fine-tuning job failed: {run.error}", "error"))
        elif run.status == RunStatus.CANCELLED:
            out.append(Event(f"ftevent-{tag}-cancelled", end, "Fine-tuning job cancelled"))
        elif run.status == RunStatus.PAUSED:
            out.append(
                Event(
                    f"ftevent-{tag}-paused-{int(end.timestamp())}",
                    end,
                    f"Fine-tuning job paused at step {run.step}; resume it to go on from there",
                )
            )
    ordered = sorted(enumerate(out), key=lambda pair: (pair[1].at, pair[0]), reverse=True)
    return [e for _, e in ordered]


def slice_after(items: list, after: str, limit: int) -> tuple[list, bool]:
    start = 0
    if after:
        ids = [item.id if hasattr(item, "id") else item["id"] for item in items]
        if after in ids:
            start = ids.index(after) + 1
        elif (start := _metrics_cursor(items, after)) is None:
            raise Invalid(f"after={after!r} is not an id from this list.", param="after")
    return items[start : start + limit], len(items) > start + limit


def _metrics_cursor(items: list, after: str) -> int | None:
    """Where an event id the client saw stands when it is not in the list now: a metrics event
    (``ftevent-<job>-m<step>``) of a step a resumed run has not logged again yet (the older steps and stages follow
    it), or the pause of a job resumed since (``ftevent-<job>-paused-<time>``: the older events follow it)."""
    if not items or not isinstance(items[-1], Event) or not items[-1].id.endswith("-created"):
        return None  # not a job's events (the oldest of which is its creation)
    match = re.fullmatch(re.escape(items[-1].id.removesuffix("created")) + r"(?:[mv](\d+)|paused-(\d+))", after)
    if match is None:
        return None
    step, paused = match.groups()
    for index, event in enumerate(items):
        if paused is not None and event.at.timestamp() < int(paused):
            return index
        if step is not None and (
            (event.type == "metrics" and event.data["step"] < int(step))
            or event.id.endswith(("-started", "-validated", "-validating", "-created"))
        ):
            return index
    return len(items)


def checkpoints(job: FineTuningJob) -> list[dict]:
    """A succeeded job's checkpoints at its last three epoch ends, newest first, each a model id the inference process
    serves (the final one is the job's ``fine_tuned_model``). Metrics are those logged at the checkpoint's step;
    one not logged is left out (OpenAI's schema types them as numbers)."""
    run = job.run
    if run is None or run.status != RunStatus.SUCCEEDED:
        return []
    tag = job.public_id.removeprefix("ftjob-")
    logged: dict[int, dict] = {}
    saved: dict[int, datetime] = {}
    for m in run.metrics.filter(step__in=checkpoint_steps(run)).order_by("id"):
        saved.setdefault(m.step, m.created_at)
        row = logged.setdefault(m.step, {"step": m.step})
        if m.train_loss is not None:
            row.update(train_loss=m.train_loss, train_mean_token_accuracy=m.train_accuracy)
        if m.val_loss is not None:
            row.update(
                valid_loss=m.val_loss,
                valid_mean_token_accuracy=m.val_accuracy,
                full_valid_loss=m.val_loss,  # the Studio validates on the whole validation split
                full_valid_mean_token_accuracy=m.val_accuracy,
            )
    finished = run.finished_at or run.updated_at
    return [
        {
            "id": f"ftckpt-{tag}-{step}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": int(saved.get(step, finished).timestamp()),
            "fine_tuned_model_checkpoint": checkpoint_model_id(run, step),
            "fine_tuning_job_id": job.public_id,
            "step_number": step,
            "metrics": {k: v for k, v in logged.get(step, {"step": step}).items() if v is not None},
        }
        for step in reversed(checkpoint_steps(run))
    ]


def metrics_csv(job: FineTuningJob) -> str:
    """One row per step, like OpenAI's step_metrics.csv."""
    rows: dict[int, dict] = {}
    if job.run is not None:
        for m in job.run.metrics.order_by("step", "id"):
            row = rows.setdefault(m.step, {"step": m.step})
            if m.train_loss is not None:
                row.update(
                    train_loss=m.train_loss,
                    train_accuracy=m.train_accuracy,
                    learning_rate=m.learning_rate,
                    epoch=m.epoch,
                )
            if m.val_loss is not None:
                row.update(valid_loss=m.val_loss, valid_mean_token_accuracy=m.val_accuracy)
    out = io.StringIO()
    columns = [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
        "learning_rate",
        "epoch",
    ]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue()

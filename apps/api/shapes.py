"""The JSON objects of the fine-tuning API, as OpenAI's SDK reads them: one function per object, nothing else."""

from __future__ import annotations

from apps.runs.models import RunStatus
from apps.runs.selectors import eta_seconds

from . import fine_tuning, ft_events, ft_files
from .selectors import run_model_id


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None


def page(data: list[dict], has_more: bool, *, empty_id: str | None = None) -> dict:
    """OpenAI's list object. ``empty_id``: first_id and last_id of an empty page (OpenAI's ListFilesResponse types
    them as strings, its checkpoint list as nullable)."""
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else empty_id,
        "last_id": data[-1]["id"] if data else empty_id,
    }


def file(found) -> dict:
    return {
        "id": found.public_id,
        "object": "file",
        "bytes": found.bytes,
        "created_at": _ts(found.created_at),
        "filename": found.filename,
        "purpose": found.purpose,
        "status": "processed",  # status_details and expires_at are left out: never set (files do not expire)
    }


def job(j) -> dict:
    run = j.run
    status = fine_tuning.job_status(j)
    succeeded = run is not None and run.status == RunStatus.SUCCEEDED
    eta = eta_seconds(run) if run is not None else None
    finished = j.finished_at if run is None else (run.finished_at if run.is_finished else None)
    error = j.error
    if run is not None and run.status == RunStatus.FAILED:
        error = {"code": "training_failed", "message": run.error or "The run failed.", "param": None}
    chosen = (j.method.get(j.method.get("type", "supervised")) or {}).get("hyperparameters") or {}
    hyperparameters = {k: v for k, v in chosen.items() if k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    return {
        "id": j.public_id,
        "object": "fine_tuning.job",
        "created_at": _ts(j.created_at),
        "finished_at": _ts(finished),
        "status": status,
        "model": j.model,
        "fine_tuned_model": run_model_id(run) if succeeded else None,
        "organization_id": j.project.slug,
        "training_file": j.training_file or None,
        "validation_file": j.validation_file or None,
        "hyperparameters": hyperparameters,
        "method": j.method,
        "trained_tokens": int((run.estimate or {}).get("tokens", 0)) if succeeded else None,
        "estimated_finish": _ts(run.heartbeat_at) + eta if eta is not None and run.heartbeat_at else None,
        "error": error,
        "result_files": [ft_files.results_file_id(j)] if succeeded else [],
        "seed": j.seed,
        "metadata": j.metadata or None,
        "integrations": [],
        "user_provided_suffix": j.suffix or None,
        "ftstudio": {
            "run_id": run.pk if run is not None else None,
            "run_url": run.get_absolute_url() if run is not None else None,
            "step": run.step if run is not None else 0,
            "total_steps": run.total_steps if run is not None else 0,
        },
    }


def event(e: ft_events.Event) -> dict:
    return {
        "id": e.id,
        "object": "fine_tuning.job.event",
        "created_at": _ts(e.at),
        "level": e.level,
        "message": e.message,
        "type": e.type,
        "data": e.data or {},
    }

"""Runs: reads (no writes). What the run pages, the launch estimate and the staff banner show."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Avg
from django.utils import timezone

from apps.fleet.queues import DEFAULT_QUEUE, queue_for
from apps.fleet.selectors import job_silence
from ftstudio.queueing import RECOVERY_PASSES

from . import presentation
from .models import BaseModel, ReaperBeat, Run, RunStatus

CHART_W, CHART_H = 600, 200


def eta_seconds(run: Run) -> int | None:
    """Seconds left, from the pace so far (None until a step has finished)."""
    if (
        run.status != RunStatus.RUNNING
        or not run.step
        or not run.total_steps
        or not run.started_at
        or not run.heartbeat_at
    ):
        return None
    per_step = (run.heartbeat_at - run.started_at).total_seconds() / run.step
    return max(0, int(per_step * (run.total_steps - run.step)))


def _chart_point(step: int, value: float, max_step: int, low: float, span: float) -> str:
    return f"{step / max_step * (CHART_W - 20) + 10:.1f},{CHART_H - 10 - (value - low) / span * (CHART_H - 20):.1f}"


def loss_chart(metrics) -> dict:
    """SVG polylines of train and val loss over steps (server-rendered; htmx swaps it as the run goes)."""
    points = [(m.step, m.train_loss, m.val_loss) for m in metrics]
    values = [v for _, t, val in points for v in (t, val) if v is not None]
    if not values:
        return {"empty": True, "width": CHART_W, "height": CHART_H}
    max_step = max(s for s, _, _ in points) or 1
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    train = [_chart_point(s, t, max_step, low, span) for s, t, _ in points if t is not None]
    val = [_chart_point(s, v, max_step, low, span) for s, _, v in points if v is not None]
    return {
        "empty": False,
        "width": CHART_W,
        "height": CHART_H,
        "low": low,
        "high": high,
        "max_step": max_step,
        "train": " ".join(train),
        "val": " ".join(val),
        "val_points": [p.split(",") for p in val],
    }


COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


def method_series(run: Run, metrics) -> dict[str, list[tuple[int, float]]]:
    """What a preference or grader run charts beside its loss, by name: the reward margin (training) and the
    preference accuracy on held-out pairs; or each grader's mean reward and the weighted total. {} for others."""
    if run.method == "dpo":
        return {
            "reward margin": [
                (m.step, m.reward_margin) for m in metrics if m.train_loss is not None and m.reward_margin is not None
            ],
            "preference accuracy (held-out pairs)": [
                (m.step, m.preference_accuracy) for m in metrics if m.preference_accuracy is not None
            ],
        }
    if run.method == "reinforcement":
        names = [g.get("name", "") for g in run.graders or []] + ["total"]
        return {
            ("all graders, weighted" if name == "total" else name): [
                (m.step, m.rewards[name]) for m in metrics if isinstance((m.rewards or {}).get(name), int | float)
            ]
            for name in names
        }
    return {}


def series_chart(series: dict[str, list[tuple[int, float]]]) -> dict:
    """One SVG polyline per named series over steps, on one shared scale (as `loss_chart`)."""
    values = [v for points in series.values() for _, v in points]
    if not values:
        return {"empty": True, "width": CHART_W, "height": CHART_H}
    max_step = max(s for points in series.values() for s, _ in points) or 1
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    lines = [
        {
            "name": name,
            "colour": COLOURS[i % len(COLOURS)],
            "points": " ".join(_chart_point(s, v, max_step, low, span) for s, v in points),
            "last": points[-1][1] if points else None,
        }
        for i, (name, points) in enumerate(series.items())
    ]
    return {
        "empty": False,
        "width": CHART_W,
        "height": CHART_H,
        "low": low,
        "high": high,
        "max_step": max_step,
        "lines": lines,
    }


def run_progress(run: Run) -> dict:
    """What the run page's live part shows: metrics, the loss chart, percent done, ETA, hyperparameters."""
    metrics = list(run.metrics.all())
    percent = int(100 * run.step / run.total_steps) if run.total_steps else 0
    return {
        "run": run,
        "metrics": metrics,
        "chart": loss_chart(metrics),
        "method_chart": series_chart(method_series(run, metrics)) if run.method != "supervised" else None,
        "percent": min(percent, 100),
        "eta": eta_seconds(run),
        "hyperparameters": presentation.describe(run.hyperparameters),
        "estimate_words": presentation.estimate_words(run.estimate),
        "took": (run.finished_at - run.started_at).total_seconds() if run.finished_at and run.started_at else None,
        "worker_silence": job_silence(run_queue(run.pk), run)
        if run.status in (RunStatus.QUEUED, RunStatus.RUNNING)
        else "",
    }


def project_runs(project):
    return Run.objects.filter(project=project).select_related("base_model", "dataset_version")


def measured_throughput(base_model: BaseModel) -> float | None:
    """Mean tokens/s of this model's finished runs on this deployment (refines the estimate)."""
    value = Run.objects.filter(
        base_model=base_model, status=RunStatus.SUCCEEDED, tokens_per_second__isnull=False
    ).aggregate(v=Avg("tokens_per_second"))["v"]
    return float(value) if value else None


def reaper_overdue(now=None) -> str:
    """For staff: why recovery looks stopped ("" when every app's recovery pass ran recently)."""
    beats = dict(ReaperBeat.objects.filter(name__in=RECOVERY_PASSES).values_list("name", "beat_at"))
    now = now or timezone.now()
    limit = settings.FTSTUDIO_REAPER_ALARM_SECONDS
    if not beats:
        return (
            "No reaper has ever run: runs and evaluations whose worker dies will not resume by themselves. "
            "Start the worker that runs the recovery schedule (the README's deployment section names it)."
        )
    never = [name for name in RECOVERY_PASSES if name not in beats]
    if never:
        return (
            f"The recovery of {', '.join(never)} has never run while the others do: their stranded work is not "
            "resumed. Restart the worker that runs the recovery schedule so it picks up every pass."
        )
    oldest = min(beats, key=beats.get)
    if (now - beats[oldest]).total_seconds() > limit:
        return (
            f"No reaper has run since {beats[oldest]:%Y-%m-%d %H:%M} UTC for {oldest} (over {limit // 60} min): "
            "is the worker that runs the recovery schedule running? Stranded work is not being resumed."
        )
    return ""


def run_queue(run_pk) -> str:
    row = Run.objects.filter(pk=run_pk).values_list("estimate", "base_model__min_gpu_gb").first()
    if row is None:
        return DEFAULT_QUEUE
    estimate, need = row
    # the card the launch estimate chose (apps/runs/launching.plan_memory); older runs: the model's requirement
    return queue_for((estimate or {}).get("gpu_gb") or need or 0)

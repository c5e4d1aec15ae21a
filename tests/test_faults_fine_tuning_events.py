"""Fine-tuning events across a worker death: the event ids a client already saw stay valid after the run resumes
from its last checkpoint (``list_events(after=<old id>)`` keeps working), and the restart is an event of its own.
Driven by the official openai package against a live server; the run trains on the tiny model in-process."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import openai
import pytest
from django.db.models.signals import pre_save
from django.utils import timezone

from apps.api import services as api_services
from apps.api.models import FineTuningJob
from apps.runs.models import Run, RunMetric, RunStatus
from apps.runs.tasks import train_run
from tests import runs_setup
from tests.runs_setup import FAST, support_conversations

tiny_base_model = runs_setup.tiny_base_model
pytestmark = pytest.mark.django_db(transaction=True)


class WorkerDied(BaseException):
    """The worker process is gone (kill -9): nothing of the task's own error handling runs."""


def test_event_ids_survive_a_worker_death_and_the_restart_is_an_event(live_server, team, tiny_base_model):
    raw = api_services.create_api_key(project=team.project, user=team.pm, name="pm")[1]
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=raw, max_retries=0, timeout=60)
    data = "".join(json.dumps({"messages": c}) + "\n" for c in support_conversations(12)).encode()
    training = client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id, suffix="events")
    run = FineTuningJob.objects.get(public_id=job.id).run
    Run.objects.filter(pk=run.pk).update(hyperparameters={**run.hyperparameters, **FAST})  # 4 steps, save at 2

    def die_before_step_4_is_written(sender, instance, **kwargs):  # step 3's row is committed by then
        if instance.train_loss is not None and instance.step == 4:
            raise WorkerDied

    pre_save.connect(die_before_step_4_is_written, sender=RunMetric, dispatch_uid="die-at-4")
    try:
        with pytest.raises(WorkerDied):
            train_run(run.pk)
    finally:
        pre_save.disconnect(dispatch_uid="die-at-4", sender=RunMetric)
    seen = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    newest = seen[0]
    assert newest.type == "metrics" and newest.data["step"] == 3  # the client has seen step 3 (after checkpoint-2)

    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))  # the reaper's view
    assert train_run(run.pk) == RunStatus.SUCCEEDED  # resumes from checkpoint-2: step 3 is trained again
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"

    now = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert {e.id for e in seen} <= {e.id for e in now}  # every id the client saw is still there
    older = client.fine_tuning.jobs.list_events(job.id, after=newest.id, limit=100).data
    assert [e.id for e in older] == [e.id for e in now][[e.id for e in now].index(newest.id) + 1 :]
    restarts = [e for e in now if "restarted" in e.message]
    assert len(restarts) == 1 and "attempt 2" in restarts[0].message and "step 2" in restarts[0].message
    steps = [e.data["step"] for e in now if e.type == "metrics" and "train_loss" in e.data]
    assert steps == [4, 3, 2, 1]  # newest first, step 3 once (logged again after the restart)


def test_a_metrics_id_dropped_by_a_resume_still_pages_from_its_step():
    """While the resumed run has not logged a step again, its id still works as a cursor: older steps follow."""
    from apps.api import fine_tuning, ft_events

    events = [
        ft_events.Event("ftevent-x-m2", timezone.now(), "Step 2", type="metrics", data={"step": 2}),
        ft_events.Event("ftevent-x-restart1", timezone.now(), "restarted"),
        ft_events.Event("ftevent-x-m1", timezone.now(), "Step 1", type="metrics", data={"step": 1}),
        ft_events.Event("ftevent-x-started", timezone.now(), "started"),
        ft_events.Event("ftevent-x-created", timezone.now(), "created"),
    ]
    page, more = ft_events.slice_after(events, "ftevent-x-m3", 10)
    assert [e.id for e in page] == [
        "ftevent-x-m2",
        "ftevent-x-restart1",
        "ftevent-x-m1",
        "ftevent-x-started",
        "ftevent-x-created",
    ]
    with pytest.raises(fine_tuning.Invalid):
        ft_events.slice_after(events, "ftevent-y-m3", 10)
    paused_before_m2 = int(events[0].at.timestamp())  # the pause of a job resumed since: its event is gone
    page, _ = ft_events.slice_after(events, f"ftevent-x-paused-{paused_before_m2 + 1}", 10)
    assert page[0].id == "ftevent-x-m2"

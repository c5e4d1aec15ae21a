"""The Studio's own /v1/ as the LLM judge's endpoint: the judge's official openai client reaches a registered
model through a project key. The tiny random model writes no verdict, so the pair stays unjudged with the
reason (never counted as a tie or a win), and the key's usage shows the two calls (both orders)."""

from __future__ import annotations

import pytest

from apps.api import services as api_services
from apps.api.models import ApiKey
from tests import api_setup, runs_setup
from worker.judge import JudgeConfig, judge_pair, rubric_text

inference = api_setup.inference
tiny_base_model = runs_setup.tiny_base_model

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_studios_own_v1_endpoint_serves_as_the_judge(settings, live_server, inference, team, tiny_base_model):
    settings.FTSTUDIO_INFERENCE_URL = inference.url
    key, raw = api_services.create_api_key(project=team.project, user=team.pm, name="judge")
    config = JudgeConfig(
        f"{live_server.url}/v1", tiny_base_model.name, raw, timeout_s=120, max_tokens=8, allow_private=True
    )
    rubric = rubric_text(
        [
            {
                "name": "Greets by name",
                "description": "opens with Hi <name>,",
                "levels": [("Pass", "greets"), ("Fail", "does not")],
            }
        ]
    )
    verdict = judge_pair(config, rubric=rubric, input_text="Customer: Cy", first="Hi Cy,\nOk.", second="Hello.")
    assert verdict.winner is None and verdict.error  # no verdict in a random model's words: unjudged, with why
    used = ApiKey.objects.get(pk=key.pk)
    assert used.requests >= 1 and used.completion_tokens >= 1 and used.last_used_at is not None

"""Building blocks for evaluation tests: a frozen version, the tiny model as a registered base model,
a succeeded run with a LoRA adapter, a rubric, and a generated evaluation."""

from __future__ import annotations

from pathlib import Path

from apps.evaluations import generation, selectors, services
from apps.evaluations.models import Scale
from apps.runs.models import BaseModel, Run, RunStatus
from tests.factories import conversation, make_dataset_version

MODEL_NAME = "tiny-secret-llama"
RUN_NAME = "zebra-run"


def register_tiny_model(settings, tiny_model_dir: Path) -> BaseModel:
    settings.FTSTUDIO_MODEL_ROOTS = [*settings.FTSTUDIO_MODEL_ROOTS, Path(tiny_model_dir).parent]
    return BaseModel.objects.get_or_create(
        name=MODEL_NAME,
        defaults={
            "display_name": "Tiny Secret Llama",
            "source_kind": "local",
            "source": str(tiny_model_dir),
            "architecture": "LlamaForCausalLM",
            "context_length": 512,
            "has_chat_template": True,
        },
    )[0]


def save_adapter(model_dir: Path, target: Path) -> Path:
    """A LoRA adapter with random (non-zero) weights, as a finished run would leave one (no training needed)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (target / "adapter_config.json").exists():
        return target
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(target)
    return target


def make_version(project, test_count: int = 3):
    return make_dataset_version(
        project,
        {
            "train": [
                conversation(f"Train question {i}", f"Hi Ann,\nTrain answer {i}.\nWarm regards") for i in range(2)
            ],
            "val": [conversation("Val question", "Hi Bo,\nVal answer.\nWarm regards")],
            "test": [
                conversation(f"Where is order #{100 + i}?", f"Hi Cy,\nOrder #{100 + i} ships today.\nWarm regards")
                for i in range(test_count)
            ],
        },
    )


def make_rubric(project, user=None):
    return services.create_rubric(
        project=project,
        name="House style",
        user=user,
        criteria=[
            services.CriterionSpec(
                "Tone", "Greets by name, friendly", Scale.LIKERT5, {"5": "perfect house style", "1": "off-style"}
            ),
            services.CriterionSpec(
                "Correct", "Uses only the given facts", Scale.PASS_FAIL, {"1": "correct", "0": "wrong"}
            ),
        ],
    )


def make_run(project, version, base_model, adapter_dir: Path, val_loss: float = 1.23) -> Run:
    return Run.objects.create(
        project=project,
        name=RUN_NAME,
        dataset_version=version,
        base_model=base_model,
        status=RunStatus.SUCCEEDED,
        adapter_path=str(adapter_dir),
        final_val_loss=val_loss,
    )


def fake_outputs(evaluation) -> None:
    """Outputs as the task would store them, without running a model (review tests need outputs, not a model)."""
    from apps.evaluations.models import EvaluationStatus, Generation

    Generation.objects.bulk_create(
        [
            Generation(
                candidate=c,
                item=item,
                output=f"Hi Cy, answer {item.position} from candidate {c.position}.",
                prompt_tokens=20,
                output_tokens=8,
                latency_ms=5.0,
                similarity=0.5,
            )
            for c in evaluation.candidates.all()
            for item in selectors.eval_items(evaluation)
        ]
    )
    generation.build_comparisons(evaluation)
    type(evaluation).objects.filter(pk=evaluation.pk).update(status=EvaluationStatus.READY, done=evaluation.total)
    evaluation.refresh_from_db()


def make_evaluation(
    team,
    settings,
    tiny_model_dir,
    adapter_root: Path,
    *,
    generate: bool = True,
    test_count: int = 3,
    reviewers_per_pair: int = 2,
    fake: bool = False,
    **kwargs,
):
    base = register_tiny_model(settings, tiny_model_dir)
    version = make_version(team.project, test_count)
    rubric = make_rubric(team.project)
    adapter = adapter_root / "adapter" if fake else save_adapter(tiny_model_dir, adapter_root / "adapter")
    run = make_run(team.project, version, base, adapter)
    evaluation = services.create_evaluation(
        project=team.project,
        dataset_version=version,
        rubric=rubric,
        base_model=base,
        enqueue=False,
        candidates=[
            services.CandidateSpec("base"),
            services.CandidateSpec("prompt", system_prompt="Be kind.", few_shot=1),
            services.CandidateSpec("run", run_id=run.pk),
        ],
        max_new_tokens=6,
        reviewers_per_pair=reviewers_per_pair,
        user=team.pm,
        **kwargs,
    )
    if fake:
        fake_outputs(evaluation)
    elif generate:
        generation.run_generation(evaluation.pk)
        evaluation.refresh_from_db()
    return evaluation, run


def add_reviewer(team, username: str):
    """Another member with the reviewer role in the team's project."""
    from apps.accounts.models import Role
    from tests.factories import MembershipFactory, UserFactory

    return MembershipFactory(project=team.project, role=Role.REVIEWER, user=UserFactory(username=username)).user


def judge(client, slug: str, evaluation, winner: str = "A", scores: tuple[int, int] = (4, 1), comment: str = ""):
    """Open the next pair as this client's user and submit a verdict; returns the POST response."""
    response = client.post(f"/p/{slug}/evals/review/{evaluation.pk}/next/")
    assert response.status_code == 302, response
    url = response["Location"]
    criteria = list(evaluation.rubric.criteria.all())
    data = {"winner": winner, "comment": comment}
    for c, value in zip(criteria, scores, strict=True):
        data[f"score_A_{c.pk}"] = value
        data[f"score_B_{c.pk}"] = value if c.scale == Scale.PASS_FAIL else max(1, value - 1)
    return client.post(url, data), url

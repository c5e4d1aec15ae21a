"""worker/train_methods.py on the tiny random Llama: DPO and GRPO runs, their checkpoints and resume, the reference
model, missing grader scores. No Django; seconds each."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from worker import train_methods
from worker.graders import GradeResult
from worker.train import Hooks, TrainConfig, train
from worker.train_methods import GraderReward, RewardsMissing


def pair(i: int) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Where is order #{100 + i}?"}],
        "tools": [],
        "preferred": {"role": "assistant", "content": f"Order #{100 + i} ships today.", "tool_calls": None},
        "non_preferred": {"role": "assistant", "content": "No idea. Ask someone else."},
    }


PAIRS, VAL_PAIRS = [pair(i) for i in range(8)], [pair(50), pair(51)]
PROMPTS = [
    {"messages": [{"role": "user", "content": f"Where is order #{100 + i}?"}], "reference_answer": f"#{100 + i}"}
    for i in range(4)
]
HAS_A = {"type": "string_check", "name": "has_a", "operation": "like"}
HAS_A.update({"input": "{{sample.output_text}}", "reference": "a"})


def dpo(tiny_model_dir, tmp_path, name="run", **kw) -> TrainConfig:
    values = {"max_steps": 4, "batch_size": 4, "save_steps": 2, "learning_rate": 5e-3, "max_seq_length": 96}
    return TrainConfig(
        model_dir=str(tiny_model_dir), output_dir=str(tmp_path / name), method="dpo", seed=7, **{**values, **kw}
    )


def grpo(tiny_model_dir, tmp_path, name="run", **kw) -> TrainConfig:
    values = {"max_steps": 3, "batch_size": 4, "save_steps": 2, "learning_rate": 5e-3, "max_seq_length": 96}
    values["graders"] = [HAS_A]
    return TrainConfig(
        model_dir=str(tiny_model_dir),
        output_dir=str(tmp_path / name),
        method="reinforcement",
        num_generations=4,
        max_completion_length=6,
        seed=7,
        **{**values, **kw},
    )


def lora_b_norm(adapter_dir) -> float:
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return sum(float(w.abs().sum()) for k, w in weights.items() if "lora_B" in k)


def test_a_dpo_run_learns_the_preferred_replies_and_reports_margin_and_held_out_accuracy(tiny_model_dir, tmp_path):
    phases, checkpoints = [], []
    result = train(
        dpo(tiny_model_dir, tmp_path),
        PAIRS,
        VAL_PAIRS,
        Hooks(on_phase=phases.append, on_checkpoint=checkpoints.append),
    )
    assert result.status == "succeeded" and result.global_step == 4
    losses = [m.train_loss for m in result.history if m.train_loss is not None]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3) and losses[-1] < losses[0] - 0.02  # log 2, then falls
    margins = [m.reward_margin for m in result.history if m.train_loss is not None]
    assert margins[0] == pytest.approx(0.0, abs=1e-6) and margins[-1] > 0
    held_out = [m for m in result.history if m.val_loss is not None]
    assert held_out and held_out[-1].preference_accuracy is not None and held_out[-1].step == 4
    assert [c.rsplit("-", 1)[1] for c in checkpoints] == ["2", "4"]
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()
    assert phases[0] == "loading" and "training" in phases and phases[-1] == "saving"


def test_a_dpo_run_killed_after_a_checkpoint_resumes_there_and_runs_each_step_once(tiny_model_dir, tmp_path):
    seen = []
    first = train(
        dpo(tiny_model_dir, tmp_path),
        PAIRS,
        [],
        Hooks(on_progress=lambda p: seen.append(p.step), should_cancel=lambda: bool(seen) and seen[-1] >= 3),
    )
    assert first.status == "cancelled" and first.global_step == 3
    assert not (tmp_path / "run" / "adapter").exists()
    resumed = train(dpo(tiny_model_dir, tmp_path), PAIRS, [])
    assert resumed.resumed_from.endswith("checkpoint-2") and resumed.status == "succeeded"
    assert [m.step for m in resumed.history if m.train_loss is not None] == [3, 4]


def test_a_dpo_run_started_from_an_adapter_is_measured_against_that_adapter(tiny_model_dir, tmp_path):
    """The reference is the starting point: at the first step the policy is the start adapter, so the implicit
    rewards are 0; had the base model been the reference, the start adapter's own lean would show as a margin."""
    start = train(dpo(tiny_model_dir, tmp_path, name="start", learning_rate=2e-2), PAIRS, [])
    assert start.status == "succeeded" and start.history[-1].reward_margin > 0.05
    continued = train(
        dpo(tiny_model_dir, tmp_path, name="next", max_steps=2, start_adapter_dir=start.adapter_dir), PAIRS, []
    )
    assert continued.status == "succeeded"
    assert continued.history[0].reward_margin == pytest.approx(0.0, abs=1e-5)
    saved = load_file(str(tmp_path / "next" / "adapter" / "adapter_model.safetensors"))
    initial = load_file(str(tmp_path / "start" / "adapter" / "adapter_model.safetensors"))
    assert saved.keys() == initial.keys()  # the start adapter trained on, not a fresh one beside it
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)


def test_a_grpo_run_samples_scores_with_each_grader_and_moves_the_adapter(tiny_model_dir, tmp_path):
    checkpoints = []
    result = train(grpo(tiny_model_dir, tmp_path), PROMPTS, [], Hooks(on_checkpoint=checkpoints.append))
    assert result.status == "succeeded" and result.global_step == 3
    logged = [m for m in result.history if m.train_loss is not None]
    assert [m.step for m in logged] == [1, 2, 3]
    assert all(set(m.rewards) == {"has_a", "total"} and 0 <= m.rewards["has_a"] <= 1 for m in logged)
    assert any(0 < m.rewards["has_a"] < 1 for m in logged)  # replies differ in score: a learning signal
    assert [c.rsplit("-", 1)[1] for c in checkpoints] == ["2", "3"]
    assert lora_b_norm(tmp_path / "run" / "adapter") > 0  # LoRA B starts at zero: the adapter was trained


def test_a_grpo_run_killed_after_a_checkpoint_resumes_there(tiny_model_dir, tmp_path):
    seen = []
    first = train(
        grpo(tiny_model_dir, tmp_path, max_steps=4),
        PROMPTS,
        [],
        Hooks(on_progress=lambda p: seen.append(p.step), should_cancel=lambda: bool(seen) and seen[-1] >= 3),
    )
    assert first.status == "cancelled" and first.global_step == 3
    resumed = train(grpo(tiny_model_dir, tmp_path, max_steps=4), PROMPTS, [])
    assert resumed.resumed_from.endswith("checkpoint-2") and resumed.status == "succeeded"
    assert [m.step for m in resumed.history if m.train_loss is not None] == [3, 4]


def test_a_missing_score_is_asked_again_once_then_left_out_not_counted_as_zero(monkeypatch):
    calls = []

    def flaky(spec, sample, item, *, call_model=None):
        calls.append(sample["output_text"])
        if sample["output_text"] == "late":  # the endpoint answers on the second try
            return GradeResult(None, "timed out") if calls.count("late") == 1 else GradeResult(0.5)
        if sample["output_text"] == "never":
            return GradeResult(None, "timed out")
        return GradeResult(1.0)

    monkeypatch.setattr(train_methods, "grade", flaky)
    lines = []
    reward = GraderReward(HAS_A, "has_a", Hooks(on_log=lines.append))
    completions = [[{"role": "assistant", "content": t}] for t in ("ok", "late", "never", "ok")]
    scores = reward(prompts=[[]] * 4, completions=completions, reference_answer=["x"] * 4)
    assert scores == [1.0, 0.5, None, 1.0]  # None: TRL leaves it out of the group's mean (NaN), never a 0
    assert calls.count("late") == 2 and calls.count("never") == 2 and calls.count("ok") == 2
    assert "1 of 4 scores missing (timed out)" in lines[-1]


def test_a_grader_missing_most_of_a_step_fails_the_run_with_the_reason(tiny_model_dir, tmp_path):
    broken = {  # a model grader with no model to ask: every grade is missing, with its reason
        "type": "score_model",
        "name": "judge",
        "model": "judge-model",
        "input": [{"role": "user", "content": "Score {{sample.output_text}}"}],
        "range": [0, 1],
    }
    with pytest.raises(RewardsMissing, match=r"'judge' gave no score for 4 of the 4 replies.*no model endpoint"):
        train(grpo(tiny_model_dir, tmp_path, graders=[broken], max_steps=2), PROMPTS, [])


def test_a_paused_grpo_run_keeps_that_step_in_a_checkpoint_and_the_next_call_goes_on(tiny_model_dir, tmp_path):
    seen = []
    hooks = Hooks(on_progress=lambda p: seen.append(p.step), should_pause=lambda: bool(seen) and seen[-1] >= 1)
    paused = train(grpo(tiny_model_dir, tmp_path, save_steps=10), PROMPTS, [], hooks)
    assert paused.status == "paused" and paused.global_step == 1
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()
    resumed = train(grpo(tiny_model_dir, tmp_path, save_steps=10), PROMPTS, [])
    assert resumed.resumed_from.endswith("checkpoint-1") and resumed.status == "succeeded"
    assert [m.step for m in resumed.history if m.train_loss is not None] == [2, 3]


def test_trl_logs_become_metric_fields_and_a_grader_with_no_score_in_a_step_is_left_out():
    from worker.trainer import method_metrics

    dpo_logs = {"loss": 0.6, "rewards/margins": 0.2, "rewards/accuracies": 1.0, "rewards/chosen": 0.1}
    assert method_metrics(dpo_logs) == {"reward_margin": 0.2, "preference_accuracy": None, "rewards": {}}
    held_out = method_metrics({"eval_loss": 0.5, "eval_rewards/margins": 0.3, "eval_rewards/accuracies": 0.75})
    assert held_out["reward_margin"] == 0.3 and held_out["preference_accuracy"] == 0.75
    grpo_logs = {"loss": 0.0, "rewards/judge/mean": float("nan"), "rewards/exact/mean": 0.5, "reward": 0.5}
    assert method_metrics(grpo_logs)["rewards"] == {"exact": 0.5, "total": 0.5}  # no NaN stored as a number
    assert method_metrics({"loss": 1.0}) == {"reward_margin": None, "preference_accuracy": None, "rewards": {}}

"""worker/distributed.py: one run on several processes (torchrun, gloo on CPU) and on two "nodes" over 127.0.0.1
(c10d rendezvous), on the tiny random Llama. No Django. Each launch starts torchrun and its ranks (~10-25 s on
2 cores), so the tests keep to a few steps."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.test_worker_train import TRAIN, VAL
from worker.distributed import DistributedError, Launch, free_port, per_device_batch, run_distributed, torchrun_command
from worker.train import Hooks, TrainConfig, train
from worker.train_ddp import RankHooks

# Trainer rounds each logged training loss to 4 decimals, so two runs that agree to float precision may differ by
# one unit in the 4th decimal; gloo's all-reduce sums the two ranks' gradients in another order than one process
# sums the batch, which moves the weights by ~1e-7 relative. Hence: logged losses within 2e-4 absolute (losses are
# ~10.8 on the random model: 2e-5 relative), unrounded values (validation loss, adapter weights) within 1e-5.
LOGGED_LOSS_ATOL = 2e-4
RTOL = 1e-5
# The adapter's B matrices start at 0 and grow to ~1e-2 in 4 steps at this learning rate; elements near 0 differ by
# up to ~5e-8 (bench/ddp_loss.py measured 5.2e-8), so they are compared with an absolute 1e-6 (1e-4 of the largest
# values).
ADAPTER_ATOL = 1e-6


def config(tiny_model_dir, out, **kw) -> TrainConfig:
    values = {
        "max_steps": 4,
        "batch_size": 4,
        "save_steps": 2,
        "learning_rate": 5e-3,
        "max_seq_length": 128,
        "seed": 7,
        "lora_dropout": 0.0,  # dropout masks are drawn per rank: with dropout the curves agree only on average
        "device": "cpu",
    }
    return TrainConfig(model_dir=str(tiny_model_dir), output_dir=str(out), **{**values, **kw})


def losses(result) -> list[tuple[int, float]]:
    return [(m.step, m.train_loss) for m in result.history if m.train_loss is not None]


def fault_env(**faults) -> dict:
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faults"), str(REPO)])}
    return env | {f"FTSTUDIO_FAULT_{k.upper()}": str(v) for k, v in faults.items()}


def test_the_global_batch_is_split_evenly_or_refused():
    assert per_device_batch(8, 2) == 4
    assert per_device_batch(8, 8) == 1
    with pytest.raises(ValueError, match="Batch size 6 does not split evenly over 4 devices"):
        per_device_batch(6, 4)


def test_the_command_is_torchrun_standalone_on_one_node_and_c10d_on_several(tmp_path):
    one = torchrun_command(Launch(devices=2), tmp_path / "job.json")
    assert one[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node"] and "--standalone" in one
    assert one[-3:] == ["-m", "worker.train_ddp", str(tmp_path / "job.json")]
    several = torchrun_command(Launch(devices=1, nodes=2, endpoint="10.0.0.5:29400", rdzv_id="run-3"), tmp_path)
    joined = " ".join(several)
    assert "--standalone" not in several
    assert "--nnodes 2 --rdzv_backend c10d --rdzv_endpoint 10.0.0.5:29400 --rdzv_id run-3" in joined
    with pytest.raises(ValueError, match="rendezvous endpoint"):
        Launch(devices=1, nodes=2).check()


def test_two_processes_give_the_loss_curve_of_one_process_with_the_same_global_batch(tiny_model_dir, tmp_path):
    one = train(config(tiny_model_dir, tmp_path / "one"), TRAIN, VAL)
    seen = {"progress": [], "metrics": [], "phases": [], "checkpoints": [], "logs": []}
    hooks = Hooks(
        on_progress=seen["progress"].append,
        on_metric=seen["metrics"].append,
        on_phase=seen["phases"].append,
        on_checkpoint=seen["checkpoints"].append,
        on_log=seen["logs"].append,
    )
    two = run_distributed(config(tiny_model_dir, tmp_path / "two"), TRAIN, VAL, hooks, launch=Launch(devices=2))

    assert two.status == "succeeded" and two.global_step == one.global_step == 4
    assert [s for s, _ in losses(two)] == [s for s, _ in losses(one)] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(losses(one), losses(two), strict=True):
        assert a == pytest.approx(b, abs=LOGGED_LOSS_ATOL)
    assert losses(one)[-1][1] < losses(one)[0][1]  # it learned something: the comparison is not of two constants
    assert two.final_val_loss == pytest.approx(one.final_val_loss, rel=RTOL)
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=RTOL, atol=ADAPTER_ATOL)
    # the launcher's caller heard what the in-process path tells it
    assert [p.step for p in seen["progress"]][-1] == 4
    assert [m.train_loss for m in seen["metrics"] if m.train_loss is not None] == [loss for _, loss in losses(two)]
    assert seen["phases"][:2] == ["loading", "training"] and seen["phases"][-1] == "saving"
    assert [p.rsplit("-", 1)[1] for p in seen["checkpoints"]] == ["2", "4"]
    assert all((tmp_path / "two" / "checkpoints" / p.rsplit("/", 1)[1]).is_dir() for p in seen["checkpoints"])
    assert any("saved adapter" in line for line in seen["logs"])


def test_a_pause_stops_every_rank_at_one_checkpoint_and_a_second_launch_resumes_to_the_last_step(
    tiny_model_dir, tmp_path
):
    steps: list[int] = []
    hooks = Hooks(on_progress=lambda p: steps.append(p.step), should_pause=lambda: bool(steps) and steps[-1] >= 2)
    cfg = config(tiny_model_dir, tmp_path / "run", max_steps=12, save_steps=100)
    first = run_distributed(cfg, TRAIN, VAL, hooks, launch=Launch(devices=2), env=fault_env(training_step_seconds=0.3))
    assert first.status == "paused"
    paused_at = first.global_step
    assert 2 <= paused_at < 12
    assert (tmp_path / "run" / "checkpoints" / f"checkpoint-{paused_at}").is_dir()
    assert not (tmp_path / "run" / "adapter").exists()

    second = run_distributed(cfg, TRAIN, VAL, Hooks(), launch=Launch(devices=2))
    assert second.status == "succeeded" and second.global_step == 12 == second.total_steps
    assert second.resumed_from.endswith(f"checkpoint-{paused_at}")
    assert [s for s, _ in losses(second)][0] == paused_at + 1  # it went on, it did not start again
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.fixture
def one_rank_group():
    """A real gloo process group of one rank in this process, so `RankHooks` runs its all-reduce for real."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield dist
    dist.destroy_process_group()


def test_a_rank_checks_cancel_and_pause_with_one_all_reduce(one_rank_group, tmp_path, monkeypatch):
    reduces = []
    real = one_rank_group.all_reduce
    monkeypatch.setattr(one_rank_group, "all_reduce", lambda *a, **kw: reduces.append(1) or real(*a, **kw))
    rank = RankHooks(tmp_path, reporting=False)

    assert not rank.should_cancel() and not rank.should_pause()  # a step end: cancel, then pause
    assert len(reduces) == 1
    (tmp_path / "control").write_text("pause")
    assert not rank.should_cancel() and rank.should_pause()  # the next check reads the file again
    assert len(reduces) == 2
    assert rank.should_pause()  # a pause check on its own (after a validation pass twice) reduces afresh
    assert len(reduces) == 3
    (tmp_path / "control").write_text("cancel")
    assert rank.should_cancel() and len(reduces) == 4


def test_cancel_stops_every_rank_without_an_adapter(tiny_model_dir, tmp_path):
    steps: list[int] = []
    hooks = Hooks(on_progress=lambda p: steps.append(p.step), should_cancel=lambda: bool(steps) and steps[-1] >= 1)
    cfg = config(tiny_model_dir, tmp_path / "run", max_steps=20, save_steps=100)
    result = run_distributed(cfg, TRAIN, VAL, hooks, launch=Launch(devices=2), env=fault_env(training_step_seconds=0.3))
    assert result.status == "cancelled"
    assert 1 <= result.global_step < 20
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_rank_that_fails_fails_the_launch_with_its_error_and_the_checkpoint_before_it_resumes(
    tiny_model_dir, tmp_path
):
    cfg = config(tiny_model_dir, tmp_path / "run", max_steps=6, save_steps=2)
    with pytest.raises(DistributedError, match=r"Rank 1 failed: RuntimeError: injected fault: rank 1 lost its device"):
        run_distributed(cfg, TRAIN, VAL, Hooks(), launch=Launch(devices=2), env=fault_env(rank_fails="1:3"))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2").is_dir()
    again = run_distributed(cfg, TRAIN, VAL, Hooks(), launch=Launch(devices=2))
    assert again.status == "succeeded" and again.global_step == 6
    assert again.resumed_from.endswith("checkpoint-2")


def test_two_nodes_over_localhost_rendezvous_and_train_one_run(tiny_model_dir, tmp_path):
    """Two torchrun launches (nnodes=2, one process each) meet at the same c10d endpoint: the run trains with a
    world of 2, the host reports and keeps the checkpoints and the adapter."""
    endpoint, results, errors = f"127.0.0.1:{free_port('127.0.0.1')}", {}, []
    cfg = {"max_steps": 4, "save_steps": 2}

    def node(name: str, host: bool) -> None:
        try:
            launch = Launch(devices=1, nodes=2, endpoint=endpoint, rdzv_id="run-test", host=host)
            out = tmp_path / name
            results[name] = run_distributed(config(tiny_model_dir, out, **cfg), TRAIN, VAL, Hooks(), launch=launch)
        except Exception as exc:  # reported below with the node's name
            errors.append(f"{name}: {exc}")

    joiner = threading.Thread(target=node, args=("joiner", False))
    joiner.start()
    node("host", True)
    joiner.join(timeout=300)
    assert not errors, errors
    host = results["host"]
    assert host.status == "succeeded" and host.global_step == 4
    assert (tmp_path / "host" / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "host" / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    one = train(config(tiny_model_dir, tmp_path / "one", **cfg), TRAIN, VAL)  # the same global batch on one process
    for (_, a), (_, b) in zip(losses(one), losses(host), strict=True):
        assert a == pytest.approx(b, abs=LOGGED_LOSS_ATOL)

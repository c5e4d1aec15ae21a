"""The Studio's figures on a CUDA machine, in one command with no network (`make gpu-check`).

With random-weight models of real shapes (bench/model_configs: Qwen2.5 0.5B and 1.5B, Llama 3.1 8B as the card's
memory allows), for a bf16 base and a 4-bit base (QLoRA), each with and without gradient checkpointing:

* training tokens/s (after a warm-up step) and MFU: 6 x parameters (trainable and frozen) x tokens/s over the
  card's published dense bf16 peak (``PEAK_BF16_TFLOPS``);
* the measured peak memory (``torch.cuda.max_memory_allocated`` + the estimate's fixed overhead for the CUDA
  context) beside the estimate (worker/memory.py);

then the first steps' loss of the tiny model in bf16 against fp32, the engine's generation tokens/s against
transformers' batched ``generate`` on the smallest model, and, when ``vllm`` is importable, the hand-off
(worker/vllm.py) to a real vLLM server with a LoRA adapter trained above. One line per figure; ``mfu=`` is last
(the largest model's bf16 run, or the best measured).

On a machine without CUDA (or with ``--dry``) it runs the same code on the tiny model in a few seconds, so the
script cannot rot: tests/test_gpu_check.py runs that dry mode.

    .venv/bin/python scripts/gpu_check.py [--dry] [--steps 6] [--batch-size 8] [--max-seq-length 512]
                                          [--models qwen2.5-0.5b,qwen2.5-1.5b,llama-3.1-8b]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CONFIGS = REPO / "bench" / "model_configs"
MODELS = ("qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.1-8b")
# Published dense (no sparsity) bf16 tensor-core peaks, TFLOPS; the first name found in the device's name wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("RTX 6000 Ada", 364.2),
    ("A6000", 154.8),
    ("A40", 149.7),
)


def card_peak(name: str) -> float | None:
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def mfu(parameters: int, tokens_per_second: float, peak_tflops: float) -> float:
    return 6 * parameters * tokens_per_second / (peak_tflops * 1e12)


def say(line: str) -> None:
    print(line, flush=True)


def tiny_model() -> Path:
    """The tiny test Llama (the shipped model's tokenizer on a 2-layer model), built once: its tokenizer serves
    every random-weight model here, its weights the dry run and the bf16-vs-fp32 loss check."""
    from worker.models import build_tiny_llama

    return build_tiny_llama(REPO / "var" / "test-models" / "tiny-llama")


def write_model(name: str, workdir: Path, tiny: Path) -> Path:
    """A random-weight bf16 model of the config's shape, saved as safetensors with the tiny model's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target = workdir / name
    if (target / "model.safetensors.index.json").exists() or (target / "model.safetensors").exists():
        return target
    config = AutoConfig.from_pretrained(str(CONFIGS / name))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(target), safe_serialization=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    for path in tiny.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, target)
    return target


def train_lines(label: str, result: dict, peak_tflops: float | None) -> tuple[list[str], float | None]:
    rate = result["tokens_per_second"]
    lines = [f"train[{label}] tokens_per_s={rate:.1f}" if rate else f"train[{label}] tokens_per_s=not measured"]
    lines.append(
        f"train[{label}] peak_gb={result['measured_bytes'] / 2**30:.2f} "
        f"estimate_gb={result['estimated_bytes'] / 2**30:.2f} "
        f"ratio={result['measured_bytes'] / result['estimated_bytes']:.2f}"
    )
    share = mfu(result["parameters"], rate, peak_tflops) if rate and peak_tflops else None
    if share is not None:
        lines.append(f"train[{label}] mfu={share:.3f}")
    return lines, share


def loss_precision_lines(tiny: Path, steps: int) -> list[str]:
    """The tiny model's first steps in bf16 and in fp32 on the GPU: the losses should agree closely."""
    from train_throughput import make_conversations

    from worker.train import TrainConfig, train

    losses = {}
    for bf16 in (True, False):
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(
                model_dir=str(tiny), output_dir=out, max_steps=steps, batch_size=8, save_steps=10_000, bf16=bf16
            )
            result = train(config, make_conversations(32), [])
            losses[bf16] = [m.train_loss for m in result.history if m.train_loss is not None]
    diff = max(abs(a - b) for a, b in zip(losses[True], losses[False], strict=True))
    return [
        f"loss bf16={','.join(f'{x:.4f}' for x in losses[True])} fp32={','.join(f'{x:.4f}' for x in losses[False])}",
        f"loss bf16_vs_fp32_max_abs_diff={diff:.4f}",
    ]


def generation_lines(model_dir: Path, device: str, prompts: int, new_tokens: int) -> list[str]:
    """The engine (worker.generate) against transformers' batched generate, same prompts, greedy."""
    import torch
    from train_throughput import make_conversations

    from worker.generate import GenerationConfig, generate
    from worker.models import load_generator, render_prompt

    model, tokenizer = load_generator(str(model_dir), device=device)
    messages = [c[:-1] for c in make_conversations(prompts)]
    config = GenerationConfig(max_new_tokens=new_tokens, batch_size=prompts)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    generate(model, tokenizer, messages[:2], GenerationConfig(max_new_tokens=2))  # warm-up
    sync()
    started = time.perf_counter()
    results = generate(model, tokenizer, messages, config)
    sync()
    engine_rate = sum(r.output_tokens for r in results) / (time.perf_counter() - started)
    texts = [render_prompt(tokenizer, m) for m in messages]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    sync()
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    sync()
    new = out[:, batch["input_ids"].shape[1] :]
    stop = tokenizer.pad_token_id
    hf_tokens = int(sum((row != stop).int().cumprod(0).sum() for row in new))  # up to the first end/pad token
    hf_rate = hf_tokens / (time.perf_counter() - started)
    del model
    gc.collect()
    return [
        f"generate engine_tokens_per_s={engine_rate:.1f}",
        f"generate hf_generate_tokens_per_s={hf_rate:.1f}",
        f"generate engine_vs_hf_ratio={engine_rate / hf_rate:.2f}",
    ]


def vllm_lines(model_dir: Path, adapter_dir: Path) -> list[str]:
    """A real vLLM server on the smallest model, the adapter loaded through the Studio's hand-off, one chat."""
    if importlib.util.find_spec("vllm") is None:
        return ["vllm_handoff=skipped (vllm is not installed)"]
    from worker.vllm import VllmForwarder

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--port", str(port)]
        + ["--enable-lora", "--max-lora-rank", "64", "--gpu-memory-utilization", "0.5", "--served-model-name", "base"],
        env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=5).close()  # noqa: S310 - our own local server
                break
            except OSError:
                if server.poll() is not None:
                    return [f"vllm_handoff=failed (the server exited with {server.returncode})"]
                time.sleep(2)
        else:
            return ["vllm_handoff=failed (the server did not start in 10 minutes)"]
        forwarder = VllmForwarder(url, model="base")
        body = {"messages": [{"role": "user", "content": "Where is my order?"}], "max_tokens": 16}
        started = time.perf_counter()
        with forwarder.open(body, str(adapter_dir)) as response:
            answer = json.load(response)
        tokens = answer.get("usage", {}).get("completion_tokens", 0)
        return [f"vllm_handoff=ok adapter={forwarder.lora_name(str(adapter_dir))} completion_tokens={tokens}"
                f" seconds={time.perf_counter() - started:.2f}"]  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="the tiny model on whatever device there is, fast")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--workdir", default=str(REPO / "var" / "gpu-check"))
    args = parser.parse_args(argv)

    import torch
    from memory_peak import measure

    from worker.memory import Shape, estimate_memory

    lines: list[str] = []

    def emit(*new: str) -> None:
        for line in new:
            lines.append(line)
            say(line)

    cuda = torch.cuda.is_available() and not args.dry
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tiny = tiny_model()
    if not cuda:
        emit("device=cpu (dry run: the tiny model, no MFU)")
        adapter = workdir / "tiny-adapter"
        for checkpointing in (False, True):
            label = f"tiny lora ckpt={'on' if checkpointing else 'off'}"
            result = measure(str(tiny), steps=2, batch_size=4, max_seq_length=128, checkpointing=checkpointing,
                             examples=8, adapter_out=str(adapter))  # fmt: skip
            emit(*train_lines(label, result, None)[0])
        emit("train[tiny qlora] skipped (a 4-bit base needs CUDA)")
        emit(*generation_lines(tiny, "cpu", prompts=4, new_tokens=8))
        emit("vllm_handoff=skipped (dry run: no GPU)")
        emit("mfu=n/a (no CUDA: dry run)")
        return lines

    name = torch.cuda.get_device_name()
    peak = card_peak(name)
    free, total = torch.cuda.mem_get_info()
    emit(f"device={name} memory_gb={total / 2**30:.1f} bf16_peak_tflops={peak or 'unknown card'}")
    shares: dict[str, float] = {}
    adapter = workdir / "adapter-qwen2.5-0.5b"
    for model in [m for m in args.models.split(",") if m]:
        shape = Shape.from_config(json.loads((CONFIGS / model / "config.json").read_text()))
        if shape.parameters() * 2 > 0.8 * free:  # its bf16 copy is written from the GPU
            emit(f"train[{model}] skipped (its bf16 weights do not fit this card's free memory)")
            continue
        model_dir = write_model(model, workdir, tiny)
        for mode in ("lora", "qlora"):
            if mode == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
                emit(f"train[{model} qlora] skipped (bitsandbytes is not installed: pip install '.[gpu]')")
                continue
            for checkpointing in (False, True):
                label = f"{model} {mode} ckpt={'on' if checkpointing else 'off'}"
                need = estimate_memory(shape, mode=mode, batch_tokens=args.batch_size * args.max_seq_length,
                                       gradient_checkpointing=checkpointing)  # fmt: skip
                if need.total > free:
                    emit(f"train[{label}] skipped (needs about {need.gb:.1f} GB, the card has {free / 2**30:.1f})")
                    continue
                try:
                    keep = str(adapter) if model == MODELS[0] and mode == "lora" else ""  # for the vLLM hand-off
                    result = measure(str(model_dir), steps=args.steps, batch_size=args.batch_size,
                                     max_seq_length=args.max_seq_length, mode=mode, checkpointing=checkpointing,
                                     adapter_out=keep)  # fmt: skip
                except torch.OutOfMemoryError:
                    emit(f"train[{label}] out of memory (estimate {need.gb:.1f} GB)")
                    gc.collect()
                    torch.cuda.empty_cache()
                    continue
                new, share = train_lines(label, result, peak)
                emit(*new)
                if share is not None:
                    shares[label] = share
    emit(*loss_precision_lines(tiny, steps=5))
    smallest = workdir / MODELS[0]
    if smallest.exists():
        emit(*generation_lines(smallest, "cuda", prompts=32, new_tokens=64))
        emit(*(vllm_lines(smallest, adapter) if adapter.exists() else ["vllm_handoff=skipped (no adapter trained)"]))
    # the headline: the largest model's bf16 run without checkpointing, else the best run measured
    plain = [label for label in shares if label.endswith("lora ckpt=off") and " qlora " not in label]
    headline = plain[-1] if plain else max(shares, key=shares.get, default="")
    emit(f"mfu={shares[headline]:.3f} ({headline}, {name})" if headline else f"mfu=not measured ({name})")
    return lines


if __name__ == "__main__":
    main()

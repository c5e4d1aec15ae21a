"""Exports of the shipped SmolLM2-135M-Instruct + a LoRA adapter: the merged folder and the f16 GGUF (read back by
transformers' GGUF loader) write exactly what base + adapter writes through peft on a held-out demo input."""

from __future__ import annotations

import pytest

from tests.export_setup import greedy, held_out_messages, make_adapter, prompt_ids

pytestmark = pytest.mark.slow

PUBLIC_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_merged_and_f16_gguf_of_the_shipped_model_answer_like_base_plus_adapter(shipped_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from worker.export import merge_adapter, write_gguf
    from worker.models import load_model, load_tokenizer, shipped_gguf_path

    adapter = make_adapter(shipped_model_dir, tmp_path / "adapter", scale=0.1)
    tokenizer = load_tokenizer(str(shipped_model_dir))
    ids = prompt_ids(tokenizer, held_out_messages())
    peft = PeftModel.from_pretrained(load_model(str(shipped_model_dir), device="cpu"), str(adapter)).eval()
    tuned = greedy(peft, ids, tokens=40)
    with peft.disable_adapter():
        assert greedy(peft, ids, tokens=40) != tuned  # the adapter changes the answer
    del peft

    merge_adapter(shipped_model_dir, adapter, tmp_path / "merged", base_model_id=PUBLIC_ID)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    assert greedy(merged, ids, tokens=40) == tuned
    del merged

    path = write_gguf(
        tmp_path / "merged",
        tmp_path / "tuned-f16.gguf",
        quant="f16",
        base_model_id=PUBLIC_ID,
        source_gguf=shipped_gguf_path(),
    )  # export_gguf = merge_adapter + this + a Modelfile
    gguf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name).eval()
    assert greedy(gguf_model, ids, tokens=40) == tuned, tokenizer.decode(tuned)

"""worker/generate.py on the tiny random Llama: batching changes speed, never the greedy outputs."""

import pytest

from tests.eval_setup import save_adapter
from worker.generate import GenerationConfig, generate
from worker.models import load_generator, render_prompt

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My kettle will not turn on after I moved house, what now?"},
    ],
    [{"role": "user", "content": "Where is my order #12345? It was due on Monday and nothing arrived."}],
    [{"role": "user", "content": "Refund please"}],
    [
        {
            "role": "user",
            "content": "Can I change the delivery address of an order that has already shipped to my old flat?",
        }
    ],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_generator(str(tiny_model_dir), device="cpu")


def test_batched_greedy_outputs_equal_one_at_a_time_in_input_order(tiny):
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=8, batch_size=4)
    batched = generate(model, tokenizer, PROMPTS, config)
    single = [generate(model, tokenizer, [p], GenerationConfig(max_new_tokens=8, batch_size=1))[0] for p in PROMPTS]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.prompt_tokens for r in batched] == [
        len(tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in PROMPTS
    ]
    assert all(0 < r.output_tokens <= 8 and r.latency_ms > 0 for r in batched)


def test_sampling_is_reproducible_for_a_seed(tiny):
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=8, batch_size=8, do_sample=True, temperature=1.5, seed=7)
    first = [r.text for r in generate(model, tokenizer, PROMPTS, config)]
    assert first == [r.text for r in generate(model, tokenizer, PROMPTS, config)]


def test_progress_callback_sees_every_prompt_once(tiny):
    model, tokenizer = tiny
    seen = []
    generate(
        model,
        tokenizer,
        PROMPTS,
        GenerationConfig(max_new_tokens=2, batch_size=2),
        on_batch=lambda idx, res: seen.extend(idx),
    )
    assert sorted(seen) == list(range(len(PROMPTS)))


def test_a_lora_adapter_changes_what_the_model_writes(tiny, tiny_model_dir, tmp_path):
    model, tokenizer = tiny
    adapter = save_adapter(tiny_model_dir, tmp_path / "adapter")
    tuned, _ = load_generator(str(tiny_model_dir), adapter_path=str(adapter), device="cpu")
    config = GenerationConfig(max_new_tokens=8)
    assert [r.text for r in generate(tuned, tokenizer, PROMPTS, config)] != [
        r.text for r in generate(model, tokenizer, PROMPTS, config)
    ]

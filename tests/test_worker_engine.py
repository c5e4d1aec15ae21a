"""worker/engine.py and worker/runner.py on the tiny random Llama: continuous batching and mixed adapters never change
greedy output."""

import queue

import pytest

from tests.eval_setup import save_adapter
from worker.attention import GQA_SDPA
from worker.engine import Engine
from worker.models import load_generator, render_prompt
from worker.protocol import EngineError, SamplingParams
from worker.runner import BatchRunner, Request, prefill_chunk_tokens

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "My kettle will not turn on after I moved house, what now?"}],
    [{"role": "user", "content": "Where is my order #12345? It was due on Monday and nothing arrived."}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_generator(str(tiny_model_dir), device="cpu")


def ids(tokenizer, messages):
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def run_alone(model, tokenizer, messages, max_new_tokens=12):
    runner = BatchRunner(model, tokenizer, max_batch=1)
    request = Request(prompt_ids=ids(tokenizer, messages), params=SamplingParams(max_new_tokens=max_new_tokens))
    runner.add(request)
    while runner.busy:
        runner.step()
    return request.output_ids


def test_a_request_that_joins_a_running_batch_writes_what_it_writes_alone(tiny):
    model, tokenizer = tiny
    alone = [run_alone(model, tokenizer, p) for p in PROMPTS]
    runner = BatchRunner(model, tokenizer, max_batch=8)
    requests = [Request(prompt_ids=ids(tokenizer, p), params=SamplingParams(max_new_tokens=12)) for p in PROMPTS]
    runner.add(requests[0])
    for _ in range(4):
        runner.step()
    assert len(requests[0].output_ids) == 4  # it is mid-way when the others arrive
    runner.add(requests[1])
    runner.step()
    runner.add(requests[2])
    while runner.busy:
        runner.step()
    assert [r.output_ids for r in requests] == alone
    assert all(r.finish_reason in {"stop", "length"} for r in requests)


def test_newcomers_are_prefilled_in_chunks_while_running_rows_keep_decoding(tiny):
    model, tokenizer = tiny
    alone = [run_alone(model, tokenizer, p) for p in PROMPTS]
    lengths = [len(ids(tokenizer, p)) for p in PROMPTS]
    # A budget that fits the two shorter prompts together but not all three: chunks of 2, then 1.
    budget = 2 * max(lengths[:2])
    assert 3 * max(lengths) > budget
    runner = BatchRunner(model, tokenizer, max_batch=8, prefill_tokens=budget)
    requests = [Request(prompt_ids=ids(tokenizer, p), params=SamplingParams(max_new_tokens=12)) for p in PROMPTS]
    for r in requests:
        runner.add(r)
    runner.step()
    assert runner.rows == requests[:2] and runner.waiting == [requests[2]]
    assert [len(r.output_ids) for r in requests] == [1, 1, 0]
    runner.step()  # the first two decode one more token while the third is prefilled
    assert runner.rows == requests and [len(r.output_ids) for r in requests] == [2, 2, 1]
    while runner.busy:
        runner.step()
    assert [r.output_ids for r in requests] == alone


def test_one_newcomer_per_step_joining_mid_decode_writes_what_it_writes_alone(tiny):
    model, tokenizer = tiny
    alone = [run_alone(model, tokenizer, p) for p in PROMPTS]
    # A budget smaller than any prompt admits exactly one newcomer per step (never none: long prompts are served).
    runner = BatchRunner(model, tokenizer, max_batch=8, prefill_tokens=1)
    requests = [Request(prompt_ids=ids(tokenizer, p), params=SamplingParams(max_new_tokens=12)) for p in PROMPTS]
    runner.add(requests[2])
    runner.add(requests[0])
    runner.step()
    runner.step()
    assert runner.rows == [requests[2], requests[0]] and len(requests[2].output_ids) == 2
    runner.step()
    runner.add(requests[1])  # joins a batch that is mid-way, rows of different lengths
    while runner.busy:
        runner.step()
    assert [r.output_ids for r in requests] == alone


def test_the_prefill_budget_comes_from_the_environment_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("FTSTUDIO_PREFILL_CHUNK_TOKENS", "128")
    assert prefill_chunk_tokens() == 128
    monkeypatch.setenv("FTSTUDIO_PREFILL_CHUNK_TOKENS", "0")
    assert prefill_chunk_tokens() == 0  # no limit: every newcomer that fits the batch at once
    for bad, message in (("lots", "whole number"), ("-5", r"0 \(no limit\) or more")):
        monkeypatch.setenv("FTSTUDIO_PREFILL_CHUNK_TOKENS", bad)
        with pytest.raises(ValueError, match=message):
            prefill_chunk_tokens()


def test_a_padded_batch_writes_what_stock_transformers_generate_writes_one_at_a_time(tiny_model_dir):
    """The runner's attention (grouped-query heads through SDPA as they are, mask or not) gives the numbers of
    transformers' own ``sdpa`` path: a left-padded batch equals ``model.generate`` on a separately loaded model."""
    import torch

    stock, tokenizer = load_generator(str(tiny_model_dir))
    assert stock.config.num_key_value_heads < stock.config.num_attention_heads  # the test model groups its heads
    expected = []
    for p in PROMPTS:
        prompt = torch.tensor([ids(tokenizer, p)])
        out = stock.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected.append(out[0, prompt.shape[1] :].tolist())
    model, _ = load_generator(str(tiny_model_dir))
    runner = BatchRunner(model, tokenizer, max_batch=8, prefill_tokens=0)
    assert model.config._attn_implementation == GQA_SDPA and stock.config._attn_implementation == "sdpa"
    requests = [Request(prompt_ids=ids(tokenizer, p), params=SamplingParams(max_new_tokens=12)) for p in PROMPTS]
    for r in requests:
        runner.add(r)
    while runner.busy:
        runner.step()
    eos = tokenizer.eos_token_id
    assert [r.output_ids for r in requests] == [e[: e.index(eos)] if eos in e else e for e in expected]


def test_a_cancelled_row_leaves_the_batch_and_the_others_are_unchanged(tiny):
    model, tokenizer = tiny
    alone = run_alone(model, tokenizer, PROMPTS[2])
    runner = BatchRunner(model, tokenizer, max_batch=8)
    victim = Request(prompt_ids=ids(tokenizer, PROMPTS[1]), params=SamplingParams(max_new_tokens=12))
    kept = Request(prompt_ids=ids(tokenizer, PROMPTS[2]), params=SamplingParams(max_new_tokens=12))
    runner.add(victim)
    runner.add(kept)
    runner.step()
    runner.step()
    victim.cancel()
    runner.step()
    assert victim.finish_reason == "cancelled" and runner.rows == [kept]
    while runner.busy:
        runner.step()
    assert kept.output_ids == alone


def test_a_stop_string_ends_the_text_before_it(tiny):
    model, tokenizer = tiny
    full = tokenizer.decode(run_alone(model, tokenizer, PROMPTS[2], 16), skip_special_tokens=True)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert len(stop) == 2, full
    runner = BatchRunner(model, tokenizer)
    sink = queue.SimpleQueue()
    r = Request(
        prompt_ids=ids(tokenizer, PROMPTS[2]), params=SamplingParams(max_new_tokens=16, stop=(stop,)), sink=sink
    )
    runner.add(r)
    while runner.busy:
        runner.step()
    assert r.finish_reason == "stop" and r.text == full[: full.index(stop)]
    events = []
    while not sink.empty():
        events.append(sink.get())
    assert "".join(v for _, kind, v in events if kind == "delta") == r.text  # streamed text never shows the stop
    assert events[-1] == (0, "done", "stop")


def test_base_and_two_adapters_in_one_batch_write_what_each_writes_alone(tiny_model_dir, tmp_path):
    first = save_adapter(tiny_model_dir, tmp_path / "first")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(9)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    get_peft_model(
        base, LoraConfig(r=4, lora_alpha=64, target_modules=["k_proj", "o_proj"], init_lora_weights=False)
    ).save_pretrained(tmp_path / "second")
    second = tmp_path / "second"
    expected = {}
    for adapter in (None, first, second):
        model, tokenizer = load_generator(str(tiny_model_dir), adapter_path=str(adapter) if adapter else None)
        expected[adapter] = [run_alone(model, tokenizer, p) for p in PROMPTS]
    assert expected[None] != expected[first] != expected[second]

    engine = Engine(max_batch=16, allowed_roots=[str(tiny_model_dir.parent), str(tmp_path)])
    try:
        sink = queue.SimpleQueue()
        submitted = {}
        for adapter in (None, first, second):
            submitted[adapter] = [
                engine.submit(
                    model_dir=str(tiny_model_dir),
                    messages=p,
                    sink=sink,
                    params=[SamplingParams(max_new_tokens=12)],
                    adapter_path=str(adapter) if adapter else None,
                )[0]
                for p in PROMPTS
            ]
        done = 0
        while done < 9:
            if sink.get(timeout=60)[1] == "done":
                done += 1
        assert {a: [r.output_ids for r in rs] for a, rs in submitted.items()} == expected
    finally:
        engine.close()


def test_batches_that_switch_between_base_and_adapters_write_what_each_writes_alone(tiny_model_dir, tmp_path):
    """The runner switches the LoRA layers off for a base-only batch and back on for an adapter's, only when
    the state changes; every switch must take effect."""
    from peft import PeftModel

    first = save_adapter(tiny_model_dir, tmp_path / "first")
    model, tokenizer = load_generator(str(tiny_model_dir))
    expected = {None: run_alone(model, tokenizer, PROMPTS[1])}
    model = PeftModel.from_pretrained(model, str(first), adapter_name="first", is_trainable=False)
    expected["first"] = run_alone(model, tokenizer, PROMPTS[1])
    assert expected[None] != expected["first"]
    runner = BatchRunner(model, tokenizer, named_adapters=True)
    order = [None, "first", None, "first", None]
    requests = [
        Request(prompt_ids=ids(tokenizer, PROMPTS[1]), params=SamplingParams(max_new_tokens=12), adapter=name)
        for name in order
    ]
    for r in requests:  # one at a time: each batch is base-only or one adapter's
        runner.add(r)
        while runner.busy:
            runner.step()
    assert [r.output_ids for r in requests] == [expected[name] for name in order]
    both = [
        Request(prompt_ids=ids(tokenizer, PROMPTS[1]), params=SamplingParams(max_new_tokens=12), adapter=n)
        for n in order[:2]
    ]
    for r in both:
        runner.add(r)
    runner.step()  # a mixed batch (peft's adapter_names), then the base row's batch after "first" leaves
    while runner.busy:
        runner.step()
    assert [r.output_ids for r in both] == [expected[None], expected["first"]]


def test_the_engine_refuses_what_it_cannot_serve(tiny_model_dir, tmp_path):
    engine = Engine(max_batch=4, max_queue=2, allowed_roots=[str(tiny_model_dir.parent), str(tmp_path)])
    try:
        hi = [{"role": "user", "content": "Hi"}]
        with pytest.raises(EngineError) as too_long:
            engine.submit(model_dir=str(tiny_model_dir), messages=hi, params=[SamplingParams(max_new_tokens=600)])
        assert too_long.value.code == "context_length_exceeded" and "512" in too_long.value.message
        (tmp_path / "broken").mkdir()
        with pytest.raises(EngineError) as missing:
            engine.submit(
                model_dir=str(tiny_model_dir),
                messages=hi,
                params=[SamplingParams()],
                adapter_path=str(tmp_path / "broken"),
            )
        assert missing.value.status == 404 and "adapter_model.safetensors" in missing.value.message
        with pytest.raises(EngineError) as outside:
            engine.submit(model_dir="/etc", messages=hi, params=[SamplingParams()])
        assert outside.value.status == 403
        with pytest.raises(EngineError) as full:
            engine.submit(model_dir=str(tiny_model_dir), messages=hi, params=[SamplingParams()] * 3)
        assert full.value.status == 429
    finally:
        engine.close()


# --- prompt beginnings (worker/prefixes.py) and the growing cache ---------------------------------------
SYSTEM = {
    "role": "system",
    "content": "You are the support desk of Ember Home. Answer in two short sentences and sign every reply as Ann.",
}
SHARED = [[SYSTEM, *p] for p in PROMPTS]


def alone_without_prefixes(model, tokenizer, messages, max_new_tokens=12, adapter=None, named_adapters=False):
    runner = BatchRunner(model, tokenizer, max_batch=1, prefix_bytes=0, named_adapters=named_adapters)
    request = Request(
        prompt_ids=ids(tokenizer, messages), params=SamplingParams(max_new_tokens=max_new_tokens), adapter=adapter
    )
    runner.add(request)
    while runner.busy:
        runner.step()
    return request.output_ids


def shared_length(tokenizer, prompts):
    from worker.prefixes import common_length

    first = ids(tokenizer, prompts[0])
    return min(common_length(first, ids(tokenizer, p)) for p in prompts[1:])


def test_prompts_that_begin_alike_are_prefilled_once_from_their_shared_beginning(tiny):
    model, tokenizer = tiny
    alone = [alone_without_prefixes(model, tokenizer, p) for p in SHARED]
    shared = shared_length(tokenizer, SHARED)
    assert shared >= 16  # the chat template and the system prompt
    runner = BatchRunner(model, tokenizer, max_batch=8, prefill_tokens=0, prefix_bytes=2**28)
    requests = [Request(prompt_ids=ids(tokenizer, p), params=SamplingParams(max_new_tokens=12)) for p in SHARED]
    for r in requests:
        runner.add(r)
    while runner.busy:
        runner.step()
    assert [r.output_ids for r in requests] == alone
    assert runner.prefixes.hits == 3 * shared and len(runner.prefixes) == 1  # the beginning, prefilled once

    # A later request with the same system prompt starts from the stored beginning too.
    later = [SYSTEM, {"role": "user", "content": "Can I return a toaster I bought last week?"}]
    request = Request(prompt_ids=ids(tokenizer, later), params=SamplingParams(max_new_tokens=12))
    runner.add(request)
    while runner.busy:
        runner.step()
    assert request.output_ids == alone_without_prefixes(model, tokenizer, later)
    assert runner.prefixes.hits == 4 * shared


def test_the_next_turn_of_a_conversation_starts_from_the_earlier_prompt(tiny):
    model, tokenizer = tiny
    runner = BatchRunner(model, tokenizer, max_batch=4, prefix_bytes=2**28)
    first = Request(prompt_ids=ids(tokenizer, SHARED[1]), params=SamplingParams(max_new_tokens=12))
    runner.add(first)
    while runner.busy:
        runner.step()
    reply = tokenizer.decode(first.output_ids, skip_special_tokens=True)
    follow_up = [*SHARED[1], {"role": "assistant", "content": reply}, {"role": "user", "content": "And if not?"}]
    from worker.prefixes import common_length

    # All of the earlier prompt but, at most, its last token ("\n" may merge with the reply's first characters).
    common = common_length(first.prompt_ids, ids(tokenizer, follow_up))
    assert common >= len(first.prompt_ids) - 1
    second = Request(prompt_ids=ids(tokenizer, follow_up), params=SamplingParams(max_new_tokens=12))
    runner.add(second)
    while runner.busy:
        runner.step()
    assert runner.prefixes.hits == common
    assert second.output_ids == alone_without_prefixes(model, tokenizer, follow_up)


def test_a_beginning_is_kept_per_adapter_and_mixed_batches_write_what_each_writes_alone(tiny_model_dir, tmp_path):
    from peft import PeftModel

    adapter = save_adapter(tiny_model_dir, tmp_path / "first")  # LoRA on q_proj and v_proj: values differ
    model, tokenizer = load_generator(str(tiny_model_dir))
    model = PeftModel.from_pretrained(model, str(adapter), adapter_name="first", is_trainable=False)
    expected = {
        name: [alone_without_prefixes(model, tokenizer, p, adapter=name, named_adapters=True) for p in SHARED]
        for name in (None, "first")
    }
    assert expected[None] != expected["first"]
    runner = BatchRunner(model, tokenizer, named_adapters=True, prefill_tokens=0, prefix_bytes=2**28)
    order = [None, "first", None, "first", None, "first"]
    requests = [
        Request(prompt_ids=ids(tokenizer, SHARED[i % 3]), params=SamplingParams(max_new_tokens=12), adapter=name)
        for i, name in enumerate(order)
    ]
    for r in requests:
        runner.add(r)
    while runner.busy:
        runner.step()
    assert [r.output_ids for r in requests] == [expected[name][i % 3] for i, name in enumerate(order)]
    assert len(runner.prefixes) == 2  # one beginning for the base model, one for the adapter
    runner.model.delete_adapter("first")
    runner.adapters_changed()
    assert len(runner.prefixes) == 1  # the deleted adapter's beginning is forgotten


def test_long_outputs_grow_the_cache_while_rows_join_and_leave(tiny):
    """A batch's cache grows by spare columns; rows leaving and joining keep writing what they write alone."""
    model, tokenizer = tiny
    lengths = [150, 20, 90]
    alone = [alone_without_prefixes(model, tokenizer, p, n) for p, n in zip(PROMPTS, lengths, strict=True)]
    assert max(len(a) for a in alone) > 128  # past two growths of the spare columns
    runner = BatchRunner(model, tokenizer, max_batch=2, prefill_tokens=1)
    requests = [
        Request(prompt_ids=ids(tokenizer, p), params=SamplingParams(max_new_tokens=n))
        for p, n in zip(PROMPTS, lengths, strict=True)
    ]
    for r in requests:
        runner.add(r)
    while runner.busy:
        runner.step()
    assert [r.output_ids for r in requests] == alone


def test_the_prefix_cache_keeps_its_memory_budget_least_recently_used_first(monkeypatch):
    import torch

    from worker.prefixes import PrefixCache, prefix_cache_bytes

    def kv(n):  # one layer, 2 heads of 4 float32 values: 64 bytes per token for keys and values together
        return [(torch.zeros(1, 2, n, 4), torch.zeros(1, 2, n, 4))]

    cache = PrefixCache(max_bytes=60 * 64)
    a, b, c = list(range(20)), list(range(100, 125)), list(range(200, 230))
    cache.store(None, a, kv(20))
    cache.store(None, b, kv(25))
    assert cache.longest(None, a + [7, 8])[0] == 20  # a is now the most recently used
    cache.store(None, c, kv(30))  # 75 tokens' worth > 60: b, the least recently used, goes
    assert cache.tokens == 50 and cache.bytes == 50 * 64
    assert cache.longest(None, b)[0] == 0 and cache.longest(None, c)[0] == 30
    n, layers = cache.longest(None, c[:18] + [0, 0])
    assert n == 18 and layers[0][0].shape[2] == 18  # a shared part of an entry is sliced from it
    assert cache.longest("adapter", a)[0] == 0  # entries are per adapter
    cache.store(None, a + list(range(500, 510)), kv(30))  # extends a: a is dropped, not kept twice
    assert cache.tokens == 60 and len(cache) == 2
    cache.store(None, list(range(5)), kv(5))  # shorter than worth keeping
    cache.store(None, list(range(900, 970)), kv(70))  # larger than the whole budget: not kept, nothing evicted
    assert len(cache) == 2

    monkeypatch.setenv("FTSTUDIO_PREFIX_CACHE_MB", "0")
    assert prefix_cache_bytes() == 0  # off
    monkeypatch.setenv("FTSTUDIO_PREFIX_CACHE_MB", "1.5")
    assert prefix_cache_bytes() == 3 * 2**19
    for bad, message in (("many", "number of megabytes"), ("-1", r"0 \(off\) or more")):
        monkeypatch.setenv("FTSTUDIO_PREFIX_CACHE_MB", bad)
        with pytest.raises(ValueError, match=message):
            prefix_cache_bytes()


# --- oneDNN-packed weights (worker/packed.py) ------------------------------------------------------------
def test_packed_weights_serve_only_the_engine_and_write_what_stock_generate_writes(tiny_model_dir, monkeypatch):
    import torch

    from worker.packed import engine_kernels, pack_linear_weights

    stock, tokenizer = load_generator(str(tiny_model_dir))
    prompt = torch.tensor([ids(tokenizer, PROMPTS[2])])
    expected = stock.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    model, _ = load_generator(str(tiny_model_dir))
    runner = BatchRunner(model, tokenizer, prefix_bytes=0)
    layers = model.config.num_hidden_layers
    # q, o, gate, up, down per layer, and the head; the tiny model's k and v (32 features) stay on PyTorch's path
    assert model.ftstudio_packed_layers == 5 * layers + 1
    assert not hasattr(model.model.layers[0].self_attn.k_proj, "ftstudio_packed_weight")
    request = Request(prompt_ids=prompt[0].tolist(), params=SamplingParams(max_new_tokens=12))
    runner.add(request)
    while runner.busy:
        runner.step()
    new = expected[0, prompt.shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    assert request.output_ids == (new[: new.index(eos)] if eos in new else new)

    # Outside the engine's forward passes the same layers compute exactly as PyTorch does.
    head = model.lm_head
    x = torch.randn(3, head.in_features)
    assert torch.equal(head(x), torch.nn.functional.linear(x, head.weight))
    with engine_kernels():
        packed = head(x)
    assert torch.allclose(packed, torch.nn.functional.linear(x, head.weight), atol=1e-5)
    assert pack_linear_weights(model) == 5 * layers + 1  # once per model

    monkeypatch.setenv("FTSTUDIO_PACKED_WEIGHTS", "0")
    plain, _ = load_generator(str(tiny_model_dir))
    assert pack_linear_weights(plain) == 0 and not hasattr(plain.lm_head, "ftstudio_packed_weight")
    monkeypatch.setenv("FTSTUDIO_PACKED_WEIGHTS", "sometimes")
    with pytest.raises(ValueError, match="FTSTUDIO_PACKED_WEIGHTS must be 1"):
        pack_linear_weights(load_generator(str(tiny_model_dir))[0])

"""Training on OpenAI's tool-calling format: tools rendered by the chat template (or Hermes-style where the template
has no tool support), loss only on assistant turns whose weight is not 0."""

from __future__ import annotations

import json
import shutil

import pytest

from worker.data import IGNORE_INDEX, DataError, encode_conversation, template_knows_tools
from worker.models import load_tokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def conversation(weight_of_first_answer: int = 1) -> dict:
    first = {"role": "assistant", "content": "Let me look.", "weight": weight_of_first_answer}
    return {
        "tools": [WEATHER],
        "messages": [
            {"role": "developer", "content": "You answer about the weather."},
            {"role": "user", "content": "Hi"},
            first,
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
            {"role": "assistant", "content": "It is 18C and sunny in Paris."},
        ],
    }


def learnt(tokenizer, feature) -> str:
    return tokenizer.decode([label for label in feature.labels if label != IGNORE_INDEX])


def test_a_tool_call_turn_is_learnt_hermes_style_on_a_template_without_tools(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert not template_knows_tools(tokenizer)  # SmolLM2's template
    feature = encode_conversation(tokenizer, conversation(), max_length=512)
    text = tokenizer.decode(feature.input_ids)
    target = learnt(tokenizer, feature)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in target
    assert "It is 18C and sunny in Paris." in target and "Let me look." in target
    # the tools and the tool's answer are prompt, shown but not learnt; developer is rendered as system
    assert '"name": "get_weather", "description"' in text and "<tool_response>\n18C and sunny" in text
    assert "<|im_start|>system\nYou answer about the weather." in text
    assert "18C and sunny\n" not in target and 'get_weather", "description' not in target


def test_an_assistant_turn_of_weight_0_is_context_not_loss(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    weighted = learnt(tokenizer, encode_conversation(tokenizer, conversation(1), 512))
    unweighted_feature = encode_conversation(tokenizer, conversation(0), 512)
    assert "Let me look." in weighted
    assert "Let me look." not in learnt(tokenizer, unweighted_feature)
    assert "Let me look." in tokenizer.decode(unweighted_feature.input_ids)
    assert "It is 18C" in learnt(tokenizer, unweighted_feature)
    only_context = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]}
    with pytest.raises(DataError, match="no assistant turn"):
        encode_conversation(tokenizer, only_context, 64)


# A ChatML template that renders tools itself, as Qwen2.5's does (trimmed): tools go to apply_chat_template.
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}<|im_end|>\n"
    "{%- endif %}{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{%- if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }}:{{ c.function.arguments | tojson }}"
    "</call>{% endfor %}{% endif %}<|im_end|>\n{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- endif %}"
)


def test_a_template_with_tool_support_is_given_the_tools_and_the_calls(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = TOOL_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(str(folder))
    assert template_knows_tools(tokenizer)
    feature = encode_conversation(tokenizer, conversation(), 512)
    assert tokenizer.decode(feature.input_ids).startswith("<|im_start|>system\nTOOLS:get_weather;")
    assert '<call>get_weather:{"city": "Paris"}</call>' in learnt(tokenizer, feature)


def tool_conversation(i: int) -> dict:
    city = ["Paris", "Oslo", "Rome", "Lima"][i % 4]
    call = {**CALL, "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    return {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": f"{10 + i}C"},
            {"role": "assistant", "content": f"It is {10 + i}C in {city}."},
        ],
    }


@pytest.mark.parametrize("packing", [True, False])
def test_tool_call_training_logs_token_accuracy_and_keeps_the_last_three_epochs_adapters(
    tiny_model_dir, tmp_path, packing
):
    from worker.train import Hooks, TrainConfig, train

    metrics = []
    config = TrainConfig(
        model_dir=str(tiny_model_dir),
        output_dir=str(tmp_path / "run"),
        epochs=4,
        batch_size=2,
        learning_rate=5e-2,
        max_seq_length=384,
        save_steps=100,
        packing=packing,
    )
    train_set = [tool_conversation(i) for i in range(4)]  # 2 steps an epoch
    val = [tool_conversation(8)]
    result = train(config, train_set, val, Hooks(on_metric=metrics.append))
    assert result.status == "succeeded" and result.global_step == 8
    train_accuracy = [m.train_accuracy for m in metrics if m.train_loss is not None]
    val_accuracy = [m.val_accuracy for m in metrics if m.val_loss is not None]
    assert len(train_accuracy) == 8 and all(0 <= a <= 1 for a in train_accuracy)
    assert len(val_accuracy) == 4 and all(0 <= a <= 1 for a in val_accuracy)
    # the last validation pass ran on the final weights: its accuracy is the one recomputed here from the adapter
    assert val_accuracy[-1] == pytest.approx(recomputed_accuracy(tiny_model_dir, tmp_path / "run" / "adapter", val))
    epochs = sorted(p.name for p in (tmp_path / "run" / "epochs").iterdir())
    assert epochs == ["step-4", "step-6", "step-8"]  # the last three epoch ends; epoch 1's was removed
    assert all((tmp_path / "run" / "epochs" / name / "adapter_model.safetensors").is_file() for name in epochs)


def recomputed_accuracy(model_dir, adapter_dir, conversations) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(model_dir))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(adapter_dir)).eval()
    right = total = 0
    for conversation in conversations:
        feature = encode_conversation(tokenizer, conversation, 384)
        with torch.no_grad():
            logits = model(torch.tensor([feature.input_ids])).logits[0, :-1]
        targets = torch.tensor(feature.labels[1:])
        keep = targets != IGNORE_INDEX
        right += int((logits[keep].argmax(-1) == targets[keep]).sum())
        total += int(keep.sum())
    return right / total


def test_token_accuracy_counts_the_learnt_tokens_predicted_right():
    import torch

    from worker.trainer import count_right

    counts = [0, 0]
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.0, 0.2, 0.7]])
    count_right(counts, logits, torch.tensor([1, 2, 2]))
    count_right(counts, logits[:1], torch.tensor([0]))
    assert counts == [2, 4]

"""Export a run's LoRA adapter in the formats other tools load. No Django here.

Three outputs, from a base model folder (HF format, safetensors) and a PEFT adapter folder:
  * ``export_adapter``: the adapter folder (or a zip of it) whose ``adapter_config.json`` names the base model by
    its public id (``HuggingFaceTB/SmolLM2-135M-Instruct``) instead of a path on this server;
  * ``merge_adapter``: the adapter merged into the base weights (``merge_and_unload``), saved as a safetensors
    HF folder with tokenizer and generation config that plain ``AutoModelForCausalLM.from_pretrained`` loads;
  * ``export_gguf``: the merged model as a GGUF file for llama.cpp (f16 or q8_0), written with the ``gguf`` package
    following llama.cpp's own converter (convert_hf_to_gguf.py, class LlamaModel): its tensor names
    (``gguf.get_tensor_name_map``), its metadata keys, the Q/K row permutation it applies to Llama attention
    weights, norms kept in f32, and the GPT-2 style BPE vocabulary (tokens, token types, merges, special ids,
    chat template). An Ollama ``Modelfile`` is written beside it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
QUANTS = ("f16", "q8_0")
# write_gguf also writes f32 (llama.cpp's converter's --outtype f32): the exact weights the engine runs on a CPU, for
# comparing llama.cpp with the Studio like with like (bench/serve_llamacpp.py). Export jobs offer QUANTS.
GGUF_WRITE_QUANTS = (*QUANTS, "f32")
FORMATS = ("adapter", "merged", "gguf")


class ExportError(ValueError):
    """An export that cannot be done; the message says which file or setting and why."""


@dataclass(frozen=True)
class ExportResult:
    path: str  # the folder, zip or .gguf file written
    files: tuple[str, ...]  # every file written (absolute paths)
    base_model_id: str


# --- checks -----------------------------------------------------------------------------------------
def check_adapter_dir(adapter_dir: str | Path) -> Path:
    folder = Path(adapter_dir) if adapter_dir else None
    if folder is None or not folder.is_dir():
        raise ExportError(f"The adapter folder {adapter_dir or '(none recorded)'} does not exist.")
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise ExportError(f"The adapter folder {folder} is missing {', '.join(missing)}.")
    return folder


def check_writable(out: str | Path) -> Path:
    """The output path's nearest existing parent must be a writable folder; an existing file is not replaced
    by a folder (and vice versa)."""
    target = Path(out).expanduser().absolute()
    parent = target
    while not parent.exists():
        parent = parent.parent
    if parent != target and not parent.is_dir():
        raise ExportError(f"Cannot write {target}: {parent} is a file, not a folder.")
    if not os.access(parent if parent != target else target.parent, os.W_OK):
        raise ExportError(f"Cannot write {target}: {parent if parent != target else target.parent} is not writable.")
    return target


# --- (a) the adapter ---------------------------------------------------------------------------------
def portable_adapter_config(adapter_dir: str | Path, base_model_id: str) -> dict:
    """The adapter's config with ``base_model_name_or_path`` set to the public id (no server path)."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_model_id
    return config


def _adapter_readme(base_model_id: str) -> str:
    return (
        f"---\nbase_model: {base_model_id}\nlibrary_name: peft\n---\n\n"
        f"# LoRA adapter for {base_model_id}\n\nExported by Fine-Tuning Studio.\n\n```python\n"
        "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({base_model_id!r})\n"
        "model = PeftModel.from_pretrained(base, 'path/to/this/folder')\n```\n"
    )


def adapter_files(adapter_dir: str | Path, base_model_id: str) -> dict[str, bytes]:
    """The portable adapter's files by name: the rewritten config, the weights as they are, a model card."""
    folder = check_adapter_dir(adapter_dir)
    return {
        "adapter_config.json": json.dumps(portable_adapter_config(folder, base_model_id), indent=2).encode(),
        "adapter_model.safetensors": (folder / "adapter_model.safetensors").read_bytes(),
        "README.md": _adapter_readme(base_model_id).encode(),
    }


def export_adapter(adapter_dir: str | Path, out: str | Path, *, base_model_id: str) -> ExportResult:
    """Write the portable adapter as a folder, or as a zip when ``out`` ends in ``.zip`` (files under one folder)."""
    files = adapter_files(adapter_dir, base_model_id)
    target = check_writable(out)
    if target.suffix == ".zip":
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(f"{target.stem}/{name}", data)
        return ExportResult(str(target), (str(target),), base_model_id)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (target / name).write_bytes(data)
    return ExportResult(str(target), tuple(str(target / n) for n in files), base_model_id)


# --- (b) merged safetensors --------------------------------------------------------------------------
def merge_adapter(
    base_dir: str | Path, adapter_dir: str | Path, out: str | Path, *, base_model_id: str
) -> ExportResult:
    """Merge the adapter into the base weights; write a safetensors HF folder (model, tokenizer, generation config)."""
    import torch
    from peft import PeftModel

    from worker.models import load_model, load_tokenizer

    adapter = check_adapter_dir(adapter_dir)
    target = check_writable(out)
    if target.exists() and any(target.iterdir()):
        raise ExportError(f"{target} exists and is not empty: choose a new folder for the merged model.")
    model = PeftModel.from_pretrained(load_model(str(base_dir), dtype=torch.float32, device="cpu"), str(adapter))
    merged = model.merge_and_unload()
    merged.config._name_or_path = base_model_id
    tokenizer = load_tokenizer(str(base_dir))
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(
        f"---\nbase_model: {base_model_id}\nlibrary_name: transformers\n---\n\n# {base_model_id} + LoRA (merged)\n\n"
        "Exported by Fine-Tuning Studio: the fine-tuned adapter merged into the base model's weights.\n"
    )
    if target.exists():
        target.rmdir()
    tmp.rename(target)
    return ExportResult(str(target), tuple(str(p) for p in sorted(target.iterdir())), base_model_id)


# --- (c) GGUF ------------------------------------------------------------------------------------------
def permute_qk(weights, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's row order for Llama Q and K projections.

    HF checkpoints rotate the two halves of each head's dimensions (rotate_half); llama.cpp (and Meta's original
    weights) rotate interleaved pairs, so the converter regroups each head's rows from [half0, half1] to pairs.
    K uses the number of KV heads (grouped-query attention). transformers' GGUF loader applies the inverse.
    """
    heads = n_head_kv if n_head_kv is not None and n_head != n_head_kv else n_head
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_tokenizer_settings(gguf_path: str | Path) -> dict:
    """The tokenizer settings of the GGUF a base model came from: pre-tokenizer, special token ids, add_bos/add_eos.

    A GGUF tokenizer that went through transformers (the safetensors cache of a GGUF base model) loses them:
    SmolLM2's comes back with eos ``<|im_start|>`` and add_bos on, where llama.cpp's converter wrote eos
    ``<|im_end|>`` and no BOS. An export of such a model keeps the original file's settings.
    """
    import gguf

    fields = gguf.GGUFReader(str(gguf_path)).fields

    def value(key: str):
        return fields[key].contents() if key in fields else None

    keys = gguf.Keys.Tokenizer
    id_keys = {
        "bos": keys.BOS_ID,
        "eos": keys.EOS_ID,
        "unk": keys.UNK_ID,
        "sep": keys.SEP_ID,
        "pad": keys.PAD_ID,
        "mask": keys.MASK_ID,
    }
    return {
        "pre": value(keys.PRE),
        "ids": {t: value(key) for t, key in id_keys.items() if value(key) is not None},
        "add": {t: value(key) for t, key in (("bos", keys.ADD_BOS), ("eos", keys.ADD_EOS)) if value(key) is not None},
    }


def _vocab(model_dir: Path, vocab_size: int):
    """Tokens and token types as llama.cpp's converter lists them for a GPT-2 style BPE tokenizer."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ExportError(f"{model_dir} has no tokenizer.json: GGUF export needs a fast (tokenizers) tokenizer.")
    kind = json.loads(tokenizer_json.read_text()).get("model", {}).get("type")
    if kind != "BPE":
        raise ExportError(
            f"GGUF export supports byte-level BPE tokenizers (GPT-2 style); {model_dir.name} uses "
            f"{kind or 'an unknown'} tokenizer. Export the merged folder and convert it with llama.cpp's "
            "convert_hf_to_gguf.py instead."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokenizer, tokens, types


def write_gguf(
    model_dir: str | Path,
    out_file: str | Path,
    *,
    quant: str = "f16",
    name: str = "",
    base_model_id: str = "",
    source_gguf: str | Path | None = None,
) -> Path:
    """Write a Llama-architecture safetensors folder as GGUF (``quant``: f16, q8_0 or f32; 1-D tensors stay f32).

    ``source_gguf``: the GGUF the base model was converted from, whose tokenizer settings win (see
    `gguf_tokenizer_settings`). Without it the pre-tokenizer is llama.cpp's "default" and special tokens come from
    tokenizer_config.json / config.json, as llama.cpp's converter reads them.
    """
    import gguf
    import numpy as np
    from safetensors import safe_open

    if quant not in GGUF_WRITE_QUANTS:
        raise ExportError(f"Unknown GGUF quantization {quant!r}: choose one of {', '.join(GGUF_WRITE_QUANTS)}.")
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ExportError(
            f"GGUF export supports Llama-architecture models; this one is {config.get('model_type')!r}. "
            "Export the merged folder and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    rope_scaling = config.get("rope_scaling")
    if rope_scaling and (rope_scaling.get("rope_type") or rope_scaling.get("type")) != "linear":
        raise ExportError(f"GGUF export does not handle rope_scaling {rope_scaling!r} yet (only linear).")
    n_layers, n_head = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    vocab_size = int(config["vocab_size"])
    tokenizer, tokens, types = _vocab(model_dir, vocab_size)

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or base_model_id or model_dir.name)
    if base_model_id:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base_model_id)
        if base_model_id.count("/") == 1 and not base_model_id.startswith(("/", ".")):
            writer.add_base_model_organization(0, base_model_id.split("/")[0])
            writer.add_base_model_repo_url(0, f"https://huggingface.co/{base_model_id}")
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    if rope_scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope_scaling["factor"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}.get(
        quant, gguf.LlamaFileType.ALL_F32
    )
    writer.add_file_type(file_type)
    writer.add_vocab_size(vocab_size)

    source = gguf_tokenizer_settings(source_gguf) if source_gguf else {}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(source.get("pre") or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if source:
        special.special_token_ids, special.add_special_token = source["ids"], source["add"]
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template  # transformers >= 4.43 keeps it in chat_template.jinja
    special.add_to_gguf(writer, quiet=True)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tied = bool(config.get("tie_word_embeddings"))
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="numpy") as tensors:
            for key in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                    continue
                gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ExportError(f"{shard.name}: no llama.cpp tensor name for {key!r}.")
                data = tensors.get_tensor(key).astype(np.float32)
                if key.endswith("self_attn.q_proj.weight"):
                    data = permute_qk(data, n_head, n_head)
                elif key.endswith("self_attn.k_proj.weight"):
                    data = permute_qk(data, n_head, n_head_kv)
                if data.ndim == 1 or quant == "f32":
                    writer.add_tensor(gguf_name, data)
                elif quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
                    writer.add_tensor(
                        gguf_name,
                        gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                        raw_dtype=gguf.GGMLQuantizationType.Q8_0,
                    )
                else:  # f16, and rows that do not divide into q8_0 blocks of 32 (as llama.cpp's converter does)
                    writer.add_tensor(gguf_name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_file)
    return out_file


# --- the Ollama Modelfile -------------------------------------------------------------------------------
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    '{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
    "{{ end }}{{- end }}<|im_start|>assistant\n"
)


def default_system_prompt(tokenizer) -> str | None:
    """The system turn a ChatML template inserts when a conversation has none (SmolLM2 adds one)."""
    marker = "\x00user\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True
    )
    head = "<|im_start|>system\n"
    if not text.startswith(head):
        return None
    return text[len(head) : text.index("<|im_end|>")]


def modelfile_text(gguf_name: str, tokenizer) -> str:
    """An Ollama Modelfile: FROM the GGUF beside it, the chat template in Ollama's Go template syntax, stop tokens."""
    template = getattr(tokenizer, "chat_template", None) or ""
    lines = ["# Ollama: ollama create my-model -f Modelfile && ollama run my-model", f"FROM ./{gguf_name}"]
    stops = []
    if "<|im_start|>" in template:
        lines.append(f'TEMPLATE """{CHATML_TEMPLATE}"""')
        system = default_system_prompt(tokenizer)
        if system:
            lines.append(f'SYSTEM """{system}"""')
        stops += ["<|im_end|>", "<|im_start|>"]
    else:
        lines.append("# The chat template is in the GGUF (tokenizer.chat_template); Ollama reads it from there.")
    eos = tokenizer.eos_token
    if eos and eos not in stops:
        stops.append(eos)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def export_gguf(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out: str | Path,
    *,
    base_model_id: str,
    quant: str = "f16",
    source_gguf: str | Path | None = None,
) -> ExportResult:
    """Merge, then write ``<out>`` (a .gguf path, or a folder that gets ``model-<quant>.gguf``) and a Modelfile."""
    from worker.models import load_tokenizer

    if quant not in QUANTS:
        raise ExportError(f"Unknown GGUF quantization {quant!r}: choose one of {', '.join(QUANTS)}.")
    check_adapter_dir(adapter_dir)
    target = check_writable(out)
    gguf_file = target if target.suffix == ".gguf" else target / f"model-{quant}.gguf"
    gguf_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="merge-", dir=gguf_file.parent) as tmp:
        merged = Path(tmp) / "merged"
        merge_adapter(base_dir, adapter_dir, merged, base_model_id=base_model_id)
        write_gguf(merged, gguf_file, quant=quant, base_model_id=base_model_id, source_gguf=source_gguf)
        modelfile = gguf_file.parent / "Modelfile"
        modelfile.write_text(modelfile_text(gguf_file.name, load_tokenizer(str(merged))))
    return ExportResult(str(gguf_file), (str(gguf_file), str(modelfile)), base_model_id)


def export(
    fmt: str,
    *,
    base_dir: str | Path,
    adapter_dir: str | Path,
    out: str | Path,
    base_model_id: str,
    quant: str = "f16",
    source_gguf: str | Path | None = None,
) -> ExportResult:
    """One entry point for the command and the task: ``fmt`` is adapter, merged or gguf."""
    if fmt == "adapter":
        return export_adapter(adapter_dir, out, base_model_id=base_model_id)
    if fmt == "merged":
        return merge_adapter(base_dir, adapter_dir, out, base_model_id=base_model_id)
    if fmt == "gguf":
        return export_gguf(
            base_dir, adapter_dir, out, base_model_id=base_model_id, quant=quant, source_gguf=source_gguf
        )
    raise ExportError(f"Unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}.")

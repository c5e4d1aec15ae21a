"""What training takes and gives back, importable without torch: the web process reads these (the launch
form's defaults, the estimate's step count) and `worker/train.py` trains with them. No Django here either."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from worker.data import PACK_ROW_TOKENS

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainConfig:
    model_dir: str
    output_dir: str
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_length: int = 256
    seed: int = 42
    save_steps: int = 20
    logging_steps: int = 1
    packing: bool = True  # padding-free batches; False pads each batch to its longest example
    pack_row_tokens: int = PACK_ROW_TOKENS  # tokens per packed row (see worker.data.PackedRowsCollator)
    device: str = ""  # "" picks cuda when present
    # Memory (worker/memory.py estimates each): "lora" trains on a bf16 base (fp32 on a CPU); "qlora" on a 4-bit
    # NF4 base (bitsandbytes, CUDA only). Gradient checkpointing recomputes each layer in the backward pass.
    memory_mode: str = "lora"
    gradient_checkpointing: bool = False
    # Kernels: "auto" is FlashAttention-2 when installed on a GPU, else PyTorch's sdpa; or "sdpa", "eager",
    # "flash_attention_2". Liger's fused kernels (RMSNorm, RoPE, SwiGLU, linear + cross-entropy) when asked.
    attention: str = "auto"
    liger_kernels: bool = False
    bf16: bool = True  # on a GPU that supports it; False trains in fp32 there (the GPU check compares the losses)
    # What is learnt (OpenAI's fine-tuning methods): "supervised" (the ideal outputs), "dpo" (preference pairs:
    # TRL's DPOTrainer; the reference model is the starting point) or "reinforcement" (TRL's GRPOTrainer: the model
    # samples ``num_generations`` replies per prompt, rewarded by ``graders``, worker/graders.py).
    method: str = "supervised"
    start_adapter_dir: str = ""  # a finished run's adapter to start from (and, for dpo, the reference); "" = base
    beta: float = 0.1  # dpo: how far from the reference the model may move (OpenAI's hyperparameter of that name)
    graders: list = field(default_factory=list)  # reinforcement: grader objects in OpenAI's shapes, with weights
    num_generations: int = 4  # reinforcement: replies sampled per prompt (the group GRPO compares)
    max_completion_length: int = 64  # reinforcement: longest sampled reply, in tokens

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: float
    tokens_per_second: float | None = None


@dataclass
class Metric:
    step: int
    epoch: float
    train_loss: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    train_accuracy: float | None = None  # share of the learnt tokens predicted right (argmax) since the last log
    val_accuracy: float | None = None  # the same over the validation split
    reward_margin: float | None = None  # dpo: preferred minus non-preferred implicit reward (val rows: held-out pairs)
    preference_accuracy: float | None = None  # dpo, validation only: share of held-out pairs ranked right
    rewards: dict = field(default_factory=dict)  # reinforcement: mean reward per grader name, and "total"


@dataclass
class TrainResult:
    status: str  # "succeeded" | "cancelled" | "paused" (stopped at a checkpoint: call train() again to go on)
    global_step: int
    total_steps: int
    adapter_dir: str = ""
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    tokens_per_second: float | None = None
    trained_tokens: int = 0
    resumed_from: str = ""
    seconds: float = 0.0
    history: list[Metric] = field(default_factory=list)


class Hooks:
    """What the caller (a Celery task, a test, the benchmark) hears from training. All optional.

    ``should_cancel``: stop now, save nothing. ``should_pause``: stop at the next step end with a checkpoint
    (a worker shutting down). ``on_phase``: "loading", "training", "validating", "saving".
    """

    def __init__(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        on_metric: Callable[[Metric], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_log: Callable[[str], None] | None = None,
        on_checkpoint: Callable[[str], None] | None = None,
        on_phase: Callable[[str], None] | None = None,
        should_pause: Callable[[], bool] | None = None,
        call_model: Callable[[str, list, dict], str] | None = None,
    ) -> None:
        # What the caller supplies rather than hears: how a grader that asks a model reaches it
        # (worker/graders.py's ``call_model``); None where no such grader is used.
        self.call_model = call_model
        self.on_checkpoint = on_checkpoint or (lambda path: None)
        self.on_progress = on_progress or (lambda p: None)
        self.on_metric = on_metric or (lambda m: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.on_log = on_log or (lambda line: None)
        self.on_phase = on_phase or (lambda phase: None)
        self.should_pause = should_pause or (lambda: False)

    NAMES = ("on_progress", "on_metric", "should_cancel", "on_log", "on_checkpoint", "on_phase", "should_pause")

    @classmethod
    def of(cls, listener) -> Hooks:
        """The hooks of an object that has a method for each of them (a run's reporter)."""
        return cls(**{name: getattr(listener, name) for name in cls.NAMES})


class Stopped(Exception):
    """Raised between two units of work (a loading stage, a validation batch) when cancel or a pause is asked."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def stop_point(hooks: Hooks) -> None:
    if hooks.should_cancel():
        raise Stopped("cancelled")
    if hooks.should_pause():
        raise Stopped("paused")


QLORA_NEEDS_CUDA = (
    "A 4-bit base (QLoRA) needs an NVIDIA GPU: bitsandbytes' 4-bit layers run on CUDA, and this worker has none. "
    "Train on the full-precision base here, or send the run to a GPU worker."
)


def steps_per_epoch(examples: int, batch_size: int, grad_accum: int) -> int:
    return max(1, math.ceil(math.ceil(examples / batch_size) / grad_accum))

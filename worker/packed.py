"""oneDNN-packed linear weights for the engine on a CPU (no Django here).

PyTorch's CPU build computes ``nn.Linear`` through MKL's sgemm, which on AMD processors runs its AVX2 code: on the
2-core EPYC the project is measured on, 200 GFLOPS where oneDNN's AVX-512 kernels, given a weight packed in
their own layout, reach 470 (docs/BENCHMARKS.md, "Serving throughput"). The engine therefore packs a copy of each
large linear weight once per loaded model (``torch.ops.mkldnn._reorder_linear_weight``, still float32) and, only
while it runs the model (:func:`engine_kernels`), computes those layers with ``mkldnn._linear_pointwise``.
Anything else that calls the same model (training, stock ``generate``) keeps PyTorch's own path.

The packed copy costs the linear weights' memory once more (about 540 MB for the shipped 135M model);
``FTSTUDIO_PACKED_WEIGHTS=0`` turns it off. Results differ from MKL's in the last bits (about 1e-6), as MKL's
own single-row and batched kernels already do; greedy outputs in the benchmarks stay identical.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import types

log = logging.getLogger(__name__)

_active = threading.local()
MIN_FEATURES = 64  # LoRA's rank-r matrices and other small layers keep PyTorch's path


def packed_weights_enabled() -> bool:
    raw = os.environ.get("FTSTUDIO_PACKED_WEIGHTS", "1").strip().lower()
    if raw in {"1", "true", "yes", "on", ""}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"FTSTUDIO_PACKED_WEIGHTS must be 1 (on) or 0 (off), not {raw!r}")


def _available() -> bool:
    import torch

    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _packed_forward(self, x):
    import torch

    if getattr(_active, "on", False) and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(x, self.ftstudio_packed_weight, self.bias, "none", [], "")
    return torch.nn.functional.linear(x, self.weight, self.bias)


def pack_linear_weights(model) -> int:
    """Give each large float32 ``nn.Linear`` of a CPU model a packed copy of its weight (once); returns how many
    layers use it (0 where oneDNN is missing, the model is not on the CPU, or packing is turned off)."""
    import torch

    if getattr(model, "ftstudio_packed_layers", None) is not None:
        return model.ftstudio_packed_layers
    packed = 0
    if packed_weights_enabled() and _available():
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if (
                type(module) is torch.nn.Linear
                and "lora_" not in name
                and not hasattr(module, "ftstudio_packed_weight")
                and weight is not None
                and weight.device.type == "cpu"
                and weight.dtype == torch.float32
                and min(module.in_features, module.out_features) >= MIN_FEATURES
            ):
                try:
                    module.ftstudio_packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 32)
                except RuntimeError as exc:  # a build without this kernel: PyTorch's path, said once
                    log.info("oneDNN weight packing is not available here (%s); using PyTorch's linear", exc)
                    break
                module.forward = types.MethodType(_packed_forward, module)
                packed += 1
    model.ftstudio_packed_layers = packed
    return packed


@contextlib.contextmanager
def engine_kernels():
    """Within this block (on this thread) packed layers compute with oneDNN; elsewhere as PyTorch does."""
    before = getattr(_active, "on", False)
    _active.on = True
    try:
        yield
    finally:
        _active.on = before

"""The engine's attention: transformers' ``sdpa`` without copying grouped-query heads. No Django here.

:func:`use_gqa_sdpa` switches a loaded model that runs transformers' ``sdpa`` attention to
:func:`sdpa_gqa_attention` (registered under the name ``GQA_SDPA``); eager attention and FlashAttention are left
as they are. Only the engine switches its models; training keeps transformers' own attention.
"""

from __future__ import annotations

import logging

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

log = logging.getLogger(__name__)

GQA_SDPA = "ftstudio_sdpa"


def sdpa_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **_):
    """transformers' ``sdpa`` attention, except that grouped-query heads go to SDPA as they are
    (``enable_gqa``) also when there is a mask. transformers copies every layer's keys and values
    ``num_heads / num_kv_heads`` times (``repeat_kv``) whenever a mask is given, which a batch with
    left padding always has: at batch 32 that copy cost more than the attention itself. Same numbers
    (SDPA repeats the heads internally); greedy outputs stay identical."""
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    if is_causal is None:
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def use_gqa_sdpa(model) -> None:
    """Switch a model that runs transformers' ``sdpa`` attention to :func:`sdpa_gqa_attention`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(inner.config, "_attn_implementation", None) != "sdpa":
        return  # eager, flash attention on a GPU, or already switched: left as it is
    AttentionInterface.register(GQA_SDPA, sdpa_gqa_attention)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)
    try:
        inner.set_attn_implementation(GQA_SDPA)
    except ValueError as exc:  # a model class that refuses registered attention keeps transformers' sdpa
        log.info("%s keeps transformers' sdpa attention: %s", type(inner).__name__, exc)

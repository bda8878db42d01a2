"""Attention for the bf16 backend on CPUs: two bf16 matrix products and a softmax where they beat
PyTorch's fused CPU kernel, that kernel everywhere else.

PyTorch's CPU flash-attention kernel runs bf16 at about 150 GFLOP/s on an AVX512-BF16 CPU without
AMX (its blocked micro-kernels need AMX), a fifth of what oneDNN's bf16 matrix products reach;
at a reranker's usual shapes (one pair of ~400 tokens, 16 heads) attention then takes a quarter of
a bf16 forward. This computes `softmax(q kᵀ · scale + mask) v` with `torch.matmul` in bf16, about
twice as fast there (`python -m bench.kernels`), a batch in pieces whose score tensors stay under
`LIMIT` elements (in cache); an item longer than that (16 heads of over 512 tokens), causal
models, grouped heads and any other dtype go to the fused kernel. It is registered with
transformers' attention interface under `NAME` (with sdpa's mask format) and set on bf16 models
only: the fp32 path keeps the fused kernel, and its exactness.
The probabilities are rounded to bf16 before the second product (the fused kernel keeps them in
fp32): part of the bf16 path's documented deviation (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

NAME = "compat_api_bf16"
LIMIT = 1 << 22  # score elements (heads x queries x keys) of one piece: 16 heads x 512 x 512


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
              dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:  # fmt: skip
    """transformers' attention-function signature; `(output [batch, queries, heads, dim], None)`."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, queries, _ = query.shape
    per_item = heads * queries * key.shape[-2]
    if (
        query.dtype != torch.bfloat16
        or getattr(module, "is_causal", False)
        or key.shape[1] != heads
        or per_item > LIMIT
        or (module.training and dropout)
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)  # fmt: skip
    query = query * (query.shape[-1] ** -0.5 if scaling is None else scaling)  # scaled here: 1/Q of the scores
    blocked = None
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        blocked = ~attention_mask
    output = query.new_empty(batch, queries, heads, value.shape[-1])
    step = max(1, LIMIT // per_item)  # a batch in pieces whose scores stay in cache
    for i in range(0, batch, step):
        scores = torch.matmul(query[i : i + step], key[i : i + step].transpose(-1, -2))
        if blocked is not None:
            scores.masked_fill_(_rows(blocked, i, step), float("-inf"))
        elif attention_mask is not None:
            scores += _rows(attention_mask, i, step).to(scores.dtype)
        output[i : i + step] = torch.matmul(torch.softmax(scores, dim=-1), value[i : i + step]).transpose(1, 2)
    return output, None


def _rows(mask: Any, start: int, count: int) -> Any:
    """The mask's rows for batch items start..start+count (a mask broadcast over the batch as it is)."""
    return mask if mask.shape[0] == 1 else mask[start : start + count]


def use_bf16_attention(model: Any) -> bool:
    """Set this attention on a transformers model (registered once); False where the model does not
    take a registered attention function (it keeps its own)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError, NotImplementedError) as exc:
        log.info("bf16 attention not set (the model keeps %s): %s", config._attn_implementation, exc)
        return False
    return bool(config._attn_implementation == NAME)

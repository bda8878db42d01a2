"""The bf16 backend's attention: close to exact attention (a stated tolerance), masked keys ignored,
the fused kernel kept wherever it does not apply, and set on bf16 models only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from compat_api.core.models import bf16_attention
from compat_api.core.models.bf16_attention import LIMIT, NAME, attention
from compat_api.core.models.cross_encoder import CrossEncoderScorer
from compat_api.core.models.runtime import Runtime, native_bf16

ENCODER = SimpleNamespace(is_causal=False, training=False)
# bf16 rounding of inputs, products and probabilities: measured <= 0.014 (bench.kernels)
TOLERANCE = 0.03


def qkv(batch: int, tokens: int, heads: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(batch * 1000 + tokens)
    return tuple(torch.randn(batch, heads, tokens, 16, generator=generator) for _ in range(3))


def exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("masked", [False, True])
def test_close_to_exact_attention(masked: bool) -> None:
    q, k, v = qkv(3, 40)
    mask = None
    if masked:
        mask = torch.ones(3, 1, 40, 40, dtype=torch.bool)
        mask[1, ..., 25:] = False
    got, weights = attention(ENCODER, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert weights is None and got.dtype == torch.bfloat16 and got.shape == (3, 40, 4, 16)
    assert float((got.float() - exact(q, k, v, mask)).abs().max()) <= TOLERANCE


def test_an_additive_mask_and_a_scale_are_applied() -> None:
    q, k, v = qkv(2, 12)
    mask = torch.zeros(2, 1, 12, 12)
    mask[0, ..., 8:] = float("-inf")
    got, _ = attention(ENCODER, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, scaling=0.5)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5).transpose(1, 2)
    assert float((got.float() - want).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("shared_mask", [False, True])
def test_a_large_batch_runs_in_pieces_with_their_own_mask_rows(monkeypatch: pytest.MonkeyPatch,
                                                               shared_mask: bool) -> None:  # fmt: skip
    monkeypatch.setattr(bf16_attention, "LIMIT", 4 * 40 * 40 * 2)  # two items a piece
    q, k, v = qkv(5, 40)
    mask = torch.ones(1 if shared_mask else 5, 1, 40, 40, dtype=torch.bool)
    mask[-1, ..., 30:] = False
    got, _ = attention(ENCODER, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert got.shape == (5, 40, 4, 16)
    assert float((got.float() - exact(q, k, v, mask)).abs().max()) <= TOLERANCE


def test_masked_keys_do_not_matter() -> None:
    q, k, v = (t.bfloat16() for t in qkv(1, 20))
    mask = torch.ones(1, 1, 20, 20, dtype=torch.bool)
    mask[..., 15:] = False
    k2, v2 = k.clone(), v.clone()
    k2[..., 15:, :], v2[..., 15:, :] = 100.0, -100.0
    assert torch.equal(attention(ENCODER, q, k, v, mask)[0], attention(ENCODER, q, k2, v2, mask)[0])


@pytest.mark.parametrize(
    ("module", "dtype", "batch", "tokens"),
    [
        (ENCODER, torch.float32, 1, 8),  # fp32: the exact kernel
        (SimpleNamespace(is_causal=True, training=False), torch.bfloat16, 1, 8),  # causal models
        (ENCODER, torch.bfloat16, 1, int((LIMIT // 4) ** 0.5) + 1),  # one item too large to stay in cache
    ],
    ids=["fp32", "causal", "large"],
)
def test_the_fused_kernel_is_kept_where_this_does_not_apply(
    monkeypatch: pytest.MonkeyPatch, module: object, dtype: torch.dtype, batch: int, tokens: int
) -> None:
    import transformers.integrations.sdpa_attention as sdpa

    calls: list[object] = []

    def fused(*args: object, **kwargs: object) -> tuple[str, None]:
        calls.append(args)
        return "fused", None

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", fused)
    q = torch.zeros(batch, 4, tokens, 2, dtype=dtype)
    assert attention(module, q, q, q, None) == ("fused", None) and len(calls) == 1


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_set_on_bf16_models_only(tiny_reranker_dir: Path) -> None:
    bf16 = CrossEncoderScorer(str(tiny_reranker_dir), name="b", max_length=64, runtime=Runtime(backend="bf16"))
    fp32 = CrossEncoderScorer(str(tiny_reranker_dir), name="f", max_length=64)
    assert bf16.model.config._attn_implementation == NAME
    assert fp32.model.config._attn_implementation == "sdpa"
    docs = ["paris is the capital of france", "berlin " * 20, "函数计算"]
    alone = [bf16.score("capital of france", [doc])[0] for doc in docs]  # no padding
    assert bf16.score("capital of france", docs) == pytest.approx(alone, abs=0.02)  # padded in one batch


def test_a_model_without_sdpa_keeps_its_attention() -> None:
    assert bf16_attention.use_bf16_attention(torch.nn.Linear(2, 2)) is False

"""PyTorch's default fp32 Linear kernel against oneDNN's on this CPU, and what it gives a whole model.

Prints one table: the GFLOP/s of a Linear layer's matrix product (MiniLM's FFN shapes, 32 texts of
~140 tokens; and bge-reranker-v2-m3's) with `F.linear` (PyTorch's default: MKL's sgemm) and with
oneDNN (`compat_api.core.models.onednn`, what the server runs), then the forward of the bundled
all-MiniLM-L6-v2 (32 texts of ~100 words) with each, its speed-up and the largest difference of
the last hidden states. Then oneDNN's speed-up by the rows (tokens) of a call, at v2-m3's and
MiniLM's Linear shapes: where MKL already runs the CPU's widest vectors (Intel CPUs, and CPUs
without AVX-512), the server's default hands inputs of `MKL_ROWS` rows or more back to MKL. On a
CPU with native bf16 a further
table: attention in bf16 at bge-reranker-v2-m3's shapes (16 heads of 64, one pair of 417
tokens, and longer ones), PyTorch's fused CPU kernel against the bf16 backend's
(`compat_api.core.models.bf16_attention`), with the largest difference of each from fp32.
Medians over rounds, interleaved.

    python -m bench.kernels --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import statistics
import time
from collections.abc import Callable

import torch

from bench.workloads import _text
from compat_api.core.models.bf16_attention import LIMIT, attention
from compat_api.core.models.onednn import MKL_ROWS, _kernel, use_onednn_linears
from compat_api.core.models.runtime import native_bf16
from compat_api.core.registry import bundled_model_path

log = logging.getLogger("bench.kernels")
SHAPES = {  # (tokens, in, out)
    "MiniLM FFN up (4480×384 · 384×1536)": (4480, 384, 1536),
    "MiniLM FFN down (4480×1536 · 1536×384)": (4480, 1536, 384),
    "v2-m3 FFN up (2048×1024 · 1024×4096)": (2048, 1024, 4096),
}


def timed(run: Callable[..., object], repeat: int, *inputs: object) -> float:
    run(*inputs)
    started = time.perf_counter()
    for _ in range(repeat):
        run(*inputs)
    return (time.perf_counter() - started) / repeat


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    rows = []
    with torch.inference_mode():
        for name, (tokens, fan_in, fan_out) in SHAPES.items():
            x, w, b = torch.randn(tokens, fan_in), torch.randn(fan_out, fan_in), torch.randn(fan_out)
            flops = 2 * tokens * fan_in * fan_out
            default, onednn = [], []
            for _ in range(args.rounds):
                default.append(flops / timed(torch.nn.functional.linear, 5, x, w, b) / 1e9)
                onednn.append(flops / timed(_kernel, 5, x, w, b) / 1e9)
            gap = float((torch.nn.functional.linear(x, w, b) - _kernel(x, w, b)).abs().max())
            a, c = statistics.median(default), statistics.median(onednn)
            rows.append(f"| {name} | {a:.0f} GFLOP/s | {c:.0f} GFLOP/s | {c / a:.2f} | {gap:.1e} |")
            log.info("%s: %.0f vs %.0f GFLOP/s", name, a, c)

        from transformers import AutoModel, AutoTokenizer

        path = bundled_model_path()
        tokenizer = AutoTokenizer.from_pretrained(path)
        plain = AutoModel.from_pretrained(path).eval()
        fast = copy.deepcopy(plain)
        use_onednn_linears(fast)
        rng = random.Random(0)
        texts = [_text(rng, rng.randint(90, 110)) for _ in range(32)]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        slow_s, fast_s = [], []
        for _ in range(args.rounds):
            slow_s.append(timed(lambda: plain(**batch), 2))
            fast_s.append(timed(lambda: fast(**batch), 2))
        gap = float((plain(**batch).last_hidden_state - fast(**batch).last_hidden_state).abs().max())
        a, c = statistics.median(slow_s), statistics.median(fast_s)
        rows.append(f"| all-MiniLM-L6-v2 forward, 32 texts of ~100 words | {32 / a:.1f} texts/s | "
                    f"{32 / c:.1f} texts/s | {a / c:.2f} | {gap:.1e} |")  # fmt: skip
    print(f"{args.threads} threads, median of {args.rounds} rounds\n")
    print("| what | PyTorch default (F.linear) | oneDNN | × | max abs difference |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print(
        "\noneDNN's speed-up over F.linear by rows "
        f"(the server's default on Intel and AVX2-only CPUs: MKL from {MKL_ROWS} rows)\n"
    )
    print("| shape (in → out) | " + " | ".join(f"{r} rows" for r in SWEEP_ROWS) + " |")
    print("|---|" + "---|" * len(SWEEP_ROWS))
    print("\n".join(sweep_rows(args.rounds)))
    if native_bf16():
        print("\n| attention, bf16 (batch × heads × tokens) | fused kernel | bf16 backend's | × "
              "| max abs diff from fp32: fused / ours |")  # fmt: skip
        print("|---|---|---|---|---|")
        print("\n".join(attention_rows(args.rounds)))


SWEEP_ROWS = (16, 64, 128, 256, 512, 1024, 2048, 4096)
SWEEP_SHAPES = {"v2-m3 FFN up (1024 → 4096)": (1024, 4096), "v2-m3 FFN down (4096 → 1024)": (4096, 1024),
                "v2-m3 attention (1024 → 1024)": (1024, 1024), "MiniLM FFN up (384 → 1536)": (384, 1536),
                "MiniLM FFN down (1536 → 384)": (1536, 384)}  # fmt: skip


def sweep_rows(rounds: int) -> list[str]:
    """oneDNN's speed-up (time of F.linear ÷ time of oneDNN) for each shape and row count."""
    rows = []
    with torch.inference_mode():
        for name, (fan_in, fan_out) in SWEEP_SHAPES.items():
            w, b = torch.randn(fan_out, fan_in), torch.randn(fan_out)
            cells = []
            for count in SWEEP_ROWS:
                x = torch.randn(count, fan_in)
                repeat = max(3, 20_000 // count)
                default, onednn = [], []
                for _ in range(rounds):
                    default.append(timed(torch.nn.functional.linear, repeat, x, w, b))
                    onednn.append(timed(_kernel, repeat, x, w, b))
                cells.append(f"{statistics.median(default) / statistics.median(onednn):.2f}")
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
            log.info("%s: %s", name, " ".join(cells))
    return rows


def attention_rows(rounds: int) -> list[str]:
    """The bf16 backend's attention against PyTorch's fused kernel, where it applies (up to LIMIT)."""
    from types import SimpleNamespace

    fused = torch.nn.functional.scaled_dot_product_attention
    module = SimpleNamespace(is_causal=False, training=False)
    rows = []
    with torch.inference_mode():
        for batch, tokens in ((1, 417), (1, 200), (8, 128), (1, 512)):
            assert batch * 16 * tokens * tokens <= LIMIT
            q, k, v = (torch.randn(batch, 16, tokens, 64, generator=torch.Generator().manual_seed(i)) for i in range(3))
            mask = torch.ones(batch, 1, tokens, tokens, dtype=torch.bool)
            mask[0, ..., tokens - tokens // 8 :] = False  # the first item padded
            exact = fused(q, k, v, attn_mask=mask).transpose(1, 2)
            q16, k16, v16 = (t.bfloat16() for t in (q, k, v))
            flops = 4 * batch * 16 * tokens * tokens * 64
            a_s, b_s = [], []
            for _ in range(rounds):
                a_s.append(timed(fused, 10, q16, k16, v16, mask))
                b_s.append(timed(attention, 10, module, q16, k16, v16, mask))
            a, b = statistics.median(a_s), statistics.median(b_s)
            gap_a = float((fused(q16, k16, v16, attn_mask=mask).transpose(1, 2).float() - exact).abs().max())
            gap_b = float((attention(module, q16, k16, v16, mask)[0].float() - exact).abs().max())
            rows.append(f"| {batch} × 16 × {tokens} | {flops / a / 1e9:.0f} GFLOP/s | {flops / b / 1e9:.0f} GFLOP/s | "
                        f"{a / b:.2f} | {gap_a:.4f} / {gap_b:.4f} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()

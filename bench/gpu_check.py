"""GPU checks (run on a machine with CUDA; CI has none): the CUDA and fp16 paths of the scorer,
the engine and the app, against FlagEmbedding's own scores computed on the CPU.

    python -m bench.gpu_check
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "", "cats", "berlin is the capital of germany " * 40, "函数计算"]


def main() -> int:
    import torch
    import transformers
    from fastapi.testclient import TestClient
    from FlagEmbedding import FlagReranker

    from compat_api.api.app import create_app
    from compat_api.core.engine import BatchEngine
    from compat_api.core.errors import ModelLoadError
    from compat_api.core.models.base import resolve_device
    from compat_api.core.models.cross_encoder import CrossEncoderScorer
    from compat_api.core.models.runtime import Runtime
    from compat_api.core.ranking import Normalization, normalize
    from compat_api.settings import Settings
    from tests.tiny_models import build_tiny_xlmr_reranker

    print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    model = build_tiny_xlmr_reranker(Path(tempfile.mkdtemp()) / "tiny-bge-reranker")
    reference = FlagReranker(str(model), use_fp16=False, devices=["cpu"], max_length=128)
    expected = [float(s) for s in reference.compute_score([[QUERY, d] for d in DOCS], normalize=True)]
    check(resolve_device("auto") == "cuda", "device auto picks CUDA")

    fp32 = CrossEncoderScorer(str(model), name="t", max_length=128, runtime=Runtime(device="cuda"))
    got = normalize(fp32.score(QUERY, DOCS), Normalization.SIGMOID)
    worst = max(abs(a - b) for a, b in zip(got, expected, strict=True))
    check(
        fp32.info.dtype == "float32" and worst < 1e-4, f"CUDA fp32 equals FlagEmbedding on CPU (max diff {worst:.2e})"
    )

    async def mixed(scorer: CrossEncoderScorer) -> list[float]:
        engine = BatchEngine(scorer, max_batch_tokens=32768, max_batch_size=64)
        engine.start()
        others = [engine.score(f"other {i}", [f"document {i} " * (i % 7 + 1)] * 3) for i in range(40)]
        (mine, _), *_ = await asyncio.gather(engine.score(QUERY, DOCS), *others)
        await engine.close()
        return normalize(mine, Normalization.SIGMOID)

    worst = max(abs(a - b) for a, b in zip(asyncio.run(mixed(fp32)), expected, strict=True))
    check(worst < 1e-4, f"CUDA fp32 batched with 40 other requests equals FlagEmbedding (max diff {worst:.2e})")

    fp16 = CrossEncoderScorer(str(model), name="t", max_length=128, runtime=Runtime(device="cuda", fp16=True))
    got16 = normalize(fp16.score(QUERY, DOCS), Normalization.SIGMOID)
    worst = max(abs(a - b) for a, b in zip(got16, expected, strict=True))
    check(fp16.info.dtype == "float16" and worst < 2e-2, f"CUDA fp16 close to fp32 (max diff {worst:.2e})")

    settings = Settings(model_path=str(model), device="auto", max_length=128)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()["models"][0]
        check(
            (health["device"], health["dtype"]) == ("cuda", "float16"),
            f"app on auto: {health['device']} {health['dtype']}",
        )
        response = client.post("/rerank", json={"query": QUERY, "compare_to": DOCS})
        data = response.json().get("data", [])
        check(response.status_code == 200 and len(data) == len(DOCS), "app /rerank answers on the GPU")
    for backend in ("int8", "onnx"):
        try:
            CrossEncoderScorer(
                str(model), name="t", max_length=128, runtime=Runtime(device="cuda", fp16=True, backend=backend)
            )
            check(False, f"{backend} refused on CUDA")
        except ModelLoadError as exc:
            check("CPU only" in exc.message, f"{backend} refused on CUDA: {exc.message}")
    print("failures:", failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Faster int8 for the v2-m3-size model than the `int8` backend? Every candidate's forward, side by side.

The `int8` backend runs ONNX Runtime's dynamic int8 (int8 weights, activations quantized per call,
VNNI kernels); its matrix products already run near this CPU's VNNI peak, and what remains of its
time is attention, LayerNorm and GELU in fp32. This measures what else a CPU runtime offers, each
in its own process (its peak resident memory is its own), on the exports that `python -m
bench.realsize --backends int8,openvino` leaves in bench/.out/realsize-cache:

- `torch fp32`: the default backend's forward (oneDNN linears), the reference of the × column;
- `torch bf16`: the `bf16` backend's forward;
- `ort int8`: the `int8` backend's graph in ONNX Runtime;
- `ov int8 weights`: OpenVINO with int8 weights (NNCF `compress_weights`, INT8_ASYM) and its
  dynamic quantization of activations (group 128), the rest in bf16 (the `openvino-int8` backend
  before its static quantization);
- `ov fp32`, `ov bf16`: OpenVINO on the fp32 IR, compiled in fp32 (the `openvino` backend) and
  with its bf16 precision hint;
- `ov int8 static`: the `openvino-int8` backend's quantization (NNCF's post-training quantization,
  model type TRANSFORMER: activations too, attention's products included, with scales calibrated
  on the bundled real text of compat_api/core/models/calibration.py; embedding tables left fp32),
  the rest in bf16.

Printed: median forward time of one pair of 417 tokens and of 5 pairs of 404 tokens (the batch
the server forms for a 16-document request), × torch fp32, peak RSS of the process (loading,
compiling and the forwards) and the largest logit difference from torch fp32 on the 5 pairs.

    python -m bench.int8_options --rounds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import ROOT

log = logging.getLogger("bench.int8_options")
CACHE = ROOT / "bench" / ".out" / "realsize-cache"
MODEL = ROOT / "bench" / ".models" / "m3-size"
VARIANTS = ("torch fp32", "torch bf16", "ov fp32", "ov bf16", "ort int8", "ov int8 weights", "ov int8 static")
SHAPES = ((1, 417), (5, 404))


def inputs(batch: int, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(5, 250_000, (batch, tokens))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def export(kind: str) -> Path:
    name = f"model.{'xml' if kind == 'openvino' else 'onnx'}"
    # the kind, then the 16 hex digits of its version key: "openvino" must not match "openvino-int8"
    found = sorted(p for p in CACHE.glob(f"*/{kind}-*/{name}") if re.fullmatch(f"{kind}-[0-9a-f]{{16}}", p.parent.name))
    if not found:
        raise SystemExit(f"no {kind} export in {CACHE}: run python -m bench.realsize --backends int8,openvino first")
    return found[-1]


def runner(variant: str, work: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A function from a batch to its logits, for one variant (loaded and compiled here)."""
    if variant.startswith("torch"):
        import torch

        from compat_api.core.models.cross_encoder import CrossEncoderScorer
        from compat_api.core.models.runtime import Runtime

        runtime = Runtime(backend="bf16") if variant.endswith("bf16") else Runtime()
        net = CrossEncoderScorer(str(MODEL), name="m", max_length=1024, runtime=runtime).model

        def run_torch(feed: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
                return np.asarray(net(**tensors, return_dict=True).logits.float().numpy())

        return run_torch
    if variant == "ort int8":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(export("onnx-int8")), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        return lambda feed: session.run(None, {k: v for k, v in feed.items() if k in names})[0]
    import nncf  # type: ignore[import-not-found,import-untyped,unused-ignore]
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(export("openvino")))
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                              "INFERENCE_NUM_THREADS": 2}  # fmt: skip
    xml = work / "model.xml"
    if variant == "ov int8 static":  # the openvino-int8 backend's own quantization, on its calibration set
        from transformers import AutoTokenizer

        from compat_api.core.models.calibration import calibration_inputs
        from compat_api.core.models.openvino import quantize

        names = {p.get_any_name() for p in model.inputs}
        ov.save_model(model, str(xml), compress_to_fp16=False)
        del model
        quantize(work, calibration_inputs(AutoTokenizer.from_pretrained(str(MODEL)), pairs=True, names=names))
    else:
        if variant == "ov fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        elif variant == "ov int8 weights":
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 128
        ov.save_model(model, str(xml), compress_to_fp16=False)
        del model
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
    request = compiled.create_infer_request()
    wanted = {p.get_any_name() for p in compiled.inputs}
    return lambda feed: np.asarray(request.infer({k: v for k, v in feed.items() if k in wanted})[0])


def one(variant: str, rounds: int) -> dict[str, Any]:
    """Measure one variant in this process."""
    with tempfile.TemporaryDirectory() as work:
        run = runner(variant, Path(work))
        result: dict[str, Any] = {}
        for batch, tokens in SHAPES:
            feed = inputs(batch, tokens)
            run(feed)
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                logits = run(feed)
                times.append(time.perf_counter() - started)
            result[f"{batch}x{tokens}"] = statistics.median(times)
        result["logits"] = np.asarray(logits, dtype=np.float64).reshape(-1).tolist()
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+)", status)
    result["peak_mib"] = int(match.group(1)) / 1024 if match else float("nan")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.rounds)))
        return
    results = {}
    for variant in args.variants.split(","):
        log.info("measuring %s", variant)
        done = subprocess.run([sys.executable, "-m", "bench.int8_options", "--one", variant, "--rounds",
                               str(args.rounds)], cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            log.warning("%s failed: %s", variant, done.stderr.strip().splitlines()[-1:] or done.returncode)
            continue
        results[variant] = json.loads(line.removeprefix("RESULT "))
        time.sleep(1)  # let the previous process's threads go before the next one measures
    base = results.get("torch fp32")
    print(f'Command: `python -m bench.int8_options --rounds {args.rounds} --variants "{args.variants}"`\n')
    print("| variant | 1 × 417 ms | 5 × 404 ms | × torch fp32 (5 × 404) | peak RSS MiB | max Δlogit vs fp32 |")
    print("|---|---|---|---|---|---|")
    for variant, got in results.items():
        ratio = base["5x404"] / got["5x404"] if base else float("nan")
        gap = max(abs(a - b) for a, b in zip(got["logits"], base["logits"], strict=True)) if base else float("nan")
        print(f"| {variant} | {got['1x417'] * 1000:.0f} | {got['5x404'] * 1000:.0f} | {ratio:.2f} | "
              f"{got['peak_mib']:.0f} | {gap:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()

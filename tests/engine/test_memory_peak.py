"""The exact path's real peak memory stays under ``max_memory``.

``max_memory`` promises that the exact path works in chunks to stay under that many bytes. This
measures the real thing, not the planner's estimate: the resident memory of a fresh process,
sampled by a thread every half millisecond while ``decompose`` runs, minus its value just before.
The case is one long example whose unchunked decomposition needs several times the budget (its
feed-forward pieces alone, ``N * N * d_ff`` floats, are more than twice the budget), so the budget
forces chunking. The same case without a budget shows that the measurement sees the difference.

The child process sets ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors go back to the system at
once: the resident size then follows the live tensors rather than the allocator's free lists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc (Linux)"),
    pytest.mark.slow,  # measures the peak memory of a child process
]

SEQ = 192
HIDDEN = 32
FFN = 512
BUDGET_MIB = 40


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_growth(function) -> tuple[int, object]:
    """Run ``function()``; return (peak resident bytes during it minus before it, its result)."""
    before = resident_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = function()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], resident_bytes())
    return peak[0] - before, result


def measure() -> dict:
    """In the child process: the peak growth of one exact decomposition with and without a budget."""
    import torch
    import transformers as tf

    from captum_decompx import DecompX

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=50,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=FFN,
        max_position_embeddings=SEQ,
        num_labels=2,
    )
    model = tf.BertForSequenceClassification(config).eval()
    ids = torch.randint(2, 50, (1, SEQ), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    budget = BUDGET_MIB * 2**20
    DecompX(model, max_memory=budget).decompose(ids[:, :16], (mask[:, :16],))  # warm up lazy initialisation
    chunked_peak, chunked = peak_growth(lambda: DecompX(model, max_memory=budget).decompose(ids, (mask,)))
    unchunked_peak, unchunked = peak_growth(lambda: DecompX(model).decompose(ids, (mask,)))
    return {
        "budget": budget,
        "chunked_peak": chunked_peak,
        "unchunked_peak": unchunked_peak,
        "difference": float((chunked.attributions - unchunked.attributions).abs().max()),
        "logit_scale": float(unchunked.logits.abs().max()),
    }


@pytest.fixture(scope="module")
def measurement() -> dict:
    """Peak growths measured in a fresh process (see the module docstring), in bytes."""
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=environment, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["MiB"] = {key: round(result[key] / 2**20, 1) for key in ("budget", "chunked_peak", "unchunked_peak")}
    return result


def test_the_budget_forces_chunking_and_changes_no_value(measurement):
    # without the budget the same decomposition needs more than the budget: the case needs chunks
    assert measurement["unchunked_peak"] > measurement["budget"], measurement["MiB"]
    assert measurement["difference"] <= 1e-5 * max(1.0, measurement["logit_scale"]), measurement


def test_real_peak_memory_of_the_exact_path_stays_under_max_memory(measurement):
    assert measurement["chunked_peak"] <= measurement["budget"], measurement["MiB"]


if __name__ == "__main__":
    print(json.dumps(measure()))

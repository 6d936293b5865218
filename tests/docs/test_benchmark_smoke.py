"""Smoke tests of ``benchmarks/speed.py``: it runs end to end on a tiny model and writes its table
and plot; points it cannot run are recorded as skipped, not crashed on. No timing assertions."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
from support.paths import BENCHMARKS

SPEED_PATH = str(BENCHMARKS / "speed.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("benchmark_speed", SPEED_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under ``heading``."""
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow  # a benchmark smoke run
def test_quick_run_writes_table_and_plot(speed, tmp_path):
    raw = tmp_path / "raw.json"
    code = speed.main(["--quick", "--lengths", "8,16", "--repeats", "1", "--out", str(tmp_path), "--json", str(raw)])
    assert code == 0

    png = (tmp_path / "speed.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000

    markdown = (tmp_path / "speed.md").read_text()
    assert "python benchmarks/speed.py --quick" in markdown  # the exact command
    assert "torch threads" in markdown and "load average" in markdown
    rows = _table_rows(markdown, "## Wall time per call")
    assert [(row[0], row[1], row[2]) for row in rows] == [("bert-tiny", "1", "8"), ("bert-tiny", "1", "16")]
    header = markdown.split("## Wall time per call", 1)[1].splitlines()[2]
    assert "fast / GxA" in header and "IG / fast" in header and "exact / IG" in header
    for row in rows:
        times = [float(cell) for cell in row[3:8]]  # every method measured
        ratios = [float(cell) for cell in row[8:11]]
        assert all(value > 0 for value in times + ratios)
        # the ratio columns are the ratios of the time columns (exact, fast, lig, gxa, saliency)
        exact, fast, lig, gxa, _ = times
        assert ratios[0] == pytest.approx(fast / gxa, rel=0.02, abs=0.006)
        assert ratios[1] == pytest.approx(lig / fast, rel=0.02, abs=0.006)
        assert ratios[2] == pytest.approx(exact / lig, rel=0.02, abs=0.006)
    memory_rows = _table_rows(markdown, "## Peak memory growth")
    assert len(memory_rows) == 2 and all(len(row) == 8 for row in memory_rows)

    results = json.loads(raw.read_text())["results"]
    assert {(r["n"], r["method"]) for r in results} == {(n, m) for n in (8, 16) for m in speed.METHODS}
    assert all(r["status"] == "ok" and r["time_s"] > 0 and r["cpu_s"] >= 0 for r in results)
    lig = [r for r in results if r["method"] == "lig"]
    assert all(r["note"] == "internal_batch_size=50" for r in lig)  # tiny rows: all 50 steps in one pass


@pytest.mark.slow  # a benchmark smoke run
def test_points_over_the_limits_are_skipped_not_crashed(speed, tmp_path):
    # A one-byte memory limit skips every point; a tiny time cap would skip the rest, so the exact
    # point is exempted to check that exempt points still run.
    code = speed.main([
        "--quick", "--lengths", "16", "--methods", "exact,gxa", "--out", str(tmp_path / "memory"),
        "--memory-limit", "1",
    ])
    assert code == 0
    rows = _table_rows((tmp_path / "memory" / "speed.md").read_text(), "## Wall time per call")
    assert rows[0][3].startswith("skipped: needs") and rows[0][4].startswith("skipped: needs")

    code = speed.main([
        "--quick", "--lengths", "16", "--methods", "exact,gxa", "--out", str(tmp_path / "cap"),
        "--max-point-seconds", "1e-9", "--always-run", "bert-tiny:1:16:exact",
    ])
    assert code == 0
    markdown = (tmp_path / "cap" / "speed.md").read_text()
    exact_cell, gxa_cell = _table_rows(markdown, "## Wall time per call")[0][3:5]
    assert float(exact_cell) > 0
    assert gxa_cell.startswith("skipped: est.") and "per-point cap" in gxa_cell


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_sees_a_freed_allocation(speed):
    torch = pytest.importorskip("torch")
    memory = speed.PeakMemory("cpu")
    memory.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, freed before stop()
    del block
    grown = memory.stop()
    assert 60 * 2**20 <= grown <= 100 * 2**20

    memory.start()
    nothing = memory.stop()
    assert nothing < 16 * 2**20  # the previous block is not counted again


def test_lig_chunks_split_the_steps_evenly_and_respect_the_budget(speed):
    shape = speed.Shape(layers=12, hidden=768, heads=12, ffn=3072)
    for batch in (1, 8):
        for seq in (16, 128, 512):
            steps = speed.lig_steps_per_chunk(shape, batch, seq, 2 * 2**30)
            assert 1 <= steps <= speed.LIG_STEPS
            chunks = -(-speed.LIG_STEPS // steps)
            assert steps * chunks - speed.LIG_STEPS < chunks  # equal chunks up to rounding
            if steps > 1:
                assert steps * batch * speed.activation_bytes_per_row(shape, seq) <= 2 * 2**30


@pytest.mark.slow  # a benchmark smoke run
def test_decoder_section_times_both_methods_on_a_llama_prompt(speed, tmp_path):
    code = speed.main(["--decoder", "--lengths", "16", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)])
    assert code == 0
    markdown = (tmp_path / "speed_decoder.md").read_text()
    assert "LlamaForCausalLM" in markdown and "LayerGradientXActivation" in markdown
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| 16")]
    assert len(rows) == 1
    seq, fast, gxa, ratio = (float(cell) for cell in rows[0])
    assert seq == 16 and fast > 0 and gxa > 0
    assert ratio == pytest.approx(fast / gxa, rel=0.05, abs=0.01)


@pytest.mark.slow  # a benchmark smoke run
def test_the_encoder_decoder_speed_benchmark_writes_its_table(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_speed_seq2seq", str(BENCHMARKS / "speed_seq2seq.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    report = tmp_path / "speed_seq2seq.md"
    arguments = ["--repeats", "1", "--source", "4", "--target", "2", "--n-steps", "2", "--models", "t5-small"]
    assert module.main(arguments + ["--output", str(report)]) == 0
    rows = [line for line in report.read_text(encoding="utf-8").splitlines() if line.startswith("| DecompX")]
    assert len(rows) == 4 and all(float(row.split("|")[2]) > 0 for row in rows)

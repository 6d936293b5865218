"""``captum-decompx evaluate --out DIR`` / ``evaluate_dataset``: per-example metric rows in Parquet
parts, under torchrun (gloo on CPU), resumable; the aggregate equals ``evaluate_faithfulness``."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from support.classifiers import make_model, make_word_tokenizer
from support.paths import REPOSITORY

from captum_decompx.runs.attribute import DatasetAttributionError
from captum_decompx.runs.evaluate import evaluate_dataset

WORDS = "good bad film movie plot dull great boring fun story actor acting music scene long short not very really quite".split()
N_EXAMPLES = 14
METHODS = ["decompx", "gxi"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from captum_decompx import evaluation

    root = tmp_path_factory.mktemp("dataset_evaluation")
    make_model("bert", seed=7, num_labels=2).save_pretrained(root / "model")
    make_word_tokenizer(WORDS).save_pretrained(root / "model")
    rng = random.Random(3)
    rows = [(rng.randint(0, 1), " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))) for _ in range(N_EXAMPLES)]
    with open(root / "data.tsv", "w", encoding="utf-8") as handle:
        handle.write("label\ttext\n")
        handle.writelines(f"{label}\t{text}\n" for label, text in rows)
    model = AutoModelForSequenceClassification.from_pretrained(root / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    expected = evaluation.evaluate_faithfulness(
        model, tokenizer, [t for _, t in rows], [label for label, _ in rows], evaluation.build_methods(METHODS, model, tokenizer), show_progress=False
    )
    return {"root": root, "expected": expected}


def assert_same_result(actual, expected) -> None:
    assert list(actual.methods) == list(expected.methods)
    assert actual.n_examples == expected.n_examples and actual.accuracy == pytest.approx(expected.accuracy)
    for name in expected.methods:
        got, want = actual.methods[name], expected.methods[name]
        for field in ("aopc_most", "aopc_least", "accuracy_most", "accuracy_least", "aopc_most_per_example", "aopc_least_per_example"):
            np.testing.assert_allclose(getattr(got, field), getattr(want, field), atol=1e-5, err_msg=f"{name} {field}")
        assert got.keep_top_accuracy == pytest.approx(want.keep_top_accuracy)
        assert got.comprehensiveness == pytest.approx(want.comprehensiveness, abs=1e-5)
        assert got.sufficiency == pytest.approx(want.sufficiency, abs=1e-5)


def test_parts_aggregate_to_evaluate_faithfulness_and_resume(workspace, tmp_path):
    root, out = workspace["root"], tmp_path / "out"
    result = evaluate_dataset(root / "data.tsv", out, model=str(root / "model"), methods=METHODS, rows_per_part=4, batch_size=3, show_progress=False)
    assert_same_result(result, workspace["expected"])
    table = pq.read_table(out)
    assert table.num_rows == N_EXAMPLES * len(METHODS)
    assert sorted(table.column("example").to_pylist()) == sorted(list(range(N_EXAMPLES)) * len(METHODS))
    # A lost part is computed again; the aggregate is unchanged.
    (out / "part-00001.parquet").unlink()
    again = evaluate_dataset(root / "data.tsv", out, model=str(root / "model"), methods=METHODS, show_progress=False)
    assert_same_result(again, workspace["expected"])
    with pytest.raises(DatasetAttributionError, match=r"options\.methods: recorded 'decompx,gxi', this run 'decompx'"):
        evaluate_dataset(root / "data.tsv", out, model=str(root / "model"), methods=["decompx"], show_progress=False)


def test_a_damaged_part_is_logged_and_computed_again(workspace, tmp_path):
    root, out = workspace["root"], tmp_path / "out"
    evaluate_dataset(root / "data.tsv", out, model=str(root / "model"), methods=METHODS, rows_per_part=4, show_progress=False)
    damaged = out / "part-00002.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    lines: list[str] = []
    again = evaluate_dataset(root / "data.tsv", out, model=str(root / "model"), methods=METHODS, show_progress=False, log=lines.append)
    assert_same_result(again, workspace["expected"])
    n_parts = -(-N_EXAMPLES // 4)
    assert lines[0].startswith(f"output: {out}: {n_parts} parts of up to 4 examples; {n_parts - 1} complete, 1 damaged (computed again)")
    assert lines[0].endswith(f"evaluating 4 examples x {len(METHODS)} methods on 1 process")
    assert lines[1].startswith("  part part-00002.parquet: unreadable") and lines[1].endswith("; computing it again")


@pytest.mark.slow  # torchrun: spawns distributed processes
def test_torchrun_two_processes_rank_0_prints_the_table(workspace, tmp_path):
    root = workspace["root"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPOSITORY) + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(port), "-m", "captum_decompx",
        "evaluate", "--data", str(root / "data.tsv"), "--out", str(tmp_path / "out"), "--model", str(root / "model"),
        "--methods", ",".join(METHODS), "--no-progress",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| DecompX |") == 1 and "on 2 processes" in done.stdout
    resumed = evaluate_dataset(root / "data.tsv", tmp_path / "out", model=str(root / "model"), methods=METHODS, show_progress=False)
    assert_same_result(resumed, workspace["expected"])

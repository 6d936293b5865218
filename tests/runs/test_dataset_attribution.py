"""``captum-decompx attribute`` / ``attribute_dataset``: Parquet parts, torchrun, resuming, bad input.

A tiny random BERT classifier and a word-level tokenizer are saved to a temporary folder so that
``--model PATH`` works in subprocesses. The values are checked against DecompX run on each row alone
(no padding, no bucketing) and the model's own logits; the distributed runs (gloo on CPU) against a
single-process run.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from support.classifiers import make_model, make_word_tokenizer
from support.paths import REPOSITORY
from torch import nn

from captum_decompx import DecompX
from captum_decompx.runs.attribute import DatasetAttributionError, attribute_dataset, default_rows_per_part
from captum_decompx.runs.distributed import balance
from captum_decompx.runs.tables import DataFileError, read_text_table

WORDS = "good bad film movie plot dull great boring fun story actor acting music scene long short not very really quite".split()
N_ROWS = 40
ROWS_PER_PART = 6  # 7 parts, the last one short


def _sentences(count: int, seed: int) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    return [(rng.randint(0, 1), " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))) for _ in range(count)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny classifier (``model/``), the data as TSV, and a single-process run of it (``reference/``)."""
    root = tmp_path_factory.mktemp("dataset_attribution")
    model = make_model("bert", seed=5, num_labels=2)
    tokenizer = make_word_tokenizer(WORDS)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = _sentences(N_ROWS, seed=1)
    with open(root / "data.tsv", "w", encoding="utf-8") as handle:
        handle.write("label\ttext\n")
        handle.writelines(f"{label}\t{text}\n" for label, text in rows)
    result = attribute_dataset(root / "data.tsv", root / "reference", model=str(root / "model"), rows_per_part=ROWS_PER_PART, batch_size=4, show_progress=False)
    return {"root": root, "rows": rows, "result": result, "reference": pq.read_table(root / "reference").sort_by("id")}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPOSITORY) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _command(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "attribute", "--data", str(root / "data.tsv"), "--out", str(out), "--model", str(root / "model"),
        "--rows-per-part", str(ROWS_PER_PART), "--batch-size", "4", "--no-progress", *extra,
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_same_table(actual: pa.Table, expected: pa.Table, atol: float = 1e-5) -> None:
    """Same ids (each once), texts, tokens, labels and predictions; float columns within ``atol``."""
    actual = actual.sort_by("id")
    assert actual.column("id").to_pylist() == list(range(expected.num_rows))
    assert actual.schema.names == expected.schema.names
    for name in ("text", "tokens", "input_ids", "prediction", "label"):
        assert actual.column(name).to_pylist() == expected.column(name).to_pylist(), name
    for name in ("logits", "bias", "attributions"):
        for got, want in zip(actual.column(name).to_pylist(), expected.column(name).to_pylist()):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=atol, rtol=0, err_msg=name)


# --------------------------------------------------------------------------------------------
# Values


def test_rows_equal_decompx_on_each_row_alone(workspace):
    """Batched, padded and length-sorted rows equal DecompX on the row alone, under the row's id."""
    root, table = workspace["root"], workspace["reference"]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(root / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    explainer = DecompX(model)
    assert table.num_rows == N_ROWS
    assert table.schema.field("attributions").type == pa.list_(pa.list_(pa.float32()))
    assert table.schema.field("id").type == pa.int64() and table.schema.field("label").type == pa.int64()
    for row, (label, text) in zip(table.to_pylist(), workspace["rows"]):
        encoded = tokenizer(text, return_tensors="pt")
        out = explainer.decompose(encoded["input_ids"], (encoded["attention_mask"], encoded["token_type_ids"]))
        with torch.no_grad():
            logits = model(**encoded).logits[0]
        assert row["text"] == text and row["label"] == label
        assert row["input_ids"] == encoded["input_ids"][0].tolist()
        assert row["tokens"] == tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
        attributions = np.asarray(row["attributions"])
        assert attributions.shape == (len(row["tokens"]), 2)
        np.testing.assert_allclose(attributions, out.attributions[0].numpy(), atol=2e-5)
        np.testing.assert_allclose(row["logits"], logits.numpy(), atol=2e-5)
        np.testing.assert_allclose(attributions.sum(0) + np.asarray(row["bias"]), row["logits"], atol=2e-5)
        assert row["bias"] == [0.0, 0.0]
        assert row["prediction"] == int(logits.argmax())


def test_fast_method_bias_share_and_completeness(workspace, tmp_path):
    root = workspace["root"]
    result = attribute_dataset(root / "data.tsv", tmp_path / "fast", model=str(root / "model"), algorithm="fast", rows_per_part=20, show_progress=False)
    table = result.read_table()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(root / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    fast = DecompX(model, include_biases=False, algorithm="fast")
    for row in table.to_pylist()[:8]:
        encoded = tokenizer(row["text"], return_tensors="pt")
        out = fast.decompose(encoded["input_ids"], (encoded["attention_mask"], encoded["token_type_ids"]))
        np.testing.assert_allclose(row["attributions"], out.attributions[0].numpy(), atol=2e-5)
        np.testing.assert_allclose(row["bias"], out.bias[0].numpy(), atol=2e-5)
        assert np.abs(np.asarray(row["bias"])).max() > 1e-3  # the biases' share is not zero without them
        np.testing.assert_allclose(np.asarray(row["attributions"]).sum(0) + row["bias"], row["logits"], atol=2e-5)


def test_readable_with_pyarrow_and_datasets(workspace, tmp_path):
    reference_dir = workspace["root"] / "reference"
    assert sorted(path.name for path in reference_dir.iterdir())[0] == ".manifest.json"
    assert pq.read_table(reference_dir).num_rows == N_ROWS
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_dir=str(reference_dir), cache_dir=str(tmp_path / "cache"))["train"]
    assert sorted(loaded["id"]) == list(range(N_ROWS))
    assert set(loaded.column_names) == set(workspace["reference"].schema.names)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_other_formats_give_the_same_rows(workspace, tmp_path, suffix):
    rows = workspace["rows"][:5]
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "gold"])
            writer.writerows([(text, label) for label, text in rows])
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"sentence": text, "gold": label}) + "\n" for label, text in rows), encoding="utf-8")
    else:
        pq.write_table(pa.table({"sentence": [t for _, t in rows], "gold": [label for label, _ in rows]}), path)
    result = attribute_dataset(path, tmp_path / "out", model=str(workspace["root"] / "model"), label_column="gold", show_progress=False)
    assert_same_table(result.read_table(), workspace["reference"].slice(0, 5))


def test_sentence_pairs_have_a_text_pair_column(workspace, tmp_path):
    rows = workspace["rows"][:4]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"a": text, "b": text[::-1] or "x"}) + "\n" for _, text in rows), encoding="utf-8")
    table = attribute_dataset(path, tmp_path / "out", model=str(workspace["root"] / "model"), text_column="a", text_pair_column="b", show_progress=False).read_table()
    assert "text_pair" in table.schema.names and "label" not in table.schema.names
    first = table.to_pylist()[0]
    assert first["tokens"].count("[SEP]") == 2
    np.testing.assert_allclose(np.asarray(first["attributions"]).sum(0), first["logits"], atol=2e-5)


# --------------------------------------------------------------------------------------------
# Distributed runs (gloo on CPU)


@pytest.mark.slow  # torchrun: spawns distributed processes
def test_torchrun_two_processes_equal_one(workspace, tmp_path):
    root = workspace["root"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port())]
    done = subprocess.run([*torchrun, "-m", "captum_decompx", *_command(root, tmp_path / "out")], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 processes" in done.stdout
    assert_same_table(pq.read_table(tmp_path / "out"), workspace["reference"])


@pytest.mark.slow  # torchrun: spawns distributed processes
def test_two_node_rendezvous_on_localhost(workspace, tmp_path):
    root = workspace["root"]
    endpoint = f"127.0.0.1:{_free_port()}"
    launches = [
        subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node-rank", str(node),
                "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "test-two-nodes",
                "-m", "captum_decompx", *_command(root, tmp_path / "out"),
            ],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for node in (0, 1)
    ]
    outputs = [launch.communicate(timeout=300) for launch in launches]
    for launch, (_, stderr) in zip(launches, outputs):
        assert launch.returncode == 0, stderr[-3000:]
    assert sum("on 2 processes" in stdout for stdout, _ in outputs) == 1  # rank 0 reports, once
    assert_same_table(pq.read_table(tmp_path / "out"), workspace["reference"])


# --------------------------------------------------------------------------------------------
# Crashes and resuming


@pytest.mark.slow  # spawns and kills a child process
def test_kill_9_then_resume_gives_the_complete_table(workspace, tmp_path):
    root, out = workspace["root"], tmp_path / "out"
    # One row per part and per batch: many small parts, so the kill lands between the first and the last.
    command = [sys.executable, "-m", "captum_decompx", *_command(root, out)]
    command[command.index("--rows-per-part") + 1] = "1"
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = len(list(out.glob("part-*.parquet")))
    assert 1 <= written < N_ROWS, f"the kill should land mid-run ({written} parts written)"
    # What a kill during a write leaves behind: a temporary file. It is removed, never read.
    (out / ".part-00039.parquet.tmp-host-1").write_bytes(b"PAR1 half a part")
    result = attribute_dataset(root / "data.tsv", out, model=str(root / "model"), batch_size=4, show_progress=False)
    assert result.rows_per_part == 1  # the layout of the folder, from its manifest
    assert result.reused_parts == written and result.computed_rows == N_ROWS - written
    assert not [path for path in out.iterdir() if ".tmp-" in path.name]
    assert_same_table(pq.read_table(out), workspace["reference"])


def test_damaged_parts_are_detected_and_computed_again(workspace, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(workspace["root"] / "reference", out)
    truncated = out / "part-00001.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    flipped = out / "part-00004.parquet"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a data page: only the page checksum sees it
    flipped.write_bytes(bytes(data))
    short = out / "part-00002.parquet"
    pq.write_table(pq.read_table(short).slice(0, 3), short)  # a well-formed part with rows missing
    result = attribute_dataset(workspace["root"] / "data.tsv", out, model=str(workspace["root"] / "model"), show_progress=False)
    assert sorted(result.redone_parts) == [1, 2, 4]
    assert "3 rows instead of 6" in result.redone_parts[2]
    assert result.computed_rows == 3 * ROWS_PER_PART and result.reused_parts == 4
    assert_same_table(pq.read_table(out), workspace["reference"])


def test_changed_model_options_or_input_are_refused(workspace, tmp_path):
    import shutil

    root, out = workspace["root"], tmp_path / "out"
    shutil.copytree(root / "reference", out)
    before = sorted((path.name, path.stat().st_mtime_ns) for path in out.iterdir())
    with pytest.raises(DatasetAttributionError, match=r"options\.algorithm: recorded 'exact', this run 'fast'"):
        attribute_dataset(root / "data.tsv", out, model=str(root / "model"), algorithm="fast", show_progress=False)
    with pytest.raises(DatasetAttributionError, match=r"layout\.rows_per_part: recorded 6, this run 5"):
        attribute_dataset(root / "data.tsv", out, model=str(root / "model"), rows_per_part=5, show_progress=False)
    other = tmp_path / "other-model"
    make_model("bert", seed=6, num_labels=2).save_pretrained(other)
    make_word_tokenizer(WORDS).save_pretrained(other)
    with pytest.raises(DatasetAttributionError, match=r"model\.fingerprint"):
        attribute_dataset(root / "data.tsv", out, model=str(other), show_progress=False)
    changed = tmp_path / "data.tsv"
    lines = (root / "data.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace("\t", "\tvery ", 1)  # one text changed, same number of rows
    changed.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DatasetAttributionError, match=r"input\.sha256"):
        attribute_dataset(changed, out, model=str(root / "model"), show_progress=False)
    assert sorted((path.name, path.stat().st_mtime_ns) for path in out.iterdir()) == before


def test_foreign_files_and_parts_without_manifest_are_refused(workspace, tmp_path):
    root = workspace["root"]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetAttributionError, match="did not write.*notes.txt"):
        attribute_dataset(root / "data.tsv", tmp_path / "foreign", model=str(root / "model"), show_progress=False)
    (tmp_path / "orphans").mkdir()
    (tmp_path / "orphans" / "part-00000.parquet").write_bytes(b"x")
    with pytest.raises(DatasetAttributionError, match="no .manifest.json"):
        attribute_dataset(root / "data.tsv", tmp_path / "orphans", model=str(root / "model"), show_progress=False)


# --------------------------------------------------------------------------------------------
# Bad input rows


BAD_FILES = {
    "empty.tsv": ("label\ttext\n1\tgood film\n0\t   \n1\tfun\n", r"empty\.tsv: 1 bad row .*\n  row 1, line 3: an empty text in 'text'"),
    "short.tsv": ("label\ttext\n1\tgood film\n0\n", r"row 1, line 3: no text \(the field 'text' is missing\)"),
    "extra.tsv": ("label\ttext\n1\tgood\tfilm\n", r"row 0, line 2: 3 fields but the header has 2"),
    "label.csv": ("text,label\ngood,1\nbad,pos\nfun,1.5\n", r"2 bad rows.*\n  row 1, line 3: the label 'pos'.*not an integer\n  row 2, line 4: the label '1.5'"),
    "key.jsonl": ('{"text": "good", "label": 1}\n\n{"label": 0}\n', r"row 1, line 3: no text \(the field 'text' is missing\)"),
    "column.tsv": ("label\tsentence2\n1\tgood\n", r"has none of the columns text, sentence, content; its columns are: label, sentence2"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_rows_name_the_file_and_row_and_write_nothing(workspace, tmp_path, name):
    content, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError, match=message):
        read_text_table(path)
    with pytest.raises(DatasetAttributionError, match=message) as raised:
        attribute_dataset(path, tmp_path / "out", model=str(workspace["root"] / "model"), show_progress=False)
    assert str(path) in str(raised.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_bad_parquet_label_and_missing_named_column(workspace, tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["good", "bad"], "label": [1.0, 0.5]}), path)
    with pytest.raises(DataFileError, match=r"row 1: the label 0\.5 in 'label' is not an integer"):
        read_text_table(path)
    with pytest.raises(DataFileError, match=r"no column 'gold'; its columns are: text, label\. Pass --label-column NAME"):
        read_text_table(path, label_column="gold")


def test_command_line_errors_exit_2_with_one_message(workspace, tmp_path, capsys):
    from captum_decompx.cli import main

    path = tmp_path / "bad.tsv"
    path.write_text("label\ttext\n1\t\n", encoding="utf-8")
    status = main(["attribute", "--data", str(path), "--out", str(tmp_path / "out"), "--model", str(workspace["root"] / "model")])
    assert status == 2
    assert "captum-decompx attribute: error:" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Sharding and wrapped models


def test_balance_is_deterministic_disjoint_and_even():
    costs = [float(c) for c in [5, 1, 1, 1, 9, 3, 3, 2, 2, 7, 1]]
    for world_size in (1, 2, 3, 5):
        shares = balance(costs, world_size)
        assert shares == balance(costs, world_size)
        flat = sorted(index for share in shares for index in share)
        assert flat == list(range(len(costs)))
        loads = [sum(costs[i] for i in share) for share in shares]
        assert max(loads) - min(loads) <= max(costs)
    assert default_rows_per_part(872, 2) == 55 and default_rows_per_part(40, 1) == 16 and default_rows_per_part(10**7, 8) == 1024


def test_wrapped_models_are_explained_through_their_module(workspace, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(workspace["root"] / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(workspace["root"] / "model")
    encoded = tokenizer(["good film", "a very dull and long story"], padding=True, return_tensors="pt")
    args = (encoded["attention_mask"], encoded["token_type_ids"])
    expected = DecompX(model).decompose(encoded["input_ids"], args)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped: dict[str, nn.Module] = {"DataParallel": nn.DataParallel(model), "DistributedDataParallel": DistributedDataParallel(model)}
        for name, wrapper in wrapped.items():
            hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
            out = DecompX(wrapper).decompose(encoded["input_ids"], args)
            torch.testing.assert_close(out.attributions, expected.attributions, msg=name)
            assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before
        result = attribute_dataset(workspace["root"] / "data.tsv", tmp_path / "out", model=wrapped["DistributedDataParallel"], tokenizer=tokenizer, rows_per_part=ROWS_PER_PART, show_progress=False)
    finally:
        dist.destroy_process_group()
    assert_same_table(result.read_table(), workspace["reference"])


def test_data_parallel_over_several_devices_behind_a_forward_function_is_refused(workspace):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(workspace["root"] / "model").eval()
    wrapper = nn.DataParallel(model)
    wrapper.device_ids = [0, 1]  # as on a machine with two GPUs (replicas run in other threads)
    with pytest.raises(ValueError, match=r"nn.DataParallel over 2 devices.*model\.module"):
        DecompX(lambda ids, mask: wrapper(input_ids=ids, attention_mask=mask).logits, model=wrapper)
    explainer = DecompX(wrapper)  # the wrapper itself: its module is explained in this thread
    assert explainer.model is model and explainer.forward_func is model


def test_the_longest_input_leaves_out_robertas_unused_positions():
    """RoBERTa's family numbers positions from 2 (adapters' family data); BERT from 0."""
    from transformers import BertConfig, CamembertConfig, RobertaConfig, XLMRobertaConfig

    from captum_decompx.runs.attribute import model_max_length

    class Unlimited:
        model_max_length = 10**30  # a tokenizer without a limit

    family = (RobertaConfig, XLMRobertaConfig, CamembertConfig)
    for config, longest in [(BertConfig(max_position_embeddings=40), 40)] + [(kind(max_position_embeddings=40), 38) for kind in family]:
        holder = nn.Module()
        holder.config = config
        assert model_max_length(holder, Unlimited()) == longest

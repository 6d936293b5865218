"""The ``captum-decompx`` command, run in-process with ``main([...])`` and once as a real console script.

The printed numbers are parsed back and checked against the demo model run here directly: the
logits it prints are the model's own, and the contributions plus the bias add up to them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from support.cli_output import NEGATIVE, POSITIVE, ExplainOutput, assert_usage_error, parse_explain, run
from transformers import AutoModelForSequenceClassification  # noqa: E402

from captum_decompx import DecompX, supported_model_types  # noqa: E402
from captum_decompx.cli import main  # noqa: E402
from captum_decompx.demo import DEMO_MODEL_ENV, demo_model_path, repository_root  # noqa: E402

ANSI_ESCAPE = "\x1b["


@pytest.fixture(autouse=True)
def _demo_model_of_the_repository(monkeypatch):
    """Every test uses the repository's demo model unless it sets the variable itself."""
    monkeypatch.delenv(DEMO_MODEL_ENV, raising=False)


def model_logits(demo, text: str, pair: str | None = None) -> torch.Tensor:
    model, tokenizer = demo
    batch = tokenizer(text, pair, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits[0]


def assert_sum_check_holds(parsed: ExplainOutput, logits: torch.Tensor, labels: list[str]) -> None:
    """contributions + bias = logit in the printed numbers, and the logit is the model's own."""
    assert set(parsed.sum_check) == set(labels)
    for label, (total, bias, printed_sum) in parsed.printed_sums.items():
        assert total + bias == printed_sum, label  # the printed equation adds up, digit for digit
    for label, (total, bias, logit) in parsed.sum_check.items():
        # three numbers printed with 6 decimals (up to 5e-7 rounding each), plus float32 completeness
        # (measured up to 5.7e-7 of the logit scale on MiniLM)
        assert total + bias == pytest.approx(logit, abs=1.5e-6 + 1e-6 * max(1.0, abs(logit))), label
        assert logit == pytest.approx(float(logits[labels.index(label)]), abs=1e-4), label
        # the token scores are printed with 3 decimals: their sum is the total up to that rounding
        assert sum(parsed.scores[label]) == pytest.approx(total, abs=5e-4 * len(parsed.scores[label]) + 1e-6), label


# ------------------------------------------------------------------------------------------------
# explain


def test_explain_positive_sentence_is_positive_and_adds_up_to_the_model_logits(capsys, demo):
    status, out, err = run(capsys, "explain", POSITIVE)
    assert status == 0, err
    parsed = parse_explain(out)
    assert parsed.predicted == "positive"
    logits = model_logits(demo, POSITIVE)
    probabilities = torch.softmax(logits, -1)
    assert parsed.probabilities == pytest.approx({"negative": float(probabilities[0]), "positive": float(probabilities[1])}, abs=1e-3)
    assert_sum_check_holds(parsed, logits, ["negative", "positive"])
    expected_tokens = demo[1].convert_ids_to_tokens(demo[1](POSITIVE)["input_ids"])
    assert parsed.tokens["positive"] == expected_tokens
    assert parsed.tokens["negative"] == expected_tokens
    # a sensible explanation: "good" carries the positive prediction
    top = max(range(len(expected_tokens)), key=lambda i: parsed.scores["positive"][i])
    assert expected_tokens[top] == "good"
    assert ANSI_ESCAPE not in out  # not a terminal: plain text


def test_explain_negative_sentence_is_negative_and_adds_up_to_the_model_logits(capsys, demo):
    status, out, err = run(capsys, "explain", NEGATIVE)
    assert status == 0, err
    parsed = parse_explain(out)
    assert parsed.predicted == "negative"
    assert parsed.probabilities["negative"] > 0.9
    assert_sum_check_holds(parsed, model_logits(demo, NEGATIVE), ["negative", "positive"])
    tokens = parsed.tokens["negative"]
    top = max(range(len(tokens)), key=lambda i: parsed.scores["negative"][i])
    assert tokens[top] in {"dull", "lifeless", "boring"}


def test_explain_scores_are_decompx_per_class_attributions(capsys, demo):
    model, tokenizer = demo
    status, out, _ = run(capsys, "explain", NEGATIVE)
    assert status == 0
    parsed = parse_explain(out)
    batch = tokenizer(NEGATIVE, return_tensors="pt")
    for index, label in enumerate(["negative", "positive"]):
        expected = DecompX(model).attribute(batch["input_ids"], target=index, additional_forward_args=(batch["attention_mask"],))[0]
        assert parsed.scores[label] == pytest.approx(expected.tolist(), abs=6e-4)


def test_explain_fast_method_reports_the_bias_share(capsys, demo):
    status, out, err = run(capsys, "explain", POSITIVE, "--algorithm", "fast")
    assert status == 0, err
    assert "(DecompX, fast)" in out
    parsed = parse_explain(out)
    assert_sum_check_holds(parsed, model_logits(demo, POSITIVE), ["negative", "positive"])
    assert any(abs(bias) > 1e-3 for _, bias, _ in parsed.sum_check.values())  # biases left out, reported


@pytest.mark.parametrize("target", ["positive", "POSITIVE", "1"])
def test_explain_target_shows_only_that_class(capsys, demo, target):
    status, out, err = run(capsys, "explain", NEGATIVE, "--target", target)
    assert status == 0, err
    parsed = parse_explain(out)
    assert list(parsed.tokens) == ["positive"]
    assert list(parsed.sum_check) == ["positive"]
    total, bias, logit = parsed.sum_check["positive"]
    assert total + bias == pytest.approx(logit, abs=2e-6)
    assert logit == pytest.approx(float(model_logits(demo, NEGATIVE)[1]), abs=1e-4)


def test_explain_sentence_pair_uses_both_segments(capsys, demo):
    status, out, err = run(capsys, "explain", "the plot is thin.", "--pair", "the acting is superb.")
    assert status == 0, err
    parsed = parse_explain(out)
    assert parsed.tokens["positive"].count("[SEP]") == 2
    assert "superb" in parsed.tokens["positive"]
    assert_sum_check_holds(parsed, model_logits(demo, "the plot is thin.", "the acting is superb."), ["negative", "positive"])


def test_explain_colours_tokens_when_asked(capsys):
    status, out, _ = run(capsys, "explain", POSITIVE, "--color", "always")
    assert status == 0
    line = next(line for line in out.splitlines() if line.startswith("positive: "))
    assert "\x1b[" in line and "good" in line and line.count("\x1b[0m") >= 1
    assert re.search(r"good\x1b\[0m:\+\d\.\d{3}", line)  # the token coloured, then its score


def test_explain_writes_html_and_png(capsys, tmp_path):
    html, png = tmp_path / "view.html", tmp_path / "classes.png"
    status, out, err = run(capsys, "explain", "a <b>bold</b> & good film.", "--html", str(html), "--png", str(png))
    assert status == 0, err
    assert str(html) in out and str(png) in out
    page = html.read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith(("<!doctype html", "<html"))
    assert "positive" in page and "negative" in page
    assert ">&lt;</mark>" in page and ">&amp;</mark>" in page  # token text is escaped
    assert page.count(">good</mark>") == 2  # one row per class
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[0] > 50 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0.01  # not a blank canvas


# ------------------------------------------------------------------------------------------------
# errors a person can act on


def test_unknown_label_lists_the_labels(capsys):
    status, out, err = run(capsys, "explain", POSITIVE, "--target", "neutral")
    assert_usage_error(status, err, "'neutral'", "negative (0)", "positive (1)")
    assert out == ""


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_refused(capsys, text):
    status, _, err = run(capsys, "explain", text)
    assert_usage_error(status, err, "TEXT is empty")


def test_empty_pair_is_refused(capsys):
    status, _, err = run(capsys, "explain", POSITIVE, "--pair", "")
    assert_usage_error(status, err, "--pair", "empty")


def test_missing_model_path(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    status, _, err = run(capsys, "explain", POSITIVE, "--model", str(missing))
    assert_usage_error(status, err, str(missing), "no such folder")


def test_model_folder_without_a_model(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    status, _, err = run(capsys, "explain", POSITIVE, "--model", str(tmp_path))
    assert_usage_error(status, err, "Cannot read the model", str(tmp_path))


def test_model_path_that_is_a_file(capsys, tmp_path):
    file = tmp_path / "model.bin"
    file.write_bytes(b"\0")
    status, _, err = run(capsys, "explain", POSITIVE, "--model", str(file))
    assert_usage_error(status, err, "is a file")


def test_unsupported_architecture_lists_the_supported_ones(capsys, tmp_path):
    """A model_type made up for this test: no adapter can ever be added for it by accident."""
    from transformers import AutoConfig, BertConfig, BertForSequenceClassification

    class UnsupportedConfig(BertConfig):
        model_type = "decompx-test-unsupported"

    class UnsupportedClassifier(BertForSequenceClassification):
        config_class = UnsupportedConfig

    AutoConfig.register(UnsupportedConfig.model_type, UnsupportedConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(UnsupportedConfig, UnsupportedClassifier, exist_ok=True)
    assert UnsupportedConfig.model_type not in supported_model_types()
    config = UnsupportedConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, num_labels=2)
    UnsupportedClassifier(config).save_pretrained(tmp_path)
    status, _, err = run(capsys, "explain", POSITIVE, "--model", str(tmp_path))
    assert_usage_error(status, err, "'decompx-test-unsupported'", ", ".join(supported_model_types()))


def test_missing_demo_model_says_where_to_get_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(DEMO_MODEL_ENV, str(tmp_path / "nowhere"))
    status, _, err = run(capsys, "explain", POSITIVE)
    assert_usage_error(status, err, DEMO_MODEL_ENV, "nowhere")


def test_unwritable_output_is_refused_before_any_work(capsys, tmp_path):
    status, out, err = run(capsys, "explain", POSITIVE, "--html", str(tmp_path))
    assert_usage_error(status, err, "is a folder")
    status, out, err = run(capsys, "explain", POSITIVE, "--png", str(tmp_path / "missing" / "view.png"))
    assert_usage_error(status, err, "does not exist")
    assert out == ""


def test_unknown_method_and_missing_data(capsys, tmp_path):
    status, _, err = run(capsys, "compare", POSITIVE, "--methods", "decompx,lime")
    assert_usage_error(status, err, "lime", "decompx, decompx-fast, globenc, alti, ig")
    status, _, err = run(capsys, "evaluate", "--data", str(tmp_path / "none.tsv"), "--limit", "2")
    assert_usage_error(status, err, "none.tsv", "sst2-dev")


def test_usage_errors_and_help_return_argparse_codes(capsys):
    assert main(["explain"]) == 2  # TEXT missing
    assert main(["--help"]) == 0
    assert "explain" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# demo model location


def test_demo_model_is_found_in_the_repository_and_by_environment(monkeypatch, tmp_path):
    assert demo_model_path() == repository_root() / "models" / "minilm-sst2"
    assert (repository_root() / "captum_decompx" / "attribution.py").is_file()
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv(DEMO_MODEL_ENV, str(tmp_path))
    assert demo_model_path() == tmp_path


# ------------------------------------------------------------------------------------------------
# compare and evaluate


def test_compare_normalizes_each_method(capsys, demo):
    model, tokenizer = demo
    status, out, err = run(capsys, "compare", POSITIVE, "--methods", "decompx,ig,gxi")
    assert status == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["token"])
    assert lines[header].split() == ["token", "decompx", "ig", "gxi"]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(POSITIVE)["input_ids"])
    rows = [line.split() for line in lines[header + 1 : header + 1 + len(tokens)]]
    assert [row[0] for row in rows] == tokens
    columns = torch.tensor([[float(value) for value in row[1:]] for row in rows])
    assert columns.abs().max(0).values.tolist() == pytest.approx([1.0, 1.0, 1.0])
    batch = tokenizer(POSITIVE, return_tensors="pt")
    decompx = DecompX(model).attribute(batch["input_ids"], target=1, additional_forward_args=(batch["attention_mask"],))[0]
    assert columns[:, 0].tolist() == pytest.approx((decompx / decompx.abs().max()).tolist(), abs=6e-3)


@pytest.mark.slow  # the evaluate command end to end on the demo model (4 s to 5 s on a busy 2-core machine)
def test_evaluate_prints_the_faithfulness_table(capsys):
    status, out, err = run(capsys, "evaluate", "--data", "sst2-dev", "--limit", "4", "--methods", "decompx,random")
    assert status == 0, err
    assert "AOPC" in out and "decompx" in out and "random" in out


# ------------------------------------------------------------------------------------------------
# the installed console script


@pytest.mark.slow  # spawns the installed console script twice
def test_console_script_runs_offline():
    script = shutil.which("captum-decompx", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is not installed: run `pip install -e .`"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    environment.pop(DEMO_MODEL_ENV, None)
    done = subprocess.run([script, "explain", POSITIVE], capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    parsed = parse_explain(done.stdout)
    assert parsed.predicted == "positive"
    assert all(abs(total + bias - logit) < 2e-6 for total, bias, logit in parsed.sum_check.values())
    failed = subprocess.run([script, "explain", POSITIVE, "--target", "neutral"], capture_output=True, text=True, env=environment, timeout=300)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and "negative (0)" in failed.stderr

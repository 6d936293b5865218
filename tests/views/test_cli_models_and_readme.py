"""The command line on folders that are not what it needs, mistakes found before the model loads,
and the README's printed example against the command's real output.

Each refusal is one line on stderr with exit status 2, and names what to pass instead.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from support.classifiers import make_word_tokenizer  # noqa: E402
from support.cli_output import NEGATIVE, POSITIVE, assert_usage_error, run  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

from captum_decompx.demo import DEMO_MODEL_ENV, MissingWeightsError, load_model_and_tokenizer, repository_root  # noqa: E402

WORDS = ["a", "good", "film", "dull", "piece", "of", "work"]


@pytest.fixture(autouse=True)
def _demo_model_of_the_repository(monkeypatch):
    monkeypatch.delenv(DEMO_MODEL_ENV, raising=False)


def one_line(err: str) -> bool:
    return err.strip().count("\n") == 0


def tiny_bert(**extra) -> BertConfig:
    return BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, **extra)


def saved(folder, model, words=WORDS):
    model.save_pretrained(folder)
    make_word_tokenizer(words).save_pretrained(folder)
    return str(folder)


def gpt2_language_model():
    config = GPT2Config(vocab_size=60, n_embd=32, n_layer=1, n_head=4, n_positions=32)
    config.bos_token_id = config.eos_token_id = 1
    return GPT2LMHeadModel(config)


# ------------------------------------------------------------------------------------------------
# Folders without a classifier's weights


NOT_CLASSIFIERS = {
    "sentence-encoder": (lambda: BertModel(tiny_bert()), ["classifier.bias", "classifier.weight"], "BertModel"),
    "masked-lm": (lambda: BertForMaskedLM(tiny_bert()), ["bert.pooler.dense.bias", "classifier.weight"], "BertForMaskedLM"),
    "gpt2-lm": (gpt2_language_model, ["score.weight"], "GPT2LMHeadModel"),
}


@pytest.mark.parametrize("kind", list(NOT_CLASSIFIERS))
def test_a_folder_without_classifier_weights_is_refused_in_one_line(capsys, tmp_path, kind):
    build, missing, saved_class = NOT_CLASSIFIERS[kind]
    folder = saved(tmp_path / kind, build())
    capsys.readouterr()  # what saving printed
    status, out, err = run(capsys, "explain", "a good film", "--model", folder)
    assert_usage_error(status, err, *missing, saved_class, "ForSequenceClassification")
    assert one_line(err) and out == ""
    with pytest.raises(MissingWeightsError, match=re.escape(missing[-1])):
        load_model_and_tokenizer(folder)


def test_a_complete_classifier_folder_loads_and_explains(capsys, tmp_path):
    torch.manual_seed(0)
    folder = saved(tmp_path / "classifier", BertForSequenceClassification(tiny_bert(num_labels=2)))
    status, out, err = run(capsys, "explain", "a good film", "--model", folder, "--color", "never")
    assert status == 0, err
    assert "sum check" in out


def test_a_tokenizer_beyond_the_models_vocabulary_is_one_line(capsys, tmp_path):
    words = WORDS + [f"word{i}" for i in range(80)]  # ids up to 5 + 86: past the model's 60
    folder = saved(tmp_path / "mismatched", BertForSequenceClassification(tiny_bert(num_labels=2)), words)
    capsys.readouterr()
    status, out, err = run(capsys, "explain", "a good word70", "--model", folder)
    assert_usage_error(status, err, "vocabulary has 60 entries", "tokenizer")
    assert one_line(err)


def test_an_empty_folder_says_config_json_is_missing(capsys, tmp_path):
    status, out, err = run(capsys, "explain", POSITIVE, "--model", str(tmp_path))
    assert_usage_error(status, err, "no config.json")
    assert "model_type" not in err and one_line(err)


@pytest.mark.parametrize("hub_offline", ["1", "0"])
def test_the_demo_models_relative_path_outside_the_clone_says_the_folder_is_missing(capsys, monkeypatch, tmp_path, hub_offline):
    import transformers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", hub_offline)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: pytest.fail("the loader was called"))
    status, out, err = run(capsys, "explain", POSITIVE, "--model", "models/minilm-sst2")
    assert_usage_error(status, err, "models/minilm-sst2", "no such folder", str(tmp_path), "leave out --model")
    assert "hub" not in err.lower() and "download" not in err.lower() and one_line(err)


# ------------------------------------------------------------------------------------------------
# Mistakes reported before the model loads


@pytest.fixture
def loading_refused(monkeypatch):
    """Loading the weights fails the test: the mistake must be found before."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", refuse)


@pytest.mark.parametrize("command", ["explain", "compare"])
def test_an_unknown_label_is_reported_before_the_model_loads(capsys, loading_refused, command):
    status, out, err = run(capsys, command, POSITIVE, "--target", "neutral")
    assert_usage_error(status, err, "'neutral'", "negative (0)", "positive (1)")
    assert out == ""


def test_a_known_label_is_resolved_against_the_loaded_model_too(capsys):
    status, out, err = run(capsys, "explain", POSITIVE, "--target", "POSITIVE", "--color", "never")
    assert status == 0, err
    assert re.search(r"^positive: ", out, re.M) and not re.search(r"^negative: ", out, re.M)


@pytest.mark.parametrize("command", ["attribute", "evaluate"])
def test_data_file_mistakes_are_reported_before_anything_loads(capsys, tmp_path, loading_refused, command):
    data = tmp_path / "bad.tsv"
    data.write_text("label\ttext\n1\ta fine film .\nfoo\ta dull film .\n", encoding="utf-8")
    status, out, err = run(capsys, command, "--data", str(data), "--out", str(tmp_path / "parts"))
    assert_usage_error(status, err, "foo")
    assert not (tmp_path / "parts").exists()
    status, out, err = run(capsys, command, "--data", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "parts"))
    assert_usage_error(status, err, "missing.tsv")


# ------------------------------------------------------------------------------------------------
# The README's printed example is the command's output


def readme_text_block(first_line: str) -> list[str]:
    readme = (repository_root() / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```text\n(.*?)```", readme, re.S):
        if block.startswith(first_line):
            return block.rstrip("\n").splitlines()
    raise AssertionError(f"no text block starting with {first_line!r} in the README")


SUM_CHECK = re.compile(
    r"^(\S+): ([+-]\d+\.\d+) ([+-]) (\d+\.\d+) = ([+-]\d+\.\d+)   \(logit ([+-]\d+\.\d+), \|difference\| (\S+)\)$"
)


def assert_same_output(readme: list[str], actual: list[str]) -> None:
    """Line for line, the token contributions to their 3 printed decimals.

    The sum check's last digits depend on float32 summation order, which changes with the number
    of threads (measured: |difference| 1.0e-07 with the command's default threads, 3.9e-07 with
    the suite's one thread): its numbers must agree to one unit of their 6th decimal, and the
    README's |difference| must be one this float32 run can print (at most 5e-7, within 5e-7 of
    the one printed here)."""
    assert len(readme) == len(actual), "\n".join(actual)
    for expected, got in zip(readme, actual):
        expected_sum, got_sum = SUM_CHECK.match(expected), SUM_CHECK.match(got)
        if expected_sum is None:
            assert expected == got
            continue
        assert got_sum is not None, got
        assert expected_sum.group(1, 3) == got_sum.group(1, 3), (expected, got)
        for index in (2, 4, 5, 6):
            assert abs(Decimal(expected_sum.group(index)) - Decimal(got_sum.group(index))) <= Decimal("0.000001"), (expected, got)
        assert float(expected_sum.group(7)) <= 5e-7, expected
        assert abs(float(expected_sum.group(7)) - float(got_sum.group(7))) <= 5e-7, (expected, got)


def test_the_readmes_printed_example_is_the_commands_output(capsys, monkeypatch):
    monkeypatch.chdir(repository_root())  # the README runs the command from the repository root
    status, out, err = run(capsys, "explain", POSITIVE, "--color", "never")
    assert status == 0, err
    assert_same_output(readme_text_block("model: models/minilm-sst2 (bert)"), out.rstrip("\n").splitlines())


def test_the_readmes_negative_example_is_the_commands_output(capsys):
    status, out, err = run(capsys, "explain", NEGATIVE, "--color", "never")
    assert status == 0, err
    readme = readme_text_block("prediction: negative")
    lines = out.splitlines()
    start = lines.index(readme[0])
    assert_same_output(readme, lines[start : start + len(readme)])

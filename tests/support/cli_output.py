"""Running the ``captum-decompx`` command in-process and parsing its printed output back into numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from captum_decompx.cli import main

POSITIVE = "a good piece of work more often than not."


NEGATIVE = "a dull, lifeless and utterly boring mess."


NUMBER = r"[+-]?\d+\.\d+"


@dataclass
class ExplainOutput:
    predicted: str
    probabilities: dict[str, float]
    tokens: dict[str, list[str]]  # per class
    scores: dict[str, list[float]]  # per class
    sum_check: dict[str, tuple[float, float, float]]  # per class: contributions, bias, logit
    printed_sums: dict[str, tuple[Decimal, Decimal, Decimal]]  # per class: contributions, bias, their printed sum


def parse_explain(text: str) -> ExplainOutput:
    """Read the plain-text output of ``explain`` back into numbers."""
    lines = text.splitlines()
    predicted = re.search(r"^prediction: (.+?) \(p = ([\d.e -]+)\)$", text, re.M).group(1)
    probabilities = {
        name: float(value)
        for name, value in re.findall(r"(\S+) ([\d.]+)", re.search(r"^probabilities: (.*)$", text, re.M).group(1))
    }
    start = next(i for i, line in enumerate(lines) if line.startswith("token contributions"))
    tokens, scores = {}, {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        label, _, rest = line.strip().partition(": ")
        pairs = [item.rsplit(":", 1) for item in rest.split(" ")]
        tokens[label] = [token for token, _ in pairs]
        scores[label] = [float(score) for _, score in pairs]
    check_start = next(i for i, line in enumerate(lines) if line.startswith("sum check"))
    sum_check, printed_sums = {}, {}
    for line in lines[check_start + 1 :]:
        match = re.match(
            rf"^\s*(.+?): ({NUMBER}) ([+-]) (\d+\.\d+) = ({NUMBER})\s+\(logit ({NUMBER}), \|difference\| (\S+)\)$", line
        )
        if not match:
            break
        label, total, sign, bias, printed_sum, logit, _ = match.groups()
        signed_bias = Decimal(bias) * (1 if sign == "+" else -1)
        sum_check[label] = (float(total), float(signed_bias), float(logit))
        printed_sums[label] = (Decimal(total), signed_bias, Decimal(printed_sum))
    return ExplainOutput(predicted, probabilities, tokens, scores, sum_check, printed_sums)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_usage_error(status: int, err: str, *phrases: str) -> None:
    assert status == 2
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err

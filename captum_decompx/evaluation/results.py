"""What the faithfulness protocol measured: per-method and overall results, and how per-example rows
(from any number of parts) are aggregated into them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .metrics import AOPC, FaithfulnessMetric, KeepTopAccuracy, MaskedAccuracy

#: The columns every row has besides the metrics' columns.
ROW_KEYS: tuple[str, ...] = ("method", "example", "label", "predicted", "p_predicted", "seconds")


def _measured(key: str, doc: str) -> Any:
    """A read-only property: ``summary[key]`` of a :class:`MethodResult` (a KeyError naming the measured ones)."""
    return property(lambda result: result._get(key), doc=doc)


def _mean_of(key: str) -> Any:
    """A read-only property: the mean of ``summary[key]`` as a float."""
    return property(lambda result: float(result._get(key).mean()), doc=f"The mean of ``{key}`` over K.")


@dataclass
class MethodResult:
    """The faithfulness of one attribution method.

    Attributes:
        summary: every metric's aggregates by name (see each metric's ``summarize``), e.g.
            ``aopc_most`` (K,), ``accuracy_most`` (K,), ``keep_top_accuracy``, ``comprehensiveness``,
            ``sufficiency``, ``aopc_most_per_example`` (examples,).
        per_example: every row column stacked over the examples, in the order of the example ids:
            (examples,) or (examples, K).
        seconds: wall time spent computing the attributions (not the masked forward passes); a
            call shared with an earlier method (same attribution and arguments, another
            ``reduce``) is counted for the earlier method only.
    """

    summary: dict[str, Any]
    per_example: dict[str, np.ndarray]
    seconds: float

    def _get(self, key: str) -> Any:
        if key not in self.summary:
            raise KeyError(f"{key!r} was not measured; the metrics measured: {', '.join(self.summary)}.")
        return self.summary[key]

    aopc_most = _measured("aopc_most", "(K,) mean probability drop of the predicted class per K, most important masked.")
    aopc_least = _measured("aopc_least", "(K,) as above, least important masked.")
    accuracy_most = _measured("accuracy_most", "(K,) accuracy against the gold labels per K, most important masked.")
    accuracy_least = _measured("accuracy_least", "(K,) as above, least important masked.")
    keep_top_accuracy = _measured("keep_top_accuracy", "Accuracy with only the top ``keep_fraction`` of the tokens kept.")
    aopc_most_per_example = _measured(
        "aopc_most_per_example", "(examples,) each example's probability drop averaged over K, most important masked."
    )
    aopc_least_per_example = _measured("aopc_least_per_example", "(examples,) the same, least important masked.")
    comprehensiveness = _measured(
        "comprehensiveness", "ERASER comprehensiveness (ferret's ``aopc_compr``), mean over examples; higher is better."
    )
    sufficiency = _measured("sufficiency", "ERASER sufficiency (ferret's ``aopc_suff``), mean over examples; lower is better.")

    aopc_most_mean = _mean_of("aopc_most")
    accuracy_most_mean = _mean_of("accuracy_most")
    aopc_least_mean = _mean_of("aopc_least")
    accuracy_least_mean = _mean_of("accuracy_least")


@dataclass
class FaithfulnessResult:
    """What :func:`evaluate_faithfulness` (or :func:`aggregate_rows`) measured.

    Attributes:
        methods: method name -> :class:`MethodResult`, in the order the methods were given.
        fractions: the K values of AOPC and accuracy (empty when neither was measured).
        keep_fraction: the share of tokens kept for the prediction-performance column (NaN when
            not measured).
        n_examples: number of examples evaluated.
        accuracy: the model's accuracy on the unmasked examples.
        metrics: the metrics that were measured.
        example_ids: the id of each example, in the order of the per-example arrays.
    """

    methods: dict[str, MethodResult]
    fractions: tuple[float, ...]
    keep_fraction: float
    n_examples: int
    accuracy: float
    metrics: tuple[FaithfulnessMetric, ...] = ()
    example_ids: tuple[Any, ...] = ()

    def to_markdown(self, *, timings: bool = False) -> str:
        """A markdown table, one row per method: AOPC and accuracy (%) averaged over K, masking the
        most and the least important tokens, the accuracy (%) with only the top tokens kept,
        comprehensiveness and sufficiency (each metric contributes its own cells)."""
        rows = []
        header: list[str] = []
        for name, result in self.methods.items():
            cells = sorted(
                (cell for metric in self.metrics for cell in metric.table_cells(result.summary)), key=lambda cell: cell[0]
            )
            header = ["Method"] + [cell[1] for cell in cells]
            row = [name.replace("|", "\\|")] + [cell[2] for cell in cells]
            if timings:
                row.append(f"{result.seconds:.1f}")
            rows.append(row)
        if timings:
            header.append("Attribution time (s)")
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def paired_difference(
        self, first: str, second: str, *, most_important: bool = True, metric: Optional[str] = None
    ) -> tuple[float, float]:
        """A per-example metric of ``first`` minus that of ``second`` and the standard error of the
        difference, from the per-example differences (the same examples were masked for both).

        Args:
            first, second: method names.
            most_important: AOPC with the most (True) or the least (False) important masked; used
                when ``metric`` is None.
            metric: a per-example summary entry instead, e.g. ``"comprehensiveness"`` or
                ``"sufficiency"`` (``"<name>_per_example"`` is looked up).

        Returns:
            ``(mean difference, standard error)``; ``mean +- 1.96 * se`` is a 95% interval.
        """
        if metric is None:
            key = "aopc_most_per_example" if most_important else "aopc_least_per_example"
        else:
            key = metric if metric.endswith("_per_example") else f"{metric}_per_example"
        differences = np.asarray(self.methods[first]._get(key)) - np.asarray(self.methods[second]._get(key))
        if differences.size < 2:
            return float(differences.mean()), float("nan")
        return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(differences.size))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists and floats), e.g. for ``json.dump``: the summaries and times."""
        return {
            "fractions": list(self.fractions),
            "keep_fraction": self.keep_fraction,
            "n_examples": self.n_examples,
            "accuracy": self.accuracy,
            "methods": {
                name: {**{key: _plain(value) for key, value in r.summary.items()}, "seconds": r.seconds}
                for name, r in self.methods.items()
            },
        }

    def plot(self, path: Union[str, Path, None] = None, *, title: Optional[str] = None):
        """AOPC and accuracy against K (the paper's Figure 3), masking the most (left) and the
        least (right) important tokens. Saved as PNG when ``path`` is given.

        Returns:
            the matplotlib ``Figure`` (drawn with the Agg canvas; pyplot is not used).
        """
        from .plots import plot_faithfulness_curves

        return plot_faithfulness_curves(self, path, title=title)


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def aggregate_rows(
    rows: Iterable[Mapping[str, Any]],
    metrics: Sequence[FaithfulnessMetric],
    *,
    methods: Optional[Sequence[str]] = None,
) -> FaithfulnessResult:
    """The :class:`FaithfulnessResult` of per-example rows from :func:`example_rows`.

    Args:
        rows: the rows of any number of parts, in any order (dicts, e.g. from
            ``pyarrow.parquet.read_table(path).to_pylist()``).
        metrics: the metrics the rows were measured with.
        methods: the order of the methods in the result; default: order of first appearance.

    Returns:
        the result; per-example arrays follow the sorted example ids.

    Raises:
        ValueError: no rows, a missing column, an (example, method) pair twice, methods measured on
            different examples, or ``methods`` naming a method without rows.
    """
    by_method: dict[str, dict[Any, Mapping[str, Any]]] = {}
    for row in rows:
        missing = [key for key in ROW_KEYS + tuple(c for metric in metrics for c in metric.columns) if key not in row]
        if missing:
            raise ValueError(f"A row lacks the column(s) {', '.join(missing)}: were these rows measured with other metrics?")
        per_example = by_method.setdefault(str(row["method"]), {})
        if row["example"] in per_example:
            raise ValueError(
                f"Example {row['example']!r} of method {row['method']!r} appears twice (a part read twice, or a resumed "
                "run that repeated work): drop the duplicate rows before aggregating."
            )
        per_example[row["example"]] = row
    if not by_method:
        raise ValueError("No rows to aggregate.")
    order = list(by_method) if methods is None else list(methods)
    absent = [name for name in order if name not in by_method]
    if absent:
        raise ValueError(
            f"No rows for method(s) {', '.join(map(repr, absent))}; the rows have {', '.join(map(repr, by_method))}."
        )
    example_ids = sorted(by_method[order[0]])
    for name in order:
        if sorted(by_method[name]) != example_ids:
            raise ValueError(
                f"Method {name!r} has {len(by_method[name])} examples and {order[0]!r} has {len(example_ids)}, or other ones: "
                "every method must be measured on the same examples (a part missing?)."
            )
    results = {}
    for name in order:
        ordered = [by_method[name][example] for example in example_ids]
        columns = {c: np.asarray([row[c] for row in ordered], dtype=np.float64) for metric in metrics for c in metric.columns}
        summary: dict[str, Any] = {}
        for metric in metrics:
            summary.update(metric.summarize(columns))
        results[name] = MethodResult(summary, columns, float(sum(float(row["seconds"]) for row in ordered)))
    first = [by_method[order[0]][example] for example in example_ids]
    accuracy = float(np.mean([int(row["predicted"]) == int(row["label"]) for row in first]))
    fractions = next((m.fractions for m in metrics if isinstance(m, (AOPC, MaskedAccuracy))), ())
    keep_fraction = next((m.keep_fraction for m in metrics if isinstance(m, KeepTopAccuracy)), float("nan"))
    return FaithfulnessResult(
        results, tuple(fractions), keep_fraction, len(example_ids), accuracy, tuple(metrics), tuple(example_ids)
    )

#!/usr/bin/env python
"""SHAP's Partition explainer next to DecompX on the same SST-2 dev sentences: AOPC and time.

The faithfulness protocol of ``benchmarks/faithfulness.py`` (``captum_decompx.evaluate_faithfulness``:
mask the K% most / least important non-special tokens, K = 0.0 .. 0.9, with ``[MASK]``), with three
methods: DecompX (exact, with biases), DecompX without biases (the fast path), and SHAP's Partition
explainer (``shap.Explainer(f, shap.maskers.Text(tokenizer))``, SHAP's default for text, on the
logits, ``--max-evals`` model calls per sentence; wrapped as a Captum ``Attribution`` by
``captum_decompx.integrations.shap.ShapPartitionAttribution``). SHAP takes seconds per sentence on
a CPU, so the default runs the first 60 dev sentences.

Example::

    python benchmarks/shap_vs_decompx.py --limit 60 --threads 1

Writes ``benchmarks/results/shap_vs_decompx.md`` (table, time per sentence, paired differences,
command, machine).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faithfulness import machine, read_sst2  # noqa: E402

from captum_decompx import DecompX, MethodSpec, evaluate_faithfulness  # noqa: E402
from captum_decompx.integrations.shap import ShapPartitionAttribution  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "minilm-sst2"), help="classifier folder")
    parser.add_argument("--data", default=str(REPO / "data" / "sst2" / "dev.tsv"), help="SST-2 dev TSV")
    parser.add_argument("--limit", type=int, default=60, help="the first N dev sentences (default 60)")
    parser.add_argument("--max-evals", type=int, default=500, help="SHAP's model evaluations per sentence (its default, 500)")
    parser.add_argument("--batch-size", type=int, default=16, help="sentences per attribution call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--name", default="shap_vs_decompx", help="output file stem")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = Path(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts, labels = read_sst2(Path(args.data))
    texts, labels = texts[: args.limit], labels[: args.limit]
    shap_name = f"SHAP Partition (max_evals={args.max_evals})"
    methods = {
        "DecompX": MethodSpec(DecompX(model)),
        "DecompX w/o bias (fast)": MethodSpec(DecompX(model, include_biases=False, algorithm="fast")),
        shap_name: MethodSpec(ShapPartitionAttribution(model, tokenizer, max_evals=args.max_evals)),
    }
    started = time.perf_counter()
    result = evaluate_faithfulness(
        model, tokenizer, texts, labels, methods, batch_size=args.batch_size, show_progress=not args.no_progress
    )
    elapsed = time.perf_counter() - started
    table = result.to_markdown(timings=True)
    print(table)

    n = len(texts)
    command_args = sys.argv[1:] if argv is None else list(argv)
    command = "python " + " ".join(shlex.quote(part) for part in ["benchmarks/shap_vs_decompx.py", *command_args])
    shap_seconds = result.methods[shap_name].seconds
    lines = [
        "# SHAP's Partition explainer and DecompX on the same SST-2 dev sentences",
        "",
        f"- Command (from the repository root): `{command}`",
        f"- Model: `{os.path.relpath(model_path, REPO)}` ({model.config.model_type}, {model.config.num_hidden_layers} layers)",
        f"- Data: the first {n} sentences of `{os.path.relpath(args.data, REPO)}`; model accuracy on them {100 * result.accuracy:.2f}%",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; wall time {elapsed / 60:.1f} min",
        f"- Machine: {machine()}. Other jobs shared the CPUs: times are indicative; the ratios come from one process.",
        "- Protocol: `benchmarks/faithfulness.py`'s (the DecompX paper's Table 1): rank the non-special tokens by the "
        "attribution to the predicted class, mask floor(K·n) of them with `[MASK]`, K = 0.0 … 0.9; AOPC = mean drop of "
        "the predicted class's probability.",
        f"- SHAP: `shap.Explainer(f, shap.maskers.Text(tokenizer))` (the Partition explainer), f = the logits of the texts, "
        f"max_evals={args.max_evals}, one sentence per call; its values for the predicted class rank the tokens. SHAP "
        "masks with the tokenizer's `[MASK]` too.",
        "",
        "## Results (averaged over K)",
        "",
        table,
        "",
        "## Time per sentence",
        "",
        "| Method | seconds per sentence | SHAP time / method time |",
        "|---|---:|---:|",
    ]
    for name, scores in result.methods.items():
        per_sentence = scores.seconds / n
        ratio = shap_seconds / scores.seconds if scores.seconds > 0 else float("nan")
        lines.append(f"| {name} | {per_sentence:.3f} | {ratio:.1f} |")
    lines += [
        "",
        "## Paired AOPC differences (most important masked), over the same sentences",
        "",
        "| Compared | mean difference ± 1.96 standard errors |",
        "|---|---:|",
    ]
    for name in result.methods:
        if name != shap_name:
            mean, se = result.paired_difference(name, shap_name)
            lines.append(f"| {name} − {shap_name} | {mean:+.3f} ± {1.96 * se:.3f} |")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{args.name}.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{n} sentences in {elapsed:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The DecompX paper's Table 1 protocol on SST-2 dev, with the project's demo classifier.

Every method explains the *predicted* class; the non-special tokens are ranked by its scores and
``floor(K * n)`` of them replaced with ``[MASK]``, K = 0.0 .. 0.9, most important first and least
important first; AOPC and accuracy are averaged over K, and the accuracy with only the top 20% of
the tokens kept is reported (see ``captum_decompx.evaluation``).

Methods: DecompX (exact, with biases), DecompX without biases (fast path), without the FFN,
without the classification head; GlobEnc; ALTI; Integrated Gradients (Captum
``LayerIntegratedGradients`` on the word embeddings, reference ``[CLS] [PAD]... [SEP]``, 50 steps;
L2 norm and signed sum over the embedding); Gradient x Input (``LayerGradientXActivation`` on the
word embeddings: signed sum = gradient . embedding, and L2 norm); Saliency (L2 norm of the gradient
with respect to the word embeddings); random scores.

Example::

    python benchmarks/faithfulness.py --limit 20            # a quick look
    python benchmarks/faithfulness.py                       # all 872 dev sentences

Writes ``benchmarks/results/faithfulness.md`` (tables, command, model, date, machine) and
``faithfulness_curves.png`` (AOPC / accuracy against K), plus, for the first dev sentence, the
per-class view and the last layer's token map as PNGs.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from captum_decompx import DecompX  # noqa: E402
from captum_decompx.evaluation import evaluate_faithfulness, paper_methods  # noqa: E402
from captum_decompx.visualization import plot_class_contributions, plot_token_map  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# The DecompX paper, Table 1 (SST-2, fine-tuned BERT-base, most important tokens masked).
PAPER = {
    "DecompX": (0.627, 40.80),
    "Integrated Gradients": (0.340, 64.48),
    "Gradient x Input": (0.310, 66.69),
    "ALTI": (0.416, 57.65),
    "GlobEnc": (0.307, 67.14),
}


def read_sst2(path: Path) -> tuple[list[str], list[int]]:
    """SST-2 TSV: a header row, then ``label<TAB>text``."""
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for row in reader:
            if row:
                labels.append(int(row[0]))
                texts.append(row[1])
    return texts, labels


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "minilm-sst2"), help="classifier folder")
    parser.add_argument("--data", default=str(REPO / "data" / "sst2" / "dev.tsv"), help="SST-2 dev TSV")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N sentences (default: all 872)")
    parser.add_argument("--batch-size", type=int, default=16, help="sentences per attribution call")
    parser.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients steps")
    parser.add_argument("--ig-internal-batch-size", type=int, default=None, help="IG internal batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (names as in the table)")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--name", default="faithfulness", help="output file stem")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs (shared with other "
        f"jobs), torch {torch.__version__} with {torch.get_num_threads()} threads, no GPU"
    )


def targets_section(result) -> list[str]:
    """The issue's targets, checked on the numbers above, with paired standard errors."""
    names = list(result.methods)
    if "DecompX" not in names:
        return []
    best_aopc = max(names, key=lambda name: result.methods[name].aopc_most_mean)
    lowest_accuracy = min(names, key=lambda name: result.methods[name].accuracy_most_mean)
    lines = [
        "",
        "## Targets (most important tokens masked)",
        "",
        f"- Highest AOPC: {best_aopc} ({result.methods[best_aopc].aopc_most_mean:.3f}); DecompX "
        f"{result.methods['DecompX'].aopc_most_mean:.3f}.",
        f"- Lowest accuracy: {lowest_accuracy} ({100 * result.methods[lowest_accuracy].accuracy_most_mean:.2f}%); DecompX "
        f"{100 * result.methods['DecompX'].accuracy_most_mean:.2f}%.",
        "",
        "Paired AOPC differences, DecompX minus each method, over the same sentences (mean ± 1.96 standard errors "
        "of the per-sentence differences):",
        "",
        "| Compared with | AOPC(DecompX) − AOPC(method), most important masked |",
        "|---|---:|",
    ]
    for name in names:
        if name != "DecompX":
            mean, se = result.paired_difference("DecompX", name)
            lines.append(f"| {name} | {mean:+.3f} ± {1.96 * se:.3f} |")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = Path(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts, labels = read_sst2(Path(args.data))
    total_available = len(texts)
    if args.limit is not None:
        texts, labels = texts[: args.limit], labels[: args.limit]

    methods = paper_methods(model, tokenizer, ig_steps=args.ig_steps, internal_batch_size=args.ig_internal_batch_size)
    if args.methods:
        unknown = set(args.methods) - set(methods)
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {list(methods)}")
        methods = {name: spec for name, spec in methods.items() if name in args.methods}

    started = time.perf_counter()
    result = evaluate_faithfulness(
        model, tokenizer, texts, labels, methods, batch_size=args.batch_size, show_progress=not args.no_progress
    )
    elapsed = time.perf_counter() - started
    print(result.to_markdown(timings=True))
    print(f"{len(texts)} sentences in {elapsed:.0f} s; model accuracy {100 * result.accuracy:.2f}%")

    stem = output_dir / args.name
    result.plot(stem.with_name(stem.name + "_curves.png"), title=f"SST-2 dev, first {len(texts)} sentences, {model_path.name}: masking by attribution")

    # One explained example, to look at: the per-class view and the last layer's token map.
    encoded = tokenizer(texts[:1], return_tensors="pt")
    explained = DecompX(model).decompose(
        encoded["input_ids"], additional_forward_args=(encoded["attention_mask"], encoded["token_type_ids"]), return_token_maps=True
    )
    names = model.config.id2label
    plot_class_contributions(explained, encoded["input_ids"], tokenizer, label_names=names, path=stem.with_name(stem.name + "_example_classes.png"), title=f"DecompX per-class contributions: SST-2 dev #0 (gold: {names[labels[0]]})")
    plot_token_map(explained, encoded["input_ids"], tokenizer, layer=-1, path=stem.with_name(stem.name + "_example_token_map.png"))

    info_path = model_path / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    model_line = (
        f"- Model: `{os.path.relpath(model_path, REPO)}` ({info.get('base_model', model.config.model_type)}; "
        f"{model.config.num_hidden_layers} layers, hidden size {model.config.hidden_size})"
    )
    if "dev_accuracy_fp16_stored_fp32_loaded" in info:
        model_line += f", dev accuracy {100 * info['dev_accuracy_fp16_stored_fp32_loaded']:.2f}% on all 872 sentences (its training_info.json)"
    command = "python " + " ".join(shlex.quote(part) for part in [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    lines = [
        "# Faithfulness on SST-2 dev (the DecompX paper's Table 1 protocol)",
        "",
        f"- Command (from the repository root): `{command}`",
        model_line,
        f"- Data: `{os.path.relpath(args.data, REPO)}`, the first {len(texts)} of {total_available} sentences"
        + ("" if len(texts) == total_available else " (limited to fit about 20 minutes of wall time on this machine; see below)"),
        f"- Model accuracy on these sentences, unmasked: {100 * result.accuracy:.2f}%",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; wall time {elapsed / 60:.1f} min",
        f"- Machine: {machine()}",
        f"- Protocol: rank the non-special tokens by the attribution to the predicted class, mask floor(K·n) of them with "
        f"`{tokenizer.mask_token}` for K = 0.0 … 0.9; AOPC = mean over K and sentences of p(ŷ|x) − p(ŷ|x_K); accuracy against "
        f"the gold labels, averaged over K; last column: accuracy with only the top {round(100 * result.keep_fraction)}% of the tokens kept.",
        f"- Integrated Gradients: Captum `LayerIntegratedGradients` on the word embeddings, {args.ig_steps} steps, reference "
        "`[CLS] [PAD] … [PAD] [SEP]`. Gradient x Input: `LayerGradientXActivation` on the word embeddings (sum = the dot product of "
        "gradient and embedding, the standard form). Saliency: L2 norm of the gradient with respect to the word embeddings.",
        "",
        "## Results (averaged over K)",
        "",
        result.to_markdown(timings=True),
        "",
        "Attribution time: wall seconds spent in `attribute` (IG and Gradient x Input each run once for their two reductions).",
        "",
        "## AOPC per K, most important tokens masked",
        "",
        "| Method | " + " | ".join(f"K={k:.1f}" for k in result.fractions) + " |",
        "|---|" + "---:|" * len(result.fractions),
    ]
    for name, scores in result.methods.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in scores.aopc_most) + " |")
    lines += [
        "",
        "## Accuracy (%) per K, most important tokens masked",
        "",
        "| Method | " + " | ".join(f"K={k:.1f}" for k in result.fractions) + " |",
        "|---|" + "---:|" * len(result.fractions),
    ]
    for name, scores in result.methods.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in scores.accuracy_most) + " |")
    lines += targets_section(result)
    lines += [
        "",
        "## The paper's numbers, for reference",
        "",
        "SST-2 with fine-tuned BERT-base (12 layers), most important tokens masked (Modarressi et al., ACL 2023, Table 1):",
        "",
        "| Method | AOPC | Acc |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {aopc:.3f} | {acc:.2f} |" for name, (aopc, acc) in PAPER.items()]
    lines += [
        "",
        f"![AOPC and accuracy against K]({stem.name}_curves.png)",
        "",
    ]
    markdown_path = stem.with_suffix(".md")
    markdown_path.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {markdown_path}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Faithfulness of attributions for next-token prediction, on SmolLM2-135M-Instruct (offline).

The DecompX paper's deletion protocol carried to generation. Each prompt of
``benchmarks/data/generation_prompts.tsv`` is a plain completion ("The capital of Japan is the
city of") whose one-token answer (" Tokyo") the model predicts greedily. No chat template is used,
so every prompt token is a token of the prompt's text and all of them are explained (the tokenizer
adds no special token). Each method scores the prompt tokens for the answer token; then the k% most
important tokens (k = 0, 10, ..., 90; ``round(k * n / 100)`` tokens, at most ``n - 1``) are

- removed (the sequence gets shorter), or
- replaced by a neutral token (a single space, " "),

and the drop of the answer token's log-probability from the full prompt is measured. AOPC is the
mean drop over k (higher is better when the most important tokens go first); the same with the
least important tokens first (lower is better). Paired differences between methods over the same
prompts get 95% bootstrap confidence intervals (2,000 resamples); the seconds each method takes per
prompt are measured in the same run.

Methods: DecompX exact (biases decomposed) and fast (bias-free, one pass), both explaining the
answer's logit (``LLMDecompX``); Integrated Gradients (on the input embeddings, zero baseline) and
Input x Gradient (gradient . embedding), both of the answer's log-probability; Captum's
FeatureAblation (each token replaced by the neutral token) and ShapleyValueSampling (the neutral
token as baseline, ``--shapley-samples`` permutations) of the log-probability; attention rollout
(Abnar & Zuidema 2020: heads averaged, half identity for the residual, layers multiplied, the last
position's row); random scores.

``--select`` checks the candidates (``generation_prompts_candidates.tsv``) and writes the ones the
model gets right, with a one-token answer, to ``generation_prompts.tsv``. The study is resumable:
each prompt's row is appended to ``generation_faithfulness_rows.jsonl`` in the output folder and
rows already there are not computed again (delete the file to start over).

Example::

    python benchmarks/generation_faithfulness.py --select          # write the checked prompt file
    python benchmarks/generation_faithfulness.py --limit 5         # a quick look
    python benchmarks/generation_faithfulness.py                   # every prompt (resumes)
    python benchmarks/generation_faithfulness.py --report-only     # the report of the rows computed so far

Writes ``generation_faithfulness.md`` and ``generation_faithfulness.png`` to ``--out-dir``
(default ``benchmarks/results``).
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
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "benchmarks" / "data"
FRACTIONS = [k / 10 for k in range(10)]
NEUTRAL_TEXT = " "
METHODS = (
    "DecompX exact",
    "DecompX fast",
    "Integrated Gradients",
    "Input x Gradient",
    "FeatureAblation",
    "ShapleyValueSampling",
    "attention rollout",
    "random",
)
BOOTSTRAP_SAMPLES = 2000


# --------------------------------------------------------------------------------------------
# Prompts


def read_prompts(path: Path) -> list[dict[str, str]]:
    """The rows of a prompt file: ``category``, ``prompt``, ``answer`` (the answer word, no space)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def answer_text(row: dict[str, str]) -> str:
    """The answer as it follows the prompt: after an opening quote directly, otherwise after a space."""
    return row["answer"] if row["prompt"].endswith('"') else " " + row["answer"]


def encode(tokenizer, row: dict[str, str]) -> tuple[Tensor, int | None]:
    """The prompt's ids (1, n) and the answer's token id, None when the answer is not one token in context."""
    prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(row["prompt"] + answer_text(row), add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) != len(prompt_ids) + 1:
        return torch.tensor([prompt_ids]), None
    return torch.tensor([prompt_ids]), full_ids[-1]


def select_prompts(model, tokenizer, candidates: Path, destination: Path) -> int:
    """Write the candidates whose one-token answer is the model's greedy next token; returns how many."""
    kept, rows = 0, read_prompts(candidates)
    with open(destination, "w", encoding="utf-8", newline="") as handle:
        handle.write("category\tprompt\tanswer\n")
        for row in rows:
            ids, answer = encode(tokenizer, row)
            if answer is None:
                continue
            with torch.no_grad():
                predicted = int(model(input_ids=ids).logits[0, -1].argmax())
            if predicted == answer:
                handle.write(f"{row['category']}\t{row['prompt']}\t{row['answer']}\n")
                kept += 1
    print(f"{kept} of {len(rows)} candidates answered correctly with one token -> {destination}")
    return kept


# --------------------------------------------------------------------------------------------
# Methods: each returns the scores (n,) of the prompt tokens for the answer token


def answer_log_probability(model, answer: int) -> Callable[..., Tensor]:
    def forward(input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None) -> Tensor:
        logits = model(input_ids=input_ids, inputs_embeds=inputs_embeds).logits[:, -1, :]
        return torch.log_softmax(logits.float(), -1)[:, answer]

    return forward


def method_functions(model, tokenizer, args) -> dict[str, Callable[[Tensor, int], Tensor]]:
    from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients, ShapleyValueSampling

    from captum_decompx import LLMDecompX

    exact = LLMDecompX(model, tokenizer)
    fast = LLMDecompX(model, tokenizer, include_biases=False)
    embeddings = model.get_input_embeddings()
    neutral = neutral_token(tokenizer)

    def decompx(explainer) -> Callable[[Tensor, int], Tensor]:
        return lambda ids, answer: explainer.attribute(ids, target=[answer]).token_attr[0]

    def on_embeddings(method_class, **options) -> Callable[[Tensor, int], Tensor]:
        def run(ids: Tensor, answer: int) -> Tensor:
            forward = answer_log_probability(model, answer)
            embedded = embeddings(ids).detach()
            scores = method_class(lambda e: forward(inputs_embeds=e)).attribute(embedded, **options)
            return scores[0].sum(-1).detach()

        return run

    def perturbation(method_class, **options) -> Callable[[Tensor, int], Tensor]:
        def run(ids: Tensor, answer: int) -> Tensor:
            forward = answer_log_probability(model, answer)
            with torch.no_grad():
                scores = method_class(lambda i: forward(input_ids=i)).attribute(
                    ids, baselines=neutral, perturbations_per_eval=ids.shape[1], **options
                )
            return scores[0].float()

        return run

    def rollout(ids: Tensor, answer: int) -> Tensor:
        implementation = model.config._attn_implementation
        model.set_attn_implementation("eager")  # sdpa returns no attention weights
        try:
            with torch.no_grad():
                attentions = model(input_ids=ids, output_attentions=True).attentions
        finally:
            model.set_attn_implementation(implementation)
        assert len(attentions) == model.config.num_hidden_layers, "no attention weights returned"
        n = ids.shape[1]
        flow = torch.eye(n)
        for layer in attentions:
            mixed = 0.5 * layer[0].float().mean(0) + 0.5 * torch.eye(n)
            flow = (mixed / mixed.sum(-1, keepdim=True)) @ flow
        return flow[-1]

    generator = torch.Generator().manual_seed(args.seed)
    return {
        "DecompX exact": decompx(exact),
        "DecompX fast": decompx(fast),
        "Integrated Gradients": on_embeddings(IntegratedGradients, n_steps=args.ig_steps, internal_batch_size=args.ig_steps),
        "Input x Gradient": on_embeddings(InputXGradient),
        "FeatureAblation": perturbation(FeatureAblation),
        "ShapleyValueSampling": perturbation(ShapleyValueSampling, n_samples=args.shapley_samples),
        "attention rollout": rollout,
        "random": lambda ids, answer: torch.rand(ids.shape[1], generator=generator),
    }


def neutral_token(tokenizer) -> int:
    ids = tokenizer(NEUTRAL_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"the neutral text {NEUTRAL_TEXT!r} is not one token"
    return int(ids[0])


# --------------------------------------------------------------------------------------------
# Deletion curves


def perturbed(ids: Tensor, order: Tensor, count: int, mode: str, neutral: int) -> Tensor:
    """``ids`` (1, n) with the first ``count`` positions of ``order`` removed or replaced."""
    chosen = order[:count]
    if mode == "replace":
        changed = ids.clone()
        changed[0, chosen] = neutral
        return changed
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[chosen] = False
    return ids[:, keep]


def curves(model, ids: Tensor, answer: int, scores: dict[str, Tensor], neutral: int) -> dict[str, dict[str, list[float]]]:
    """``{mode: {f"{method}|{direction}": [drop at each k]}}``, one batched forward per k and mode."""
    n = ids.shape[1]
    forward = answer_log_probability(model, answer)
    with torch.no_grad():
        full = float(forward(input_ids=ids)[0])
    orders = {}
    for name, method_scores in scores.items():
        ranking = torch.argsort(method_scores.float(), descending=True, stable=True)
        orders[f"{name}|most"] = ranking
        orders[f"{name}|least"] = ranking.flip(0)
    result: dict[str, dict[str, list[float]]] = {}
    for mode in ("remove", "replace"):
        drops: dict[str, list[float]] = {key: [] for key in orders}
        for fraction in FRACTIONS:
            count = min(round(fraction * n), n - 1)  # at least one token stays
            if count == 0:
                for key in orders:
                    drops[key].append(0.0)
                continue
            batch = torch.cat([perturbed(ids, order, count, mode, neutral) for order in orders.values()])
            with torch.no_grad():
                values = forward(input_ids=batch)
            for key, value in zip(orders, values.tolist()):
                drops[key].append(full - value)
        result[mode] = drops
    return result


# --------------------------------------------------------------------------------------------
# The run


def run_study(model, tokenizer, prompts: list[dict[str, str]], rows_path: Path, args) -> list[dict]:
    done = {}
    if rows_path.exists():
        for line in rows_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["prompt"]] = row
    methods = method_functions(model, tokenizer, args)
    neutral = neutral_token(tokenizer)
    rows = []
    with open(rows_path, "a", encoding="utf-8") as handle:
        for index, prompt in enumerate(prompts):
            if prompt["prompt"] in done:
                rows.append(done[prompt["prompt"]])
                continue
            ids, answer = encode(tokenizer, prompt)
            if answer is None:
                raise SystemExit(f"{prompt['prompt']!r}: the answer {prompt['answer']!r} is not one token; rerun --select")
            scores, seconds = {}, {}
            for name, method in methods.items():
                started = time.perf_counter()
                scores[name] = method(ids, answer).detach().float().cpu()
                seconds[name] = time.perf_counter() - started
            row = {
                "prompt": prompt["prompt"],
                "answer": prompt["answer"],
                "tokens": tokenizer.convert_ids_to_tokens(ids[0].tolist()),
                "scores": {name: value.tolist() for name, value in scores.items()},
                "seconds": seconds,
                "curves": curves(model, ids, answer, scores, neutral),
            }
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            rows.append(row)
            print(f"[{index + 1}/{len(prompts)}] {prompt['prompt']!r} -> {prompt['answer']!r}", flush=True)
    return rows


def aopc(rows: list[dict], mode: str, key: str) -> Tensor:
    """Each prompt's AOPC (mean drop over k) for one method and direction: (prompts,)."""
    return torch.tensor([sum(row["curves"][mode][key]) / len(FRACTIONS) for row in rows])


def bootstrap_interval(values: Tensor, seed: int = 0) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, values.numel(), (BOOTSTRAP_SAMPLES, values.numel()), generator=generator)
    means = values[picks].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def report(rows: list[dict], args, seconds_total: float) -> str:
    lines = [
        "# Faithfulness of next-token attributions: SmolLM2-135M-Instruct",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {len(rows)} prompts; wall time of the run "
        f"{seconds_total:.0f} s (prompts computed by earlier runs not counted; nan: a report of stored rows).  ",
        f"Integrated Gradients: {args.ig_steps} steps; ShapleyValueSampling: {args.shapley_samples} permutations; "
        f"neutral token {NEUTRAL_TEXT!r}; k = 0, 10, ..., 90%.",
        "",
        "AOPC: mean drop of the answer token's log-probability over k (nats). Most-first: higher is better; "
        "least-first: lower is better. Seconds: mean per prompt, on this run's machine.",
        "",
        "| method | AOPC remove, most first | AOPC remove, least first | AOPC replace, most first | AOPC replace, least first | seconds / prompt |",
        "|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        cells = [
            f"{float(aopc(rows, mode, f'{name}|{d}').mean()):.3f}" for mode in ("remove", "replace") for d in ("most", "least")
        ]
        seconds = sum(row["seconds"][name] for row in rows) / len(rows)
        lines.append(f"| {name} | {' | '.join(cells)} | {seconds:.3f} |")
    lines += [
        "",
        "Paired differences of AOPC, most important first (DecompX exact minus the other method, same prompts; "
        "95% bootstrap interval over prompts):",
        "",
        "| other method | remove: difference [95% CI] | replace: difference [95% CI] |",
        "|---|---|---|",
    ]
    for name in METHODS[1:]:
        cells = []
        for mode in ("remove", "replace"):
            difference = aopc(rows, mode, "DecompX exact|most") - aopc(rows, mode, f"{name}|most")
            low, high = bootstrap_interval(difference)
            cells.append(f"{float(difference.mean()):+.3f} [{low:+.3f}, {high:+.3f}]")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    percent = [100 * f for f in FRACTIONS]
    for axis, mode in zip(axes, ("remove", "replace")):
        for name in METHODS:
            curve = torch.tensor([row["curves"][mode][f"{name}|most"] for row in rows]).mean(0)
            axis.plot(percent, curve.tolist(), marker="o", markersize=3, label=name)
        axis.set_title(f"most important tokens {'removed' if mode == 'remove' else 'replaced by a space'}")
        axis.set_xlabel("k (% of the prompt tokens)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("drop of the answer's log-probability")
    axes[1].legend(fontsize=8)
    figure.suptitle(f"SmolLM2-135M-Instruct, {len(rows)} prompts")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--prompts", type=Path, default=DATA / "generation_prompts.tsv")
    parser.add_argument("--select", action="store_true", help="check the candidates and write --prompts, then stop")
    parser.add_argument("--candidates", type=Path, default=DATA / "generation_prompts_candidates.tsv")
    parser.add_argument("--limit", type=int, help="the first N prompts")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--shapley-samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from the rows computed so far, computing nothing"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.report_only:
        rows_path = args.out_dir / "generation_faithfulness_rows.jsonl"
        rows = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        markdown = report(rows, args, float("nan"))
        (args.out_dir / "generation_faithfulness.md").write_text(markdown, encoding="utf-8")
        plot(rows, args.out_dir / "generation_faithfulness.png")
        print(markdown)
        return 0

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sys.path.insert(0, str(REPO))
    from captum_decompx.demo_llm import load_demo_llm

    loaded = load_demo_llm()
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.select:
        select_prompts(model, tokenizer, args.candidates, args.prompts)
        return 0
    prompts = read_prompts(args.prompts)[: args.limit]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = run_study(model, tokenizer, prompts, args.out_dir / "generation_faithfulness_rows.jsonl", args)
    markdown = report(rows, args, time.perf_counter() - started)
    (args.out_dir / "generation_faithfulness.md").write_text(markdown, encoding="utf-8")
    plot(rows, args.out_dir / "generation_faithfulness.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

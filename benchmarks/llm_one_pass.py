"""Generation attribution at the cost of one step: LLMDecompX on T-token targets.

``LLMDecompX`` explains a T-token target from one pass over the prompt and the target: one exact
decomposition of the final sequence, or (fast, biases left out) one frozen forward pass and one
batched backward pass. This benchmark times it for T = 1, 8, 32, 128 after a 96-token prompt, on

* ``llama-4l``: a random Llama causal LM, 4 layers, hidden 256, 4 heads, intermediate 1024,
  vocabulary 32000;
* ``gpt2``: a random GPT-2-size causal LM (GPT-2 small's configuration: 12 layers, hidden 768,
  vocabulary 50257), which the full run limits to fewer T values (see ``--gpt2-targets``);

against the same explanation, step by step (``one_pass=False``), and against Captum's
``LLMGradientAttribution`` with ``LayerGradientXActivation`` on the embeddings and
``LLMAttribution`` with ``FeatureAblation`` (one feature per prompt token), on the same prompts
and targets. Feature ablation (8 to 14 s per target token on ``llama-4l`` with one thread) runs
for ``--fa-targets`` only (T = 1, 8), the step-by-step DecompX for ``--step-targets`` (T = 1, 8),
and ``gpt2`` for ``--gpt2-targets`` (T = 1, 8, 32) with ``--gpt2-methods`` (exact, fast, GxA). The targets checked, as ratios in one process: exact T = 8 at most 2x and T = 32 at
most 3x the cost of T = 1; fast T = 32 at most 25x T = 1.

Every call runs in one process with ``torch.set_num_threads(--threads)``; after one warm-up per
method, the (method, T) points run interleaved, ``--repeats`` rounds, and the report gives medians,
so that load from other processes hits every point alike.

Usage::

    python benchmarks/llm_one_pass.py                        # the full run (tens of minutes)
    python benchmarks/llm_one_pass.py --quick                # a tiny model, seconds
    python benchmarks/llm_one_pass.py --models llama-4l --targets 1,8,32 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

DEFAULT_OUT = os.path.join(HERE, "results", "llm_one_pass.md")
PROMPT_TOKENS = 96
TARGETS = (1, 8, 32, 128)
GPT2_TARGETS = (1, 8, 32)
STEP_TARGETS = (1, 8)  # the step-by-step reference runs only where it is affordable
FA_TARGETS = (1, 8)  # feature ablation: 8 to 14 s per target token on llama-4l (one thread)
METHODS = ("exact", "fast", "exact-steps", "fast-steps", "lgxa", "fa")
METHOD_LABELS = {
    "exact": "DecompX exact (one pass)",
    "fast": "DecompX fast (one pass)",
    "exact-steps": "DecompX exact (step by step)",
    "fast-steps": "DecompX fast (step by step)",
    "lgxa": "Captum LLMGradientAttribution + LayerGradientXActivation",
    "fa": "Captum LLMAttribution + FeatureAblation",
}
#: (method, T, at most this many times its T = 1 cost)
RATIO_TARGETS = (("exact", 8, 2.0), ("exact", 32, 3.0), ("fast", 32, 25.0))


# --------------------------------------------------------------------------------------------
# Models and inputs


def build_model(name: str) -> Any:
    """The named random causal LM (seeded, float32, eval mode)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if name == "llama-4l":
        config = transformers.LlamaConfig(
            vocab_size=32000,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=1024,
            max_position_embeddings=1024,
        )
        return transformers.LlamaForCausalLM(config).eval()
    if name == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    if name == "llama-tiny":
        config = transformers.LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=40,
            max_position_embeddings=256,
        )
        return transformers.LlamaForCausalLM(config).eval()
    raise ValueError(f"Unknown model {name!r}; choose llama-4l, gpt2 or llama-tiny.")


def word_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer whose token ``i`` is the word ``t{i}``: random ids become a text
    prompt that Captum's ``TextTokenInput`` encodes back to the same ids."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = {f"t{i}": i for i in range(vocab_size)}
    word_level = Tokenizer(models.WordLevel(vocabulary, unk_token="t0"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="t0", pad_token="t0")


def make_calls(
    model: Any,
    tokenizer: Any,
    prompt_tokens: int,
    targets: Sequence[int],
    methods: Sequence[str],
    step_targets: Sequence[int],
    fa_targets: Sequence[int] = FA_TARGETS,
) -> dict[tuple[str, int], Callable[[], Any]]:
    """One call per (method, T): every method explains the same prompt and the first T tokens of
    the same target."""
    import torch
    from captum.attr import FeatureAblation, LayerGradientXActivation, LLMAttribution, LLMGradientAttribution, TextTokenInput

    from captum_decompx import LLMDecompX

    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt_ids = torch.randint(1, vocab, (prompt_tokens,), generator=generator)
    target_ids = torch.randint(1, vocab, (max(targets),), generator=generator)
    prompt_text = " ".join(f"t{i}" for i in prompt_ids.tolist())
    explainers = {
        "exact": LLMDecompX(model, tokenizer),
        "fast": LLMDecompX(model, tokenizer, include_biases=False),
        "exact-steps": LLMDecompX(model, tokenizer, one_pass=False),
        "fast-steps": LLMDecompX(model, tokenizer, include_biases=False, one_pass=False),
    }
    lgxa = LLMGradientAttribution(LayerGradientXActivation(model, model.get_input_embeddings()), tokenizer)
    fa = LLMAttribution(FeatureAblation(model), tokenizer)
    calls: dict[tuple[str, int], Callable[[], Any]] = {}
    for count in targets:
        target = target_ids[:count]
        for method in methods:
            if (method.endswith("-steps") and count not in step_targets) or (method == "fa" and count not in fa_targets):
                continue
            if method in explainers:
                calls[method, count] = lambda e=explainers[method], t=target: e.attribute(prompt_ids, target=t)
            elif method == "lgxa":
                calls[method, count] = lambda t=target: lgxa.attribute(TextTokenInput(prompt_text, tokenizer), target=t)
            elif method == "fa":
                calls[method, count] = lambda t=target: fa.attribute(TextTokenInput(prompt_text, tokenizer), target=t)
            else:
                raise ValueError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")
    return calls


# --------------------------------------------------------------------------------------------
# Measuring


def time_interleaved(
    calls: dict[tuple[str, int], Callable[[], Any]], repeats: int, log: Callable[[str], None]
) -> dict[tuple[str, int], list[float]]:
    """Seconds of every call in every round, the points interleaved, after one warm-up per method
    (at its smallest T)."""
    warmed: set[str] = set()
    for (method, _count), call in sorted(calls.items(), key=lambda item: item[0][1]):
        if method not in warmed:
            call()
            warmed.add(method)
    times: dict[tuple[str, int], list[float]] = {point: [] for point in calls}
    for round_index in range(repeats):
        for point, call in calls.items():
            started = time.perf_counter()
            call()
            times[point].append(time.perf_counter() - started)
        log(f"  round {round_index + 1}/{repeats} done")
    return times


def ratio_rows(medians: dict[tuple[str, int], float]) -> list[tuple[str, int, float, float]]:
    """(method, T, measured ratio to T = 1, target) for the targets whose points were measured."""
    rows = []
    for method, count, limit in RATIO_TARGETS:
        if (method, count) in medians and (method, 1) in medians:
            rows.append((method, count, medians[method, count] / medians[method, 1], limit))
    return rows


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        load = os.getloadavg()
        return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


# --------------------------------------------------------------------------------------------
# Report


def write_report(out: str, sections: list[dict], command: str, threads: int) -> None:
    """The Markdown table (one per model) and, next to it, the plot (seconds against T)."""
    lines = [
        "# Generation attribution: one pass against step by step and Captum's LLM methods",
        "",
        f"Command{'s' if ';' in command else ''}: `{command}` ({datetime.date.today().isoformat()}, torch threads: {threads}).",
        "Seconds per explained (prompt, target): medians of interleaved calls in one process "
        "(see `benchmarks/llm_one_pass.py`); the machine was shared with other processes "
        "(load at the start and end of each model below).",
        "",
    ]
    for section in sections:
        medians: dict[tuple[str, int], float] = section["medians"]
        counts = sorted({count for _, count in medians})
        methods = [m for m in METHODS if any((m, c) in medians for c in counts)]
        lines += [
            f"## {section['model']} ({section['description']})",
            "",
            f"Prompt {section['prompt']} tokens; {section['repeats']} rounds. Load: {section['load_before']} / {section['load_after']}.",
            "",
        ]
        lines.append("| method | " + " | ".join(f"T = {c}" for c in counts) + " |")
        lines.append("|---|" + "---:|" * len(counts))
        for method in methods:
            cells = []
            for count in counts:
                value = medians.get((method, count))
                ratio = (
                    "" if value is None or (method, 1) not in medians or count == 1 else f" ({value / medians[method, 1]:.1f}x)"
                )
                cells.append("–" if value is None else f"{value:.3f}{ratio}")
            lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
        lines.append("")
        for method, count, ratio, limit in ratio_rows(medians):
            verdict = "met" if ratio <= limit else "MISSED"
            lines.append(f"- {method}, T = {count}: {ratio:.2f}x the cost of T = 1 (target at most {limit:g}x): {verdict}")
        lines.append("")
    with open(out, "w") as handle:
        handle.write("\n".join(lines))
    _plot(os.path.splitext(out)[0] + ".png", sections)


def save_sections(path: str, sections: list[dict], command: str, threads: int) -> None:
    """The measured medians as JSON (``--combine`` renders several runs as one report)."""
    import json

    records = [{**section, "medians": [[m, c, v] for (m, c), v in section["medians"].items()]} for section in sections]
    with open(path, "w") as handle:
        json.dump({"command": command, "threads": threads, "sections": records}, handle, indent=1)


def load_sections(path: str) -> tuple[list[dict], str, int]:
    import json

    with open(path) as handle:
        saved = json.load(handle)
    sections = [
        {**section, "medians": {(m, int(c)): float(v) for m, c, v in section["medians"]}} for section in saved["sections"]
    ]
    return sections, saved["command"], int(saved["threads"])


def _plot(path: str, sections: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(sections), figsize=(6 * len(sections), 4.2), squeeze=False)
    for axis, section in zip(axes[0], sections):
        medians = section["medians"]
        for method in METHODS:
            points = sorted((count, value) for (m, count), value in medians.items() if m == method)
            if points:
                style = "-o" if not method.endswith("-steps") else "--x"
                color = f"C{METHODS.index(method)}"  # one colour per method in every panel
                axis.plot([p[0] for p in points], [p[1] for p in points], style, color=color, label=METHOD_LABELS[method])
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("target tokens T")
        axis.set_ylabel("seconds (median)")
        axis.set_title(f"{section['model']}, prompt {section['prompt']} tokens")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------------------------


DESCRIPTIONS = {
    "llama-4l": "random Llama, 4 layers, hidden 256, intermediate 1024, vocabulary 32000",
    "gpt2": "random GPT-2 small configuration, 12 layers, hidden 768, vocabulary 50257",
    "llama-tiny": "random Llama, 2 layers, hidden 32, vocabulary 100",
}


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="llama-4l,gpt2", help="comma-separated: llama-4l, gpt2, llama-tiny")
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)), help="target lengths T")
    parser.add_argument("--gpt2-targets", default=",".join(map(str, GPT2_TARGETS)), help="target lengths T for gpt2")
    parser.add_argument("--step-targets", default=",".join(map(str, STEP_TARGETS)), help="T values of the step-by-step runs")
    parser.add_argument("--fa-targets", default=",".join(map(str, FA_TARGETS)), help="T values of feature ablation")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument(
        "--gpt2-methods", default="exact,fast,lgxa", help="methods for gpt2 (feature ablation takes minutes there)"
    )
    parser.add_argument("--prompt", type=int, default=PROMPT_TOKENS, help="prompt tokens")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="a tiny model, T = 1, 2, a few seconds")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the Markdown report (the plot and the JSON medians beside it)")
    parser.add_argument(
        "--combine", metavar="JSON,...", help="render the saved medians of earlier runs as one report, measure nothing"
    )
    args = parser.parse_args(argv)
    if args.combine:
        loaded = [load_sections(path) for path in args.combine.split(",")]
        sections = [section for run in loaded for section in run[0]]
        write_report(args.out, sections, "; ".join(run[1] for run in loaded), loaded[0][2])
        print(f"wrote {args.out}", flush=True)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.models, args.targets, args.step_targets, args.fa_targets, args.prompt = "llama-tiny", "1,2", "1,2", "1,2", 8
    sections = []
    for name in [m for m in args.models.split(",") if m]:
        is_gpt2 = name == "gpt2"
        targets = _ints(args.gpt2_targets if is_gpt2 else args.targets)
        methods = (args.gpt2_methods if is_gpt2 else args.methods).split(",")
        model = build_model(name)
        tokenizer = word_tokenizer(model.config.vocab_size)
        calls = make_calls(model, tokenizer, args.prompt, targets, methods, _ints(args.step_targets), _ints(args.fa_targets))
        print(f"{name}: {len(calls)} points, {args.repeats} rounds", flush=True)
        load_before = _load()
        times = time_interleaved(calls, args.repeats, lambda line: print(line, flush=True))
        medians = {point: statistics.median(values) for point, values in times.items()}
        for (method, count), value in sorted(medians.items()):
            print(f"  {method:12s} T={count:4d} {value:8.3f} s", flush=True)
        sections.append(
            {
                "model": name,
                "description": DESCRIPTIONS[name],
                "prompt": args.prompt,
                "repeats": args.repeats,
                "medians": medians,
                "load_before": load_before,
                "load_after": _load(),
            }
        )
    command = "python benchmarks/llm_one_pass.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    write_report(args.out, sections, command.strip(), args.threads)
    save_sections(os.path.splitext(args.out)[0] + ".json", sections, command.strip(), args.threads)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

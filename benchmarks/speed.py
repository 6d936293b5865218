"""Wall time and peak memory of DecompX (exact and fast) against Captum's gradient methods.

Every method explains the same target class of the same inputs in one run:

* ``exact``: ``DecompX(forward_func, model=model)`` (biases decomposed, the exact propagation);
* ``fast``: ``DecompX(forward_func, model=model, include_biases=False)`` (one forward pass of
  the real model with its nonlinear coefficients frozen, and one backward pass);
* ``lig``: ``LayerIntegratedGradients`` on the word embeddings, ``n_steps=50``, baselines of pad
  ids that keep the first and last tokens ([CLS]/[SEP]) as in Captum's BERT tutorial;
* ``gxa``: ``LayerGradientXActivation`` on the word embeddings;
* ``saliency``: ``Saliency`` on ``inputs_embeds`` (the word-embedding output) through a wrapper
  forward function, the usual way to run an input-gradient method on token ids.

The grid is models x batch sizes x sequence lengths. Each (model, batch) runs in its own worker
process, which builds the model once and then measures every (length, method) point. Peak memory
is the growth of the worker's peak resident set over one call on CPU (the kernel's high-water mark
is reset before the call through ``/proc/self/clear_refs``), and ``torch.cuda.max_memory_allocated``
on CUDA. The script prints a table, writes it with the machine description to
``<out>/speed.md`` and draws a log-log plot of time against length to ``<out>/speed.png``.

The code is split into measuring (``speed_measure.py``: models, calls, peak memory, worker
processes), reporting (``speed_report.py``: tables, targets, plot, results file) and the decoder
section (``speed_decoder.py``); this file is the command line. The fast path against Gradient x
Activation (and AttnLRP), interleaved in one process with peak memory, is the section
``fast_floor.py`` (``python benchmarks/speed.py --fast-floor [its options]``). Memory estimates of DecompX's own
paths come from ``captum_decompx.core.memory``.

Usage::

    python benchmarks/speed.py                      # the grid, points estimated over 30 s skipped (< 20 min)
    python benchmarks/speed.py --threads 1 --snapshot   # how results/speed.md was made
    python benchmarks/speed.py --max-point-seconds 0    # every point (estimated 90 min)
    python benchmarks/speed.py --quick              # CI-sized: tiny model, N in {16, 32}, batch 1
    python benchmarks/speed.py --models bert-base --lengths 64,128 --batches 1 --methods fast,gxa
    python benchmarks/speed.py --fast-floor --threads 1   # fast DecompX vs GxA (and AttnLRP), issue targets
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import time
from typing import Callable, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling modules below

from speed_decoder import DECODER_PROMPT, run_decoder_section  # noqa: E402
from speed_measure import (  # noqa: E402
    DEFAULT_OUT,
    FULL_BATCHES,
    FULL_LENGTHS,
    FULL_MODELS,
    GIB,
    LIG_STEPS,
    METHODS,
    MIB,
    MODEL_SPECS,
    QUICK_BATCHES,
    QUICK_LENGTHS,
    QUICK_MODELS,
    PeakMemory,
    RunInfo,
    Shape,
    _uptime,
    activation_bytes_per_row,
    estimate_bytes,
    lig_steps_per_chunk,
    package_state,
    run_job,
    run_worker,
    snapshot_package,
)
from speed_report import _print_summary, check_targets, format_tables, write_results  # noqa: E402

__all__ = [
    "LIG_STEPS",
    "METHODS",
    "PeakMemory",
    "Shape",
    "activation_bytes_per_row",
    "check_targets",
    "estimate_bytes",
    "format_tables",
    "lig_steps_per_chunk",
    "main",
    "parse_args",
    "write_results",
]


# --------------------------------------------------------------------------------------------
# Command line


def _int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def _name_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        return names

    return parse


def _always_run(text: str) -> list[list]:
    points = []
    for item in text.split(","):
        if item.strip():
            model, batch, seq, method = item.strip().split(":")
            points.append([model, int(batch), int(seq), method])
    return points


# The target points of the issue: they run whatever --max-point-seconds says.
DEFAULT_ALWAYS_RUN = ",".join([f"bert-base:1:{n}:{m}" for n in (16, 32, 64, 128) for m in METHODS] + ["bert-base:1:512:exact"])


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized run: tiny random model, N in {16, 32}, batch 1")
    parser.add_argument("--models", type=_name_list(tuple(MODEL_SPECS)), help=f"default: {','.join(FULL_MODELS)}")
    parser.add_argument("--lengths", type=_int_list, help=f"default: {','.join(map(str, FULL_LENGTHS))}")
    parser.add_argument("--batches", type=_int_list, help=f"default: {','.join(map(str, FULL_BATCHES))}")
    parser.add_argument("--methods", type=_name_list(METHODS), default=list(METHODS), help=f"default: {','.join(METHODS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, help="timed calls per cheap point (median; default 3)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for speed.md and speed.png")
    parser.add_argument("--json", help="also write the raw results to this JSON file")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: torch's default)")
    parser.add_argument(
        "--max-point-seconds",
        type=float,
        default=30.0,
        help="skip a point whose extrapolated time exceeds this (0: no cap); target points always run",
    )
    parser.add_argument(
        "--always-run",
        type=_always_run,
        default=_always_run(DEFAULT_ALWAYS_RUN),
        help="model:batch:N:method points exempt from the cap (default: the target points)",
    )
    parser.add_argument(
        "--expensive-seconds",
        type=float,
        default=15.0,
        help="above this estimated time a point is timed once after a reduced warm-up",
    )
    parser.add_argument(
        "--repeat-budget",
        type=float,
        default=10.0,
        help="a point is timed as many times (up to --repeats) as fit in this many seconds",
    )
    parser.add_argument("--lig-memory", type=int, default=2 * GIB, help="activation budget of one LIG chunk (bytes)")
    parser.add_argument("--memory-limit", type=int, help="bytes a point may need (default: the available memory)")
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="benchmark the committed captum_decompx of HEAD, extracted once at the start "
        "(the checkout may change during a long run)",
    )
    parser.add_argument("--note", default="", help="a sentence about the run's conditions, for the results file")
    parser.add_argument("--from-json", help="rewrite speed.md and speed.png from a --json file, without measuring")
    parser.add_argument(
        "--decoder",
        action="store_true",
        help="run the decoder section instead: fast DecompX against LayerGradientXActivation "
        "on a random Llama-family causal LM (hidden 1024, 8 layers) at a 1,024-token prompt; "
        "writes speed_decoder.md",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = args.models or list(QUICK_MODELS if args.quick else FULL_MODELS)
    if args.decoder:
        args.lengths = args.lengths or [DECODER_PROMPT]
    args.lengths = args.lengths or list(QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    args.batches = args.batches or list(QUICK_BATCHES if args.quick else FULL_BATCHES)
    args.repeats = args.repeats or 3
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; returns the process exit code (1 if a point failed)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--fast-floor"]:  # the fast path's section, with its own options
        import fast_floor

        return fast_floor.main(arguments[1:])
    args = parse_args(argv)
    if args.worker:  # the measuring side's worker (also reachable as `python benchmarks/speed_measure.py`)
        run_worker(json.load(sys.stdin))
        return 0
    if args.decoder:
        return run_decoder_section(args)
    if args.from_json:
        with open(args.from_json) as handle:
            saved = json.load(handle)
        results, info = saved["results"], RunInfo(**saved["info"])
        if args.note:
            info.settings["note"] = args.note
        write_results(results, args.out, info)
        _print_summary(results, info, args.out)
        return 0
    if args.device == "cpu" and not PeakMemory.available():
        print("note: /proc/self/clear_refs is not writable here; peak memory is reported as n/a", file=sys.stderr)
    shown = list(sys.argv[1:]) if argv is None else list(argv)
    info = RunInfo(
        command=shlex.join(["python", "benchmarks/speed.py", *shown]),
        started=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        load_start=_uptime(),
        settings={
            "methods": args.methods,
            "device": args.device,
            "repeats": args.repeats,
            "repeat_budget": args.repeat_budget,
            "expensive_seconds": args.expensive_seconds,
            "max_point_seconds": args.max_point_seconds,
            "lig_memory": args.lig_memory,
            "note": args.note,
        },
    )
    package_root = None
    if args.snapshot:
        package_root, info.package = snapshot_package()
    else:
        info.package = package_state()
    started = time.perf_counter()
    results: list[dict] = []

    def report(record: dict) -> None:
        where = f"{record['model']:>10} B={record['batch']:<2} N={record['n']:<4} {record['method']:<9}"
        if record["status"] == "ok":
            peak = record.get("peak_bytes")
            memory = "n/a" if peak is None else f"{peak / MIB:6.0f} MiB"
            print(
                f"{where} {record['time_s']:9.3f} s wall {record['cpu_s']:9.3f} s CPU {memory} "
                f"(x{record['repeats']}, est. {record['estimate_s']:.1f} s, load {record.get('load_1min', 0):.1f})",
                flush=True,
            )
        else:
            print(f"{where} {record['status']}: {record['reason']}", flush=True)

    try:
        _run_grid(args, info, results, report, package_root)
    finally:
        if package_root:
            shutil.rmtree(package_root, ignore_errors=True)
    info.wall_seconds = time.perf_counter() - started
    info.load_end = _uptime()
    write_results(results, args.out, info, args.json)
    _print_summary(results, info, args.out)
    return 1 if any(r["status"] == "failed" for r in results) else 0


def _run_grid(args: argparse.Namespace, info: RunInfo, results: list, report, package_root: Optional[str]) -> None:
    """Run one job per (model, batch), appending to ``results``."""
    for model in args.models:
        for batch in args.batches:
            job = {
                "model": model,
                "batch": batch,
                "points": [[seq, method] for seq in sorted(args.lengths) for method in args.methods],
                "device": args.device,
                "repeats": args.repeats,
                "threads": args.threads,
                "max_point_seconds": args.max_point_seconds,
                "expensive_seconds": args.expensive_seconds,
                "repeat_budget": args.repeat_budget,
                "always_run": args.always_run,
                "lig_memory": args.lig_memory,
                "memory_limit": args.memory_limit,
                "package_root": package_root,
            }
            earlier = [r for r in results if r["model"] == model]
            results.extend(run_job(job, info, report, earlier))


if __name__ == "__main__":
    sys.exit(main())

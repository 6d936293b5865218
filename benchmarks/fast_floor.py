"""Fast DecompX at the floor: its cost against Gradient x Activation (and AttnLRP where LXT runs).

The fast path is one frozen forward pass of the real model and one backward pass, like Gradient x
Input. This benchmark checks the targets of that design:

* fast / GxA <= 1.10 for N >= 64 and <= 1.20 below (N = 16, 32);
* the fast path's peak memory <= 1.2 x GxA's.

Models: the BERT-base-sized random classifier of ``speed.py`` (N = 16 ... 512, batch 1 and 8) and
the Llama-family causal LM of ``speed.py``'s decoder section at 1,024 prompt tokens. Methods run
in one process, interleaved (fast, GxA, fast, GxA, ...) after one warm-up each; times are medians
of ``--repeats`` calls, so that load from other processes hits both methods alike. Peak memory is
the growth of the process's peak resident set over one call (``measure.PeakMemory``).

AttnLRP (LXT 2.1) needs transformers 4.57 and monkey-patches torch and transformers classes for
the whole process, so it runs in its own worker process (``--lxt-python``, an interpreter of an
environment with transformers 4.57 and lxt); that worker first times GxA on the unpatched model,
then patches and times AttnLRP, and reports both, so its ratio is also measured in one process.

Usage::

    python benchmarks/fast_floor.py --threads 1                      # the full run (about 30-60 min)
    python benchmarks/fast_floor.py --quick                          # tiny model, seconds
    python benchmarks/fast_floor.py --lengths 64,128 --batches 1 --decoder-lengths '' --lxt-python ''
"""

from __future__ import annotations

import argparse
import datetime
import importlib.machinery
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import speed_measure as measure  # noqa: E402  (model builder, inputs, GxA call, peak memory)
from speed import _int_list  # noqa: E402

TARGET_AT_64 = 1.10
TARGET_BELOW_64 = 1.20
MEMORY_TARGET = 1.2
DEFAULT_LXT_PYTHON = "/work/venv-lxt/bin/python"
LXT_PREFIX = "@@lxt "


def time_interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each method, the methods alternating after one warm-up each."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_bytes(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Optional[int]]:
    """Median peak memory growth over one call of each method (None where it cannot be measured)."""
    if not measure.PeakMemory.available():
        return {name: None for name in calls}
    meter = measure.PeakMemory("cpu")
    peaks: dict[str, list[int]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            meter.start()
            result = call()
            peaks[name].append(meter.stop())
            del result
    return {name: int(statistics.median(values)) for name, values in peaks.items()}


def encoder_calls(model, batch: int, seq: int, model_name: str) -> dict[str, Callable[[], Any]]:
    spec = measure.MODEL_SPECS[model_name]
    ids, mask, baselines = measure.make_inputs(spec, model.config.vocab_size, batch, seq, "cpu")
    return {method: measure.make_call(method, model, ids, mask, baselines, lig_internal_batch=1) for method in ("fast", "gxa")}


def decoder_calls(model, seq: int) -> dict[str, Callable[[], Any]]:
    import torch
    from captum.attr import LayerGradientXActivation

    from captum_decompx import DecompX

    ids = torch.randint(0, model.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(seq))

    def next_token_logits(input_ids):
        return model(input_ids=input_ids).logits[:, -1, :]

    with torch.no_grad():
        target = int(next_token_logits(ids).argmax())
    gxa = LayerGradientXActivation(next_token_logits, model.get_input_embeddings())
    decompx = DecompX(next_token_logits, model=model, include_biases=False)
    return {
        "fast": lambda: decompx.attribute(ids, target=target),
        "gxa": lambda: gxa.attribute(ids, target=target).sum(-1),
    }


def target_for(seq: int) -> float:
    return TARGET_AT_64 if seq >= 64 else TARGET_BELOW_64


# --------------------------------------------------------------------------------------------
# AttnLRP worker (runs under --lxt-python)


def lxt_worker(args: argparse.Namespace) -> int:
    """Time GxA on the unpatched model, then patch with LXT and time AttnLRP, for every length."""
    import torch

    torch.set_num_threads(args.threads)
    _stub_torchvision()
    import transformers.models.bert.modeling_bert as modeling_bert
    from lxt.efficient import monkey_patch
    from lxt.efficient.models.bert import attnLRP

    spec = measure.MODEL_SPECS[args.model]
    model = measure.build_model(args.model)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    inputs = {seq: measure.make_inputs(spec, model.config.vocab_size, args.batch, seq, "cpu") for seq in args.lengths}
    gxa = {}
    for seq in args.lengths:
        ids, mask, baselines = inputs[seq]
        call = measure.make_call("gxa", model, ids, mask, baselines, lig_internal_batch=1)
        gxa[seq] = (time_interleaved({"gxa": call}, args.repeats)["gxa"], peak_bytes({"gxa": call}, 1)["gxa"])
    monkey_patch(modeling_bert, attnLRP)
    patched = modeling_bert.BertForSequenceClassification(model.config)
    patched.load_state_dict(state)
    patched = patched.float().eval()
    for seq in args.lengths:
        ids, mask, _ = inputs[seq]

        def attnlrp(ids=ids, mask=mask):
            embeds = patched.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = patched(inputs_embeds=embeds, attention_mask=mask).logits
            (grad,) = torch.autograd.grad(logits[:, measure.TARGET_CLASS].sum(), embeds)
            return (grad * embeds).sum(-1)

        seconds = time_interleaved({"lxt": attnlrp}, args.repeats)["lxt"]
        memory = peak_bytes({"lxt": attnlrp}, 1)["lxt"]
        payload = {
            "seq": seq,
            "batch": args.batch,
            "lxt_s": seconds,
            "lxt_bytes": memory,
            "gxa_s": gxa[seq][0],
            "gxa_bytes": gxa[seq][1],
        }
        print(LXT_PREFIX + json.dumps(payload), flush=True)
    return 0


def _stub_torchvision() -> None:
    """``lxt.efficient.models`` imports torchvision's ViT at import time; the CPU build of torch
    2.13 has no matching torchvision wheel here, and the BERT patch does not use it. An empty
    stand-in module lets the import succeed (worker process only)."""
    import types

    import torch

    try:
        import torchvision.models.vision_transformer  # noqa: F401
    except Exception:
        vision = types.ModuleType("torchvision.models.vision_transformer")
        vision.nn = torch.nn  # type: ignore[attr-defined]
        models = types.ModuleType("torchvision.models")
        root = types.ModuleType("torchvision")
        models.vision_transformer = vision  # type: ignore[attr-defined]
        root.models = models  # type: ignore[attr-defined]
        for stub in (vision, models, root):
            stub.__spec__ = importlib.machinery.ModuleSpec(stub.__name__, None)
        sys.modules.update({"torchvision": root, "torchvision.models": models, "torchvision.models.vision_transformer": vision})


def run_lxt(args: argparse.Namespace, batch: int) -> tuple[dict[int, dict], str]:
    """AttnLRP rows from a worker process, or none and the reason."""
    python = args.lxt_python
    if not python:
        return {}, "not run (--lxt-python '')"
    if not os.path.exists(python):
        return {}, f"not run: {python} does not exist (make an environment with transformers 4.57 and lxt)"
    command = [
        python,
        os.path.abspath(__file__),
        "--lxt-worker",
        "--model",
        args.model,
        "--batch",
        str(batch),
        "--lengths",
        ",".join(map(str, args.lengths)),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    environment = {**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    rows = {}
    for line in done.stdout.splitlines():
        if line.startswith(LXT_PREFIX):
            row = json.loads(line[len(LXT_PREFIX) :])
            rows[row["seq"]] = row
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return rows, f"worker failed: {tail}"
    return rows, "ran"


# --------------------------------------------------------------------------------------------
# Report


def _mib(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value / measure.MIB:.0f}"


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _cell(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdicts(rows: Sequence[dict]) -> list[str]:
    """The points that miss a target, as sentences (empty: every target met)."""
    misses = []
    for row in rows:
        ratio = row["fast_s"] / row["gxa_s"]
        if ratio > row["target"]:
            misses.append(f"{row['model']} batch {row['batch']} N={row['seq']}: fast/GxA {ratio:.2f} > {row['target']:.2f}")
        memory = _ratio(row["fast_bytes"], row["gxa_bytes"])
        if memory is not None and memory > MEMORY_TARGET:
            misses.append(
                f"{row['model']} batch {row['batch']} N={row['seq']}: peak memory fast/GxA {memory:.2f} > {MEMORY_TARGET}"
            )
    return misses


def write_report(
    rows: Sequence[dict], lxt_notes: dict[int, str], args: argparse.Namespace, load: tuple[str, str], path: str
) -> str:
    import torch
    import transformers

    lines = [
        "# Fast DecompX at the floor: against Gradient x Activation and AttnLRP",
        "",
        f"- Command: `{shlex.join(['python', 'benchmarks/fast_floor.py', *sys.argv[1:]])}`",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, torch threads {torch.get_num_threads()}, CPU",
        f"- Load (`uptime`) before: `{load[0]}`; after: `{load[1]}`",
        "- Ratios are of medians of interleaved calls in one process (fast, GxA, fast, GxA, "
        f"...; {args.repeats} each after a warm-up), which other load on the machine (see the load "
        "average above) hits alike; absolute times depend on that load.",
        "- fast: `DecompX(forward_func, model=model, include_biases=False).attribute(ids, target=1)` (one frozen "
        "forward pass of the real model, one backward pass); GxA: Captum's `LayerGradientXActivation` on the "
        "word embeddings, summed over the embedding (as in `speed.py`). Peak memory: growth of the process's "
        "peak resident set over one call (median of "
        f"{args.memory_repeats}).",
        f"- Targets: fast/GxA <= {TARGET_AT_64} at N >= 64, <= {TARGET_BELOW_64} below; peak memory <= {MEMORY_TARGET} x GxA's.",
        "- AttnLRP: LXT 2.1 (`lxt.efficient`, `attnLRP` patch of transformers' BERT) in a worker process with "
        "transformers 4.57 (LXT 2.1 targets transformers 4; the issue reports it fails to import with 5.24); gradient x input at the embeddings. Its "
        "worker times GxA on the unpatched model first: `LXT/GxA` is measured in that process.",
        "",
        "| model | batch | N | fast (s) | GxA (s) | fast / GxA | target | fast peak (MiB) | GxA peak (MiB) | memory fast / GxA | AttnLRP (s) | AttnLRP / GxA | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row["fast_s"] / row["gxa_s"]
        memory = _ratio(row["fast_bytes"], row["gxa_bytes"])
        lxt = row.get("lxt")
        met = ratio <= row["target"] and (memory is None or memory <= MEMORY_TARGET)
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['seq']} | {row['fast_s']:.4g} | {row['gxa_s']:.4g} | {ratio:.2f} | "
            f"{row['target']:.2f} | {_mib(row['fast_bytes'])} | {_mib(row['gxa_bytes'])} | {_cell(memory)} | "
            f"{format(lxt['lxt_s'], '.4g') if lxt else 'n/a'} | {_cell(_ratio(lxt['lxt_s'], lxt['gxa_s'])) if lxt else 'n/a'} | "
            f"{'yes' if met else '**no**'} |"
        )
    lines.append("")
    for batch, note in sorted(lxt_notes.items()):
        lines.append(f"- AttnLRP, batch {batch}: {note}")
    if any(row["model"].startswith("llama") for row in rows):
        lines.append("- AttnLRP on the Llama decoder: not run (this benchmark patches only LXT's BERT).")
    misses = verdicts(rows)
    lines.append("")
    lines.append("Every target met." if not misses else "Targets missed:\n" + "\n".join(f"- {m}" for m in misses))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bert-base", choices=sorted(measure.MODEL_SPECS))
    parser.add_argument("--lengths", type=_int_list, default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--batches", type=_int_list, default=[1, 8])
    parser.add_argument("--decoder-lengths", type=lambda text: _int_list(text) if text else [], default=[1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--lxt-python", default=DEFAULT_LXT_PYTHON, help="interpreter with transformers 4.57 and lxt; '' skips AttnLRP"
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, N in {16, 32}, batch 1, no decoder, no AttnLRP")
    parser.add_argument("--out", default=None, help="the report (default results/fast_floor.md; --quick: a temporary file)")
    parser.add_argument("--lxt-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.lengths, args.batches, args.decoder_lengths, args.lxt_python = "bert-tiny", [16, 32], [1], [], ""
        args.repeats = min(args.repeats, 3)
    if args.out is None:
        folder = tempfile.gettempdir() if args.quick else measure.DEFAULT_OUT
        args.out = os.path.join(folder, "fast_floor.md")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.lxt_worker:
        return lxt_worker(args)
    import torch

    torch.set_num_threads(args.threads)
    load_before = _uptime()
    rows: list[dict] = []
    lxt_notes: dict[int, str] = {}
    model = measure.build_model(args.model)
    for batch in args.batches:
        for seq in args.lengths:
            calls = encoder_calls(model, batch, seq, args.model)
            times = time_interleaved(calls, args.repeats)
            peaks = peak_bytes(calls, args.memory_repeats)
            rows.append(
                {
                    "model": args.model,
                    "batch": batch,
                    "seq": seq,
                    "fast_s": times["fast"],
                    "gxa_s": times["gxa"],
                    "fast_bytes": peaks["fast"],
                    "gxa_bytes": peaks["gxa"],
                    "target": target_for(seq),
                }
            )
            print(
                f"{args.model} batch {batch} N={seq}: fast {times['fast']:.3f} s, GxA {times['gxa']:.3f} s, "
                f"ratio {times['fast'] / times['gxa']:.2f}; peak MiB {_mib(peaks['fast'])} / {_mib(peaks['gxa'])}",
                flush=True,
            )
        lxt_rows, note = run_lxt(args, batch)
        lxt_notes[batch] = note
        for row in rows:
            if row["batch"] == batch and row["model"] == args.model and row["seq"] in lxt_rows:
                row["lxt"] = lxt_rows[row["seq"]]
        print(f"AttnLRP batch {batch}: {note}", flush=True)
    del model
    if args.decoder_lengths:
        llama = measure.build_decoder()
        for seq in args.decoder_lengths:
            calls = decoder_calls(llama, seq)
            times = time_interleaved(calls, args.repeats)
            peaks = peak_bytes(calls, args.memory_repeats)
            rows.append(
                {
                    "model": "llama-decoder",
                    "batch": 1,
                    "seq": seq,
                    "fast_s": times["fast"],
                    "gxa_s": times["gxa"],
                    "fast_bytes": peaks["fast"],
                    "gxa_bytes": peaks["gxa"],
                    "target": target_for(seq),
                }
            )
            print(
                f"llama N={seq}: fast {times['fast']:.3f} s, GxA {times['gxa']:.3f} s, ratio {times['fast'] / times['gxa']:.2f}; "
                f"peak MiB {_mib(peaks['fast'])} / {_mib(peaks['gxa'])}",
                flush=True,
            )
    report = write_report(rows, lxt_notes, args, (load_before, _uptime()), args.out)
    print(report)
    return 1 if verdicts(rows) else 0


if __name__ == "__main__":
    sys.exit(main())

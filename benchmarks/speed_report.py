"""Reporting for ``benchmarks/speed.py``: the markdown tables, the targets, the plot and the
results file, from the records the measuring side produced."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
from typing import Optional, Sequence

from speed_measure import (
    BERT_BASE_SHAPE,
    FULL_LENGTHS,
    GIB,
    LIG_STEPS,
    METHOD_LABELS,
    MIB,
    MODEL_SPECS,
    TARGET_CLASS,
    RunInfo,
)

from captum_decompx.core.memory import captured_bytes


def _lookup(results: Sequence[dict]) -> dict:
    return {(r["model"], r["batch"], r["n"], r["method"]): r for r in results}


def _time_cell(record: Optional[dict], key: str = "time_s") -> str:
    if record is None:
        return ""
    if record["status"] == "ok":
        return f"{record[key]:.3g}"
    return f"{record['status']}: {record['reason']}"


def _memory_cell(record: Optional[dict]) -> str:
    if record is None:
        return ""
    if record["status"] != "ok":
        return record["status"]
    if record.get("peak_bytes") is None:
        return "n/a"
    return f"{record['peak_bytes'] / MIB:.0f}"


def _ratio(numerator: Optional[dict], denominator: Optional[dict], key: str = "time_s") -> Optional[float]:
    """``numerator[key] / denominator[key]`` when both points were measured."""
    if not numerator or not denominator or numerator["status"] != "ok" or denominator["status"] != "ok":
        return None
    return numerator[key] / denominator[key]


RATIOS = (("fast / GxA", "fast", "gxa"), ("IG / fast", "lig", "fast"), ("exact / IG", "exact", "lig"))


def _rows(results: Sequence[dict]) -> list[tuple[str, int, int]]:
    return sorted(
        {(r["model"], r["batch"], r["n"]) for r in results},
        key=lambda key: (list(MODEL_SPECS).index(key[0]), key[1], key[2]),
    )


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def format_tables(results: Sequence[dict], methods: Sequence[str]) -> tuple[str, str, str]:
    """Markdown tables: wall time (s) with the ratio columns, process CPU time (s) with the same
    ratios, and peak memory growth (MiB)."""
    table = _lookup(results)
    ratios = [r for r in RATIOS if r[1] in methods and r[2] in methods]
    tables = []
    for key in ("time_s", "cpu_s"):
        head = ["model", "batch", "N"] + [f"{METHOD_LABELS[m]} (s)" for m in methods] + [r[0] for r in ratios]
        rows = []
        for model, batch, seq in _rows(results):
            cells = [model, str(batch), str(seq)]
            cells += [_time_cell(table.get((model, batch, seq, m)), key) for m in methods]
            for _, top, bottom in ratios:
                value = _ratio(table.get((model, batch, seq, top)), table.get((model, batch, seq, bottom)), key)
                cells.append("" if value is None else f"{value:.2f}")
            rows.append(cells)
        tables.append(_markdown(head, rows))
    head = ["model", "batch", "N"] + [f"{METHOD_LABELS[m]} (MiB)" for m in methods]
    rows = [
        [model, str(batch), str(seq)] + [_memory_cell(table.get((model, batch, seq, m))) for m in methods]
        for model, batch, seq in _rows(results)
    ]
    tables.append(_markdown(head, rows))
    return tables[0], tables[1], tables[2]


def check_targets(results: Sequence[dict], max_memory: Optional[int]) -> list[str]:
    """The issue's targets on the BERT-base-sized model, as lines of text (only those whose points
    were measured). Verdicts use wall time; the CPU-time ratio follows in parentheses."""
    table = _lookup(results)
    lines = []

    def both(top: Optional[dict], bottom: Optional[dict]) -> tuple[Optional[float], str]:
        wall = _ratio(top, bottom)
        cpu = _ratio(top, bottom, "cpu_s")
        return wall, ("" if cpu is None else f" (CPU time: {cpu:.2f})")

    for batch in sorted({r["batch"] for r in results if r["model"] == "bert-base"}):
        get = lambda seq, method, batch=batch: table.get(("bert-base", batch, seq, method))  # noqa: E731
        prefix = f"bert-base, batch {batch}:"
        fast_gxa, cpu = both(get(128, "fast"), get(128, "gxa"))
        if fast_gxa is not None:
            verdict = "met" if fast_gxa <= 2 else f"MISSED by {fast_gxa / 2:.2f}x"
            lines.append(f"{prefix} fast / GxA at N=128 = {fast_gxa:.2f}{cpu} (target <= 2): {verdict}")
        all_fast_gxa = [(seq, _ratio(get(seq, "fast"), get(seq, "gxa"))) for seq in FULL_LENGTHS]
        all_fast_gxa = [(seq, value) for seq, value in all_fast_gxa if value is not None]
        if len(all_fast_gxa) > 1:
            text = ", ".join(f"N={seq}: {value:.2f}" for seq, value in all_fast_gxa)
            lines.append(f"{prefix} fast / GxA at every N: {text}")
        ig_fast, cpu = both(get(128, "lig"), get(128, "fast"))
        if ig_fast is not None:
            verdict = "met" if ig_fast >= 20 else f"MISSED by {20 / ig_fast:.2f}x"
            lines.append(f"{prefix} IG / fast at N=128 = {ig_fast:.1f}{cpu} (target >= 20): {verdict}")
        for seq in (16, 32, 64):
            exact_ig, cpu = both(get(seq, "exact"), get(seq, "lig"))
            if exact_ig is not None:
                verdict = "met" if exact_ig < 1 else f"MISSED by {exact_ig:.2f}x"
                lines.append(f"{prefix} exact / IG at N={seq} = {exact_ig:.2f}{cpu} (target < 1): {verdict}")
        exact_ig, cpu = both(get(128, "exact"), get(128, "lig"))
        if exact_ig is not None:
            verdict = "met" if exact_ig <= 1.5 else f"MISSED by {exact_ig / 1.5:.2f}x"
            lines.append(f"{prefix} exact / IG at N=128 = {exact_ig:.2f}{cpu} (target <= 1.5): {verdict}")
        record = get(512, "exact")
        if record is not None:
            if record["status"] == "ok":
                peak = record.get("peak_bytes")
                captured = captured_bytes(BERT_BASE_SHAPE, batch, 512)
                text = f"{prefix} exact at N=512 completed in {record['time_s']:.0f} s"
                if peak is None or max_memory is None:
                    lines.append(f"{text} (peak memory not measured)")
                else:
                    working = peak - captured  # what max_memory is meant to bound
                    verdict = (
                        "met"
                        if working <= max_memory
                        else f"MISSED: {(working - max_memory) / GIB:.2f} GiB ({working / max_memory - 1:.0%}) over"
                    )
                    lines.append(
                        f"{text}; peak memory growth {peak / GIB:.2f} GiB, minus ~{captured / GIB:.2f} GiB of captured "
                        f"forward internals = {working / GIB:.2f} GiB for the decomposition, against the default "
                        f"max_memory of {max_memory / GIB:g} GiB: {verdict}"
                    )
            elif record["status"] == "skipped" and "est." in record["reason"]:
                lines.append(f"{prefix} exact at N=512 not run ({record['reason']})")
            else:
                lines.append(f"{prefix} exact at N=512 did not complete ({record['reason']}): MISSED")
    return lines


def draw_plot(results: Sequence[dict], methods: Sequence[str], path: str) -> None:
    """Log-log time against N, one line per method, one panel per model x batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(
        {(r["model"], r["batch"]) for r in results},
        key=lambda key: (list(MODEL_SPECS).index(key[0]), key[1]),
    )
    models = sorted({m for m, _ in panels}, key=list(MODEL_SPECS).index)
    batches = sorted({b for _, b in panels})
    figure, axes = plt.subplots(len(models), len(batches), figsize=(5.2 * len(batches), 4.0 * len(models)), squeeze=False)
    styles = {"exact": "o-", "fast": "s-", "lig": "^-", "gxa": "v--", "saliency": "d:"}
    for row, model in enumerate(models):
        for column, batch in enumerate(batches):
            axis = axes[row][column]
            panel_lengths = sorted({r["n"] for r in results if r["model"] == model and r["batch"] == batch})
            for method in methods:
                measured = {
                    r["n"]: r["time_s"]
                    for r in results
                    if r["model"] == model and r["batch"] == batch and r["method"] == method and r["status"] == "ok"
                }
                if measured:
                    # a length that was not run breaks the line (NaN) instead of being bridged
                    times = [measured.get(n, float("nan")) for n in panel_lengths]
                    axis.plot(panel_lengths, times, styles.get(method, "o-"), label=METHOD_LABELS[method])
            skipped = sum(1 for r in results if r["model"] == model and r["batch"] == batch and r["status"] != "ok")
            title = f"{model}, batch {batch}"
            if skipped:
                title += f" ({skipped} point(s) not run, see table)"
            axis.set_title(title, fontsize=10)
            axis.set_xscale("log", base=2)
            axis.set_xticks(panel_lengths, [str(n) for n in panel_lengths])
            axis.set_yscale("log")
            axis.set_xlabel("sequence length N (tokens)")
            axis.set_ylabel("wall time per call (s)")
            axis.grid(True, which="both", alpha=0.3)
            if axis.get_lines():
                axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine_description(device: str, info: RunInfo) -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            memory = f", {int(meminfo.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    versions = []
    for package in ("torch", "transformers", "captum"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} ?")
    threads = sorted({str(w.get("threads")) for w in info.worker_info.values()})
    lines = [
        f"- Machine: {cpu}, {os.cpu_count()} logical cores{memory}; {platform.system()} {platform.release()}",
        f"- Software: Python {platform.python_version()}, {', '.join(versions)}; torch threads: "
        f"{', '.join(threads) or '?'}; device: {device}",
    ]
    hashes = {w.get("source_hash") for w in info.worker_info.values()} - {None}
    changed = (
        f" WARNING: its source changed during the run ({len(hashes)} versions across the workers)." if len(hashes) > 1 else ""
    )
    lines.append(f"- captum_decompx: {info.package or 'unknown version'}.{changed}")
    return lines


def write_results(results: Sequence[dict], out: str, info: RunInfo, json_path: Optional[str] = None) -> str:
    """Write speed.md and speed.png into ``out`` (and the raw results to ``json_path``); return
    the markdown text."""
    os.makedirs(out, exist_ok=True)
    settings = info.settings
    methods = settings["methods"]
    time_table, cpu_table, memory_table = format_tables(results, methods)
    max_memory = next((w.get("max_memory") for w in info.worker_info.values()), None)
    targets = check_targets(results, max_memory)
    draw_plot(results, methods, os.path.join(out, "speed.png"))
    loads = info.load_samples
    load_summary = (
        f"1-minute load average while measuring: min {min(loads):.2f}, median "
        f"{statistics.median(loads):.2f}, max {max(loads):.2f}"
        if loads
        else ""
    )
    measured = [r for r in results if r["status"] == "ok"]
    not_run = [r for r in results if r["status"] != "ok"]
    skipped = [r for r in not_run if r["status"] == "skipped" and "est." in r.get("reason", "")]
    estimate_not_run = sum(r.get("estimate_s", 0.0) for r in skipped)
    descriptions = "\n".join(
        f"- `{name}`: {MODEL_SPECS[name].description}" for name in dict.fromkeys(r["model"] for r in results)
    )
    lig_chunks: dict[tuple, list[str]] = {}
    for r in results:
        if r["method"] == "lig" and r.get("note"):
            size = r["note"].split("=")[-1]
            lig_chunks.setdefault((r["model"], r["batch"]), []).append(f"N={r['n']}: {size}")
    lig_notes = "; ".join(f"{model} batch {batch}: {', '.join(items)}" for (model, batch), items in lig_chunks.items())
    text = f"""# Speed and peak memory: DecompX against Captum's gradient methods

Written by `benchmarks/speed.py`. Absolute times depend on the machine and on its load; compare
the ratio columns.

- Command: `{info.command}`
- Date: {info.started}
{chr(10).join(machine_description(settings["device"], info))}
- Load (`uptime`) at the start: `{info.load_start}`; at the end: `{info.load_end}`. {load_summary}.
  The machine is shared with other jobs, so times are noisy.{(" " + settings["note"]) if settings.get("note") else ""}
- Total wall time of the run: {info.wall_seconds:.0f} s; {len(measured)} points measured, {len(not_run)} not run
  ({len(skipped)} skipped by the time cap, estimated at {estimate_not_run:.0f} s in all).

## Models and methods

{descriptions}

Inputs: seeded random token ids, first token [CLS], last token [SEP], all-ones attention mask; every
method explains target class {TARGET_CLASS} of the same inputs. `forward_func(input_ids, attention_mask)`
returns the logits.

- DecompX exact: `DecompX(forward_func, model=model)` (biases decomposed, `max_memory` default);
  fast: `DecompX(forward_func, model=model, include_biases=False)` (`algorithm="auto"` picks the fast path).
- LIG: `LayerIntegratedGradients(forward_func, model.get_input_embeddings())`, `n_steps={LIG_STEPS}`,
  baselines = pad ids with [CLS]/[SEP] kept (as in Captum's BERT tutorial), attributions summed over the
  embedding dimension. `internal_batch_size` = batch x steps per chunk, the largest number of steps
  whose activations stay under `--lig-memory` ({settings["lig_memory"] / GIB:g} GiB), split evenly.
- GxA: `LayerGradientXActivation` on the word embeddings, summed over the embedding dimension.
- Saliency: `Saliency` on `inputs_embeds` (the word-embedding output) through the wrapper
  `model(inputs_embeds=embeds, attention_mask=mask).logits`, the usual way to apply an
  input-gradient method to token ids; the score is the L2 norm of the absolute gradient per token.

## How time and memory are measured

- Each (model, batch) runs in its own worker process, which builds the model once. For every
  length, the methods run in turn on the same inputs. Each point gets one warm-up call, then the
  median of as many timed calls (at most `--repeats` = {settings["repeats"]}) as fit in
  `--repeat-budget` = {settings["repeat_budget"]:g} s, at least one. A point estimated above
  `--expensive-seconds` = {settings["expensive_seconds"]:g} s is warmed up by a reduced call (LIG: one
  internal batch of steps; the other methods: one example of at most 32 tokens) and timed once.
  Time is wall-clock (`time.perf_counter`) around the attribution call, including DecompX's own
  forward pass. CPU time is `time.process_time()` of the worker over the same call (all threads):
  it is less sensitive than wall time to other jobs taking the cores, so it is reported too.
- Peak memory (CPU): growth of the worker's peak resident set during the first timed call. Before
  the call the worker runs `gc.collect()` and `malloc_trim(0)` (freed heap pages go back to the
  system, so reused memory counts again) and resets the kernel's high-water mark by writing `5` to
  `/proc/self/clear_refs`; after it, the result is `VmHWM - VmRSS(before)` from `/proc/self/status`.
  This counts every CPU tensor torch allocates (large ones are mmapped, small ones come from the
  heap), plus the allocator's slack. On CUDA: `torch.cuda.max_memory_allocated()` minus the memory
  allocated before the call.
- A point is skipped (and says why) when its estimated memory exceeds the available memory, or when
  wall time, extrapolated by a FLOP count from the closest measured point of the same model and
  method, exceeds
  `--max-point-seconds` = {settings["max_point_seconds"]:g} s (0 = no cap), unless it is one of the target
  points (`--always-run`). A point that fails or runs out of memory is recorded, and the run goes on.
- LIG `internal_batch_size` used: {lig_notes or "n/a"}.

## Wall time per call (seconds)

{time_table}

## CPU time per call (seconds, both threads)

{cpu_table}

## Peak memory growth during one call (MiB)

{memory_table}

## Targets (BERT-base-sized model)

{chr(10).join("- " + line for line in targets) if targets else "- (no target point in this run)"}

## Plot

![time against N](speed.png)
"""
    with open(os.path.join(out, "speed.md"), "w") as handle:
        handle.write(text)
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"results": list(results), "info": dataclasses.asdict(info)}, handle, indent=1)
    return text


def _print_summary(results: Sequence[dict], info: RunInfo, out: str) -> None:
    time_table, cpu_table, _ = format_tables(results, info.settings["methods"])
    print("\nwall time (s)\n" + time_table)
    print("\nCPU time (s)\n" + cpu_table)
    targets = check_targets(results, next((w.get("max_memory") for w in info.worker_info.values()), None))
    if targets:
        print("\n" + "\n".join(targets))
    print(f"\nwrote {os.path.join(out, 'speed.md')} and speed.png; the run took {info.wall_seconds:.0f} s")

#!/usr/bin/env python
"""Rows per second of ``captum-decompx attribute`` on SST-2 dev with the demo model.

Every configuration runs the real command in fresh processes, one torch thread per process:
``python -m captum_decompx attribute`` for one process and ``torchrun --nproc_per_node 2 -m
captum_decompx attribute`` for two, exact and fast DecompX, rows sorted by length within each part
(bucketed, the default) or batched in input order (``--no-bucketing``). All runs use the same part
layout (``--rows-per-part``) and batch size. Rows per second count the computing phase only (from
the first part to the end of the slowest process: the command's own timing), not process start-up
or model loading; the padding share is padding positions over all positions computed.

Example::

    python benchmarks/throughput.py                 # all 872 dev sentences, every configuration
    python benchmarks/throughput.py --limit 200     # the first 200 sentences

Writes ``benchmarks/results/throughput.md`` (tables, command, machine, load average).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"\((\d+) computed in ([\d.]+) s, ([\d.]+) rows/s on (\d+) process")
PADDING = re.compile(r"padding: (\d+) padding positions")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "data" / "sst2" / "dev.tsv"), help="a TSV file (default: SST-2 dev)")
    parser.add_argument("--limit", type=int, help="use the first N rows")
    parser.add_argument("--model", default=str(REPO / "models" / "minilm-sst2"))
    parser.add_argument("--methods", default="exact,fast")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows-per-part", type=int, default=64)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "throughput.md"))
    return parser.parse_args()


def subset(path: Path, limit: int | None, folder: Path) -> Path:
    if limit is None:
        return path
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    target = folder / f"first-{limit}.tsv"
    target.write_text("".join(lines[: limit + 1]), encoding="utf-8")
    return target


def run_one(args: argparse.Namespace, data: Path, out: Path, method: str, processes: int, bucketed: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        "attribute", "--data", str(data), "--out", str(out), "--model", args.model, "--algorithm", method,
        "--batch-size", str(args.batch_size), "--rows-per-part", str(args.rows_per_part), "--no-progress",
    ]
    if not bucketed:
        command.append("--no-bucketing")
    if processes == 1:
        launcher = [sys.executable, "-m", "captum_decompx"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m", "captum_decompx"]
    began = time.perf_counter()
    done = subprocess.run(launcher + command, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(launcher + command)} failed:\n{done.stderr[-3000:]}")
    summary = SUMMARY.search(done.stdout)
    padding = PADDING.search(done.stdout)
    assert summary and padding, done.stdout
    import pyarrow.parquet as pq

    real_tokens = sum(len(tokens) for tokens in pq.read_table(out, columns=["tokens"]).column("tokens").to_pylist())
    padding_positions = int(padding.group(1))
    return {
        "method": method,
        "processes": processes,
        "bucketed": bucketed,
        "rows": int(summary.group(1)),
        "seconds": float(summary.group(2)),
        "rows_per_second": int(summary.group(1)) / float(summary.group(2)),
        "padding_share": padding_positions / (padding_positions + real_tokens),
        "wall": wall,
    }


def main() -> None:
    args = parse_args()
    methods = [m.strip() for m in args.methods.split(",")]
    process_counts = [int(p) for p in args.processes.split(",")]
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        data = subset(Path(args.data), args.limit, Path(folder))
        for method in methods:
            for bucketed in (True, False):
                for processes in process_counts:
                    out = Path(folder) / f"{method}-{processes}-{bucketed}"
                    result = run_one(args, data, out, method, processes, bucketed)
                    results.append(result)
                    print(
                        f"{method:5s} processes={processes} bucketed={bucketed!s:5s}: {result['rows_per_second']:.1f} rows/s "
                        f"({result['rows']} rows in {result['seconds']:.1f} s; padding {100 * result['padding_share']:.1f}%; "
                        f"load average {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
    load_after = os.getloadavg()
    write_report(args, results, started, load_before, load_after)


def write_report(args: argparse.Namespace, results: list[dict], started: datetime.datetime, load_before, load_after) -> None:
    def find(method: str, processes: int, bucketed: bool) -> dict | None:
        for result in results:
            if (result["method"], result["processes"], result["bucketed"]) == (method, processes, bucketed):
                return result
        return None

    command = "python benchmarks/throughput.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    rows = results[0]["rows"] if results else 0
    lines = [
        "# Throughput of `captum-decompx attribute` (rows per second)",
        "",
        f"- Command (from the repository root): `{command}`",
        f"- Data: `{Path(args.data).relative_to(REPO) if Path(args.data).is_relative_to(REPO) else args.data}`, {rows} rows"
        + (f" (the first {args.limit})" if args.limit else ""),
        f"- Model: `{Path(args.model).relative_to(REPO) if Path(args.model).is_relative_to(REPO) else args.model}`; "
        f"batch size {args.batch_size}, {args.rows_per_part} rows per part, one torch thread per process",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; machine: {platform.system()} {platform.machine()}, {os.cpu_count()} logical CPUs; "
        f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after",
        "- Rows per second: rows over the computing phase (first part to the slowest process's end), as the command "
        "reports it; process start-up and model loading are not counted. Padding: padding positions over all positions computed.",
        "",
        "| method | processes | batching | rows/s | seconds | padding |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for result in results:
        lines.append(
            f"| {result['method']} | {result['processes']} | {'bucketed' if result['bucketed'] else 'input order'} | "
            f"{result['rows_per_second']:.1f} | {result['seconds']:.1f} | {100 * result['padding_share']:.1f}% |"
        )
    lines += ["", "| method | 2 processes / 1 (bucketed) | bucketed / input order (1 process) | bucketed / input order (2 processes) |", "| --- | ---: | ---: | ---: |"]
    for method in dict.fromkeys(result["method"] for result in results):
        def ratio(a: dict | None, b: dict | None) -> str:
            return f"{a['rows_per_second'] / b['rows_per_second']:.2f}" if a and b else "not run"

        lines.append(
            f"| {method} | {ratio(find(method, 2, True), find(method, 1, True))} | {ratio(find(method, 1, True), find(method, 1, False))} | "
            f"{ratio(find(method, 2, True), find(method, 2, False))} |"
        )
    Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

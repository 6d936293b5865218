#!/usr/bin/env python
"""Latency of the explorer's API endpoint under concurrent requests, on the demo classifier.

Serves ``captum_decompx.app.build_app`` on the demo model (one model copy, requests queued one at
a time, as ``captum-decompx serve`` does), then sends ``--requests`` ``/explain`` requests at once
with ``gradio_client``, ``--rounds`` times, after one warm-up request. Every answer must be there
and equal to the first (the run stops otherwise). Latency is from submitting a request to its
answer, so it includes the wait in the queue; p95 is the nearest-rank 95th percentile over all
rounds. The serial line is one request at a time, for comparison.

Example::

    python benchmarks/explorer_load.py                  # 8 concurrent requests, 3 rounds

Needs the ``app`` extra. Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from gradio_client import Client

from captum_decompx.app import build_app, launch_options, load_for_app

TEXT = "a good piece of work more often than not."


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests per round (default: 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default: 3)")
    parser.add_argument("--text", default=TEXT)
    args = parser.parse_args()

    model, tokenizer, source = load_for_app(None)
    app = build_app(model, tokenizer, source=source)
    app.queue(default_concurrency_limit=1)
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options(port=None))
    try:
        client = Client(app.local_url, verbose=False)
        first = client.predict(args.text, api_name="/explain")  # warm-up

        def timed(_: int) -> tuple[dict, float]:
            started = time.perf_counter()
            answer = client.submit(args.text, api_name="/explain").result(timeout=600)
            return answer, time.perf_counter() - started

        serial = [timed(0)[1] for _ in range(args.requests)]
        concurrent: list[float] = []
        for _ in range(args.rounds):
            with ThreadPoolExecutor(args.requests) as pool:
                answers = list(pool.map(timed, range(args.requests)))
            if len(answers) != args.requests or any(answer != first for answer, _ in answers):
                raise SystemExit("an answer was lost or differs from the first one")
            concurrent.extend(latency for _, latency in answers)
    finally:
        app.close()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"text: {args.text!r} ({len(first['tokens'])} tokens), DecompX exact, demo classifier\n")
    print("| requests | answered | median (s) | p95 (s) | max (s) |")
    print("|---|---|---|---|---|")
    print(
        f"| 1 at a time x {len(serial)} | {len(serial)} | {statistics.median(serial):.3f} | {percentile(serial, 0.95):.3f} | {max(serial):.3f} |"
    )
    print(
        f"| {args.requests} at once x {args.rounds} | {len(concurrent)} | {statistics.median(concurrent):.3f} | "
        f"{percentile(concurrent, 0.95):.3f} | {max(concurrent):.3f} |"
    )


if __name__ == "__main__":
    main()

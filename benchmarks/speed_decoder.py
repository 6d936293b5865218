"""The decoder section of ``benchmarks/speed.py`` (``--decoder``): fast DecompX against
``LayerGradientXActivation`` on a random Llama-family causal LM."""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time

from speed_measure import _uptime, build_decoder

DECODER_PROMPT = 1024


def run_decoder_section(args: argparse.Namespace) -> int:
    """Fast DecompX against ``LayerGradientXActivation`` on a Llama-family causal LM.

    A random ``LlamaForCausalLM`` of realistic width (hidden 1024, 8 layers, 16 heads, 8 key-value
    heads, intermediate 2816, vocabulary 32000), one prompt of ``DECODER_PROMPT`` tokens (or
    ``--lengths``), both methods attributing the logit of the same next token. Times are medians of
    ``--repeats`` calls after one warm-up, measured in this process, alternating the methods.
    """
    import torch
    from captum.attr import LayerGradientXActivation

    from captum_decompx import DecompX

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_decoder().to(args.device)
    config = model.config
    rows = []
    for seq in args.lengths:
        ids = torch.randint(0, config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(seq)).to(args.device)

        def next_token_logits(input_ids):
            return model(input_ids=input_ids).logits[:, -1, :]

        with torch.no_grad():
            target = int(next_token_logits(ids).argmax())
        gxa = LayerGradientXActivation(next_token_logits, model.get_input_embeddings())
        decompx = DecompX(next_token_logits, model=model, include_biases=False)
        calls = {
            "DecompX fast": lambda decompx=decompx, ids=ids, target=target: decompx.attribute(ids, target=target),
            "GxA": lambda gxa=gxa, ids=ids, target=target: gxa.attribute(ids, target=target).sum(-1),
        }
        times = {name: [] for name in calls}
        for call in calls.values():
            call()  # warm-up
        for _ in range(args.repeats):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) for name, values in times.items()}
        rows.append((seq, medians["DecompX fast"], medians["GxA"]))
        print(
            f"llama N={seq}: fast {medians['DecompX fast']:.2f} s, GxA {medians['GxA']:.2f} s, "
            f"ratio {medians['DecompX fast'] / medians['GxA']:.2f}",
            flush=True,
        )
    shown = list(sys.argv[1:])
    lines = [
        "# Decoder section: fast DecompX on a Llama-family causal LM",
        "",
        f"- Command: `{shlex.join(['python', 'benchmarks/speed.py', *shown])}`",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Load (`uptime`): `{_uptime()}`",
        f"- Model: random `LlamaForCausalLM`, hidden 1024, 8 layers, 16 heads / 8 key-value heads, "
        f"intermediate 2816, vocabulary 32000; device {args.device}, torch threads {torch.get_num_threads()}",
        "- Both methods attribute the logit of the model's own next token; GxA is "
        "`LayerGradientXActivation` on the token embeddings (summed over the embedding); DecompX is "
        "`DecompX(next_token_logits, model=model, include_biases=False)` (the fast path), its own "
        f"forward pass included. Median of {args.repeats} calls after a warm-up.",
        "",
        "| prompt tokens | DecompX fast (s) | GxA (s) | fast / GxA |",
        "|---|---|---|---|",
    ]
    lines += [f"| {seq} | {fast:.3f} | {gxa_s:.3f} | {fast / gxa_s:.2f} |" for seq, fast, gxa_s in rows]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "speed_decoder.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0

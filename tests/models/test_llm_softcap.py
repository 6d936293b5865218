"""A causal LM that soft-caps its logits (Gemma 2's ``final_logit_softcapping``).

The model returns ``cap * tanh(z / cap)``; the cap is not decomposed. As for ``DecompX``, the
explanation is of ``z``, the logit before the cap, with a warning: ``result.logits`` is ``z``,
the bias share is the biases' share only (zero when the biases are decomposed), and every value
equals the one of the same weights without the cap (an independent model whose logits are ``z``).
It used to put the cap's nonlinearity into ``result.bias`` and report the capped logit.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from support.architectures import DECODER
from support.word_level import LLM_WORDS as WORDS

from captum_decompx import DecompX, LLMDecompX
from captum_decompx.testing import randomize_parameters

CAP = 3.0
PROMPT, CONTINUATION = "the cat sat on", "the mat and"


def gemma2(cap):
    """A Gemma 2 causal LM with attention biases (so that the biases' share is not zero)."""
    config = tf.Gemma2Config(
        **{**DECODER, "vocab_size": len(WORDS)},
        sliding_window=4,
        attention_bias=True,
        final_logit_softcapping=cap,
        attn_implementation="eager",
    )
    return randomize_parameters(tf.Gemma2ForCausalLM(config), 12)


def rows_close(capped, plain, what: str, tol: float = 1e-5) -> None:
    scale = max(1.0, float(plain.abs().max()))
    difference = float((capped - plain).abs().max())
    assert difference <= tol * scale, f"{what}: max |difference| {difference:.3e}"


@pytest.mark.parametrize("options", [{}, {"include_biases": False}], ids=["biases-decomposed", "fast-biases-left-out"])
def test_llm_decompx_explains_the_logit_before_the_cap_and_keeps_the_bias_share_the_biases(llm_tokenizer, options):
    capped_model, plain_model = gemma2(CAP), gemma2(None)
    with pytest.warns(UserWarning, match=r"soft-caps its logits.*BEFORE the cap"):
        capped = LLMDecompX(capped_model, llm_tokenizer, **options).attribute(PROMPT, target=CONTINUATION)
    plain = LLMDecompX(plain_model, llm_tokenizer, **options).attribute(PROMPT, target=CONTINUATION)

    # The logits before the cap, read from the model without it.
    prompt = llm_tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    targets = llm_tokenizer(CONTINUATION, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    context = torch.cat([prompt, targets[None, :-1]], dim=1)
    with torch.no_grad():
        z = plain_model(input_ids=context).logits[0, prompt.shape[1] - 1 :].gather(1, targets[:, None])[:, 0]
        capped_logits = capped_model(input_ids=context).logits[0, prompt.shape[1] - 1 :]
    torch.testing.assert_close(CAP * torch.tanh(z / CAP), capped_logits.gather(1, targets[:, None])[:, 0])

    rows_close(capped.logits, z, "result.logits is z, the logit before the cap")
    for name in ("token_attr", "generated_attr", "skipped_attr", "bias"):
        rows_close(getattr(capped, name), getattr(plain, name), f"{name} equals the uncapped model's")
    total = capped.token_attr.sum(1) + capped.skipped_attr + capped.generated_attr.sum(1) + capped.bias
    rows_close(total, z, "every row adds up to z")
    if not options:  # biases decomposed: no bias share at all (the cap used to land here)
        assert float(capped.bias.abs().max()) <= 1e-5 * max(1.0, float(z.abs().max()))
    else:
        assert float(capped.bias.abs().max()) > 1e-3  # the attention biases' share, not zero
    # The probabilities stay the model's own, from the capped logits.
    rows_close(capped.output_probs, torch.softmax(capped_logits, -1).gather(1, targets[:, None])[:, 0], "output_probs")


@pytest.mark.parametrize("algorithm", ["exact", "fast"])
def test_decompx_reports_z_as_the_logits_and_measures_the_delta_against_it(algorithm):
    options = {"algorithm": algorithm, "include_biases": algorithm == "exact"}
    capped_model, plain_model = gemma2(CAP), gemma2(None)
    ids = torch.tensor([[2, 3, 4, 5, 6, 7]])

    def next_token(model):
        return lambda input_ids: model(input_ids=input_ids).logits[:, -1, :]

    with torch.no_grad():
        z = next_token(plain_model)(ids)
    target = int(z.argmax())
    with pytest.warns(UserWarning, match="soft-caps its logits"):
        out = DecompX(next_token(capped_model), model=capped_model, **options).decompose(ids)
    plain = DecompX(next_token(plain_model), model=plain_model, **options).decompose(ids)
    rows_close(out.logits, z, "DecompXOutput.logits is z")
    rows_close(out.attributions, plain.attributions, "attributions")
    rows_close(out.bias, plain.bias, "the biases' share")
    rows_close(out.attributions.sum(1) + out.bias, z, "complete against z")
    with pytest.warns(UserWarning, match="soft-caps its logits"):
        _, delta = DecompX(next_token(capped_model), model=capped_model, **options).attribute(
            ids, target=target, return_convergence_delta=True
        )
    expected = -plain.bias[:, target]  # zero with the biases decomposed, minus their share without
    rows_close(delta, expected, "the convergence delta is measured against z")

"""Decoder sequence classifiers pool the token Hugging Face pools, in every padding and mask case.

Hugging Face's decoder classifiers (GPT-2's own code and the generic one of Llama, Qwen, Gemma,
Phi-3; transformers 4.57 and 5.x alike) read the rightmost token whose id is not
``config.pad_token_id``, whatever the attention mask says: with the pad token equal to the eos
token and an all-ones mask, a trailing eos is skipped; without a mask, padding ids are skipped;
with embeddings instead of ids, or no pad token and one example, the last position is read.
Every case is checked by completeness against the model's own logits: the contributions add up
to them only if the decomposition pools the same token (a neighbouring token's state gives other
logits).
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from support.architectures import COMMON, DECODER

from captum_decompx import DecompX
from captum_decompx.testing import randomize_parameters

EOS = PAD = 1  # pad == eos, as GPT-2 and Llama tokenizers are often set up


def classifier(name: str, pad_token_id=PAD) -> torch.nn.Module:
    if name == "gpt2":
        config = tf.GPT2Config(
            vocab_size=60,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            num_labels=3,
            pad_token_id=pad_token_id,
            bos_token_id=EOS,
            eos_token_id=EOS,
        )
        return randomize_parameters(tf.GPT2ForSequenceClassification(config), 11)
    if name == "llama":
        config = tf.LlamaConfig(**COMMON, num_key_value_heads=2, pad_token_id=pad_token_id, bos_token_id=EOS, eos_token_id=EOS)
        return randomize_parameters(tf.LlamaForSequenceClassification(config), 11)
    config = tf.Qwen3Config(**{**DECODER, "pad_token_id": pad_token_id, "bos_token_id": EOS, "eos_token_id": EOS})
    return randomize_parameters(tf.Qwen3ForSequenceClassification(config), 11)


# ids, attention mask (None: no mask), and the row HF pools in each example
CASES = {
    # pad == eos, all-ones mask: the trailing eos tokens are skipped, the mask does not count
    "pad-is-eos-all-ones-mask": ([[5, 6, 7, EOS, EOS], [8, 9, 10, 11, 12]], "ones", [2, 4]),
    # an eos inside the text is skipped too, only the rightmost non-pad id counts
    "eos-inside-and-at-the-end": ([[5, EOS, 7, EOS, EOS], [8, 9, EOS, 11, 12]], "ones", [2, 4]),
    "no-mask-right-padding": ([[5, 6, 7, PAD, PAD], [8, 9, 10, 11, 12]], None, [2, 4]),
    "right-padding": ([[5, 6, 7, PAD, PAD], [8, 9, 10, 11, 12]], "real", [2, 4]),
    "left-padding": ([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12]], "real", [4, 4]),
    # every id is padding: position 0 (HF's argmax of an all-zero row)
    "only-padding": ([[PAD, PAD, PAD], [8, 9, 10]], "ones", [0, 2]),
}


def mask_of(ids: torch.Tensor, kind):
    if kind is None:
        return None
    return torch.ones_like(ids) if kind == "ones" else (ids != PAD).long()


def check_complete(model, ids, mask, expected_rows, forward=None) -> None:
    if forward is None:
        forward = (
            (lambda i: model(input_ids=i).logits) if mask is None else (lambda i, m: model(input_ids=i, attention_mask=m).logits)
        )
    args = () if mask is None else (mask,)
    with torch.no_grad():
        logits = forward(ids, *args)
        per_position = model.score(model.base_model(ids, attention_mask=mask).last_hidden_state)
    # the test's own reading of which row the model pooled
    assert torch.equal(logits, per_position[torch.arange(ids.shape[0]), torch.tensor(expected_rows)])
    scale = float(logits.abs().max())
    out = DecompX(forward, model=model).decompose(ids, args)
    torch.testing.assert_close(out.attributions.sum(1), logits, rtol=0, atol=2e-5 * max(1.0, scale))
    without = DecompX(forward, model=model, include_biases=False, algorithm="exact").decompose(ids, args)
    fast = DecompX(forward, model=model, include_biases=False, algorithm="fast").decompose(ids, args)
    torch.testing.assert_close(without.attributions.sum(1) + without.bias, logits, rtol=0, atol=2e-5 * max(1.0, scale))
    torch.testing.assert_close(fast.attributions, without.attributions, rtol=0, atol=2e-5 * max(1.0, scale))
    # tokens after the pooled one cannot contribute (causal attention)
    for row, pooled in enumerate(expected_rows):
        assert torch.all(out.attributions[row, pooled + 1 :] == 0)


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen3"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pools_the_last_token_that_is_not_padding(name, case):
    ids, mask_kind, rows = CASES[case]
    ids = torch.tensor(ids)
    check_complete(classifier(name), ids, mask_of(ids, mask_kind), rows)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_no_pad_token_pools_the_last_token_of_one_example_and_refuses_a_batch(name):
    model = classifier(name, pad_token_id=None)
    ids = torch.tensor([[5, 6, 7, EOS]])
    check_complete(model, ids, torch.ones_like(ids), [3])
    with pytest.raises(ValueError, match="(?i)padding token"):  # Hugging Face's own refusal
        DecompX(lambda i: model(input_ids=i).logits, model=model).attribute(torch.tensor([[5, 6], [7, 8]]), target=0)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_embeddings_instead_of_ids_pool_the_last_position(name):
    """Given embeddings, Hugging Face cannot see padding and reads the last position (it warns)."""
    model = classifier(name)
    ids = torch.tensor([[5, 6, 7, PAD, PAD], [8, 9, 10, 11, 12]])
    mask = (ids != PAD).long()
    embeddings = model.get_input_embeddings()(ids).detach()

    def forward(e, m):
        return model(inputs_embeds=e, attention_mask=m).logits

    with torch.no_grad():
        logits = forward(embeddings, mask)
    out = DecompX(forward, model=model).decompose(embeddings, (mask,))
    torch.testing.assert_close(out.attributions.sum(1), logits, rtol=0, atol=2e-5 * max(1.0, float(logits.abs().max())))

"""Seq2SeqDecompX: an encoder-decoder's generated (or given) target explained token by token over
the source and the target prefix, from one decomposition of every target position."""

from __future__ import annotations

import pytest
import torch
from support.encoder_decoders import VOCAB, forward_of, model_of
from support.word_level import word_level_tokenizer

from captum_decompx import DecompX
from captum_decompx.seq2seq import Seq2SeqDecompX

WORDS = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(3, VOCAB)]  # T5: pad 0, eos 1
SOURCE = "w5 w8 w13 w21 w30"
TARGET = [11, 17, 4, 25]


@pytest.fixture(scope="module")
def t5():
    return model_of("t5", seed=2), word_level_tokenizer(WORDS)


def _complete(result) -> torch.Tensor:
    return (
        result.token_attr.sum(1)
        + result.skipped_attr
        + result.start_attr
        + result.generated_attr.sum(1)
        + result.bias
        - result.logits
    )


@pytest.mark.parametrize("options", [{}, {"include_biases": False, "algorithm": "exact"}, {"include_biases": False}])
def test_a_given_target_is_explained_row_by_row_like_one_attribute_call_per_position(t5, options):
    model, tokenizer = t5
    result = Seq2SeqDecompX(model, tokenizer, **options).attribute(SOURCE, target=TARGET, skip_tokens=["w8"])
    assert result.input_tokens == ["w5", "w13", "w21", "w30"] and result.output_tokens == [f"w{i}" for i in TARGET]
    assert result.token_attr.shape == (4, 4) and result.generated_attr.shape == (4, 4)
    assert torch.equal(result.decoder_input_ids, torch.tensor([0, 11, 17, 4]))
    source = tokenizer(SOURCE, return_tensors="pt")["input_ids"]
    decoder_inputs = result.decoder_input_ids.view(1, -1)
    with torch.no_grad():
        logits = model(input_ids=source, decoder_input_ids=decoder_inputs).logits[0]
    torch.testing.assert_close(result.logits, logits[torch.arange(4), torch.tensor(TARGET)].float(), rtol=0, atol=1e-6)
    # every share of each row adds up to its logit (the bias is zero when it is decomposed)
    assert float(_complete(result).abs().max()) < 1e-5
    explainer = DecompX(lambda s, t: model(input_ids=s, decoder_input_ids=t).logits, model=model, **options)
    for t, token in enumerate(TARGET):
        attr_src, attr_tgt = explainer.attribute((source, decoder_inputs), target=(t, token))
        keep = torch.tensor([True, False, True, True, True])
        torch.testing.assert_close(result.token_attr[t], attr_src[0, keep].float(), rtol=0, atol=1e-6)
        torch.testing.assert_close(result.skipped_attr[t], attr_src[0, 1].float(), rtol=0, atol=1e-6)
        torch.testing.assert_close(result.start_attr[t], attr_tgt[0, 0].float(), rtol=0, atol=1e-6)
        torch.testing.assert_close(result.generated_attr[t, :t], attr_tgt[0, 1 : t + 1].float(), rtol=0, atol=1e-6)
        assert torch.equal(result.generated_attr[t, t:], torch.zeros(4 - t))


@pytest.mark.parametrize(
    "gen_args", [{"max_new_tokens": 5}, {"max_new_tokens": 5, "num_beams": 3}], ids=["greedy", "beam-search"]
)
def test_the_returned_sequence_of_generate_is_the_one_explained(t5, gen_args):
    model, tokenizer = t5
    source = tokenizer(SOURCE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        returned = model.generate(source, attention_mask=torch.ones_like(source), do_sample=False, **gen_args)[0]
    result = Seq2SeqDecompX(model, tokenizer).attribute(source, gen_args=gen_args)
    length = result.target_ids.numel()
    assert torch.equal(result.target_ids, returned[1 : length + 1])
    assert length == returned.numel() - 1 or int(returned[length]) == model.config.eos_token_id  # cut after eos only
    assert float(_complete(result).abs().max()) < 1e-5


def test_every_position_is_one_forward_pass_and_one_backward_pass(t5, monkeypatch):
    model, _ = t5
    source = torch.tensor([[5, 8, 13, 21, 30]])
    target = torch.tensor([[0, 11, 17, 4, 25, 9]])
    calls = {"forward": 0, "grad": 0}
    handle = model.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    try:
        for options, grads in (({}, 0), ({"include_biases": False}, 1)):
            calls.update(forward=0, grad=0)
            DecompX(forward_of(model), model=model, **options).decompose_target(
                (source, target), additional_forward_args=(torch.ones_like(source),)
            )
            assert calls == {"forward": 1, "grad": grads}, options
    finally:
        handle.remove()


def test_a_generated_sequence_ends_at_its_first_end_of_sequence_token(t5, monkeypatch):
    """What follows the first eos of the returned sequence (a beam's padding) is not explained."""
    model, tokenizer = t5
    padded = torch.tensor([[0, 11, 17, 1, 0, 0]])  # start, two tokens, eos, padding
    monkeypatch.setattr(model, "generate", lambda *args, **kwargs: padded)
    result = Seq2SeqDecompX(model, tokenizer).attribute(SOURCE)
    assert result.target_ids.tolist() == [11, 17, 1]


def test_a_causal_lm_is_pointed_to_llmdecompx():
    from support.word_level import tiny_gpt2

    with pytest.raises(ValueError, match="LLMDecompX"):
        Seq2SeqDecompX(tiny_gpt2(), word_level_tokenizer(WORDS))


def test_llmdecompx_points_an_encoder_decoder_to_seq2seqdecompx(t5):
    from captum_decompx import LLMDecompX

    model, tokenizer = t5
    with pytest.raises(ValueError, match="Seq2SeqDecompX"):
        LLMDecompX(model, tokenizer)


def test_the_matrix_plots_like_captums(t5):
    import matplotlib

    matplotlib.use("Agg")
    model, tokenizer = t5
    result = Seq2SeqDecompX(model, tokenizer).attribute(SOURCE, target=TARGET)
    figure, _ = result.plot_token_attr()
    assert figure is not None

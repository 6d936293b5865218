"""inseq integration: ``inseq.load_model(model, "decompx", ...)`` on tiny random decoder-only and
encoder-decoder models.

Every step's attributions are checked against inseq's own ``logit`` step score (an independent
forward pass inside inseq) and against DecompX called by hand on the same (left-padded) prefix, so
that a target taken from the wrong row or a score put at the wrong position fails.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

inseq = pytest.importorskip("inseq", reason="the inseq extra is not installed: pip install -e '.[inseq]'")
import transformers as tf  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

import captum_decompx.integrations.inseq as decompx_inseq  # noqa: E402
from captum_decompx import DecompX  # noqa: E402
from captum_decompx.testing import randomize_parameters  # noqa: E402

WORDS = ["<pad>", "<unk>", "<s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "fast", "and", "slow", "big", "small"]


def word_tokenizer():
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="<s>"
    )


def tiny_gpt2():
    torch.manual_seed(1)
    config = tf.GPT2Config(
        vocab_size=len(WORDS), n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=2, eos_token_id=2, pad_token_id=0
    )
    return tf.GPT2LMHeadModel(config).eval()


def tiny_llama():
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=40,
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=0,
    )
    return randomize_parameters(tf.LlamaForCausalLM(config), seed=0)


BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def by_hand(model, prefix_ids, prefix_mask, targets, **options):
    """DecompX through its public API on the same inputs inseq's step sees: (batch, prefix) scores."""
    decompx = DecompX(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits[:, -1, :], model=model, **options)
    return decompx.attribute(prefix_ids, target=targets, additional_forward_args=(prefix_mask,))


def check_steps(sequence, model, tokenizer, atol=1e-5):
    """Each step of one (unpadded) sequence: sum == inseq's logit step score, scores == DecompX by hand."""
    ids = torch.tensor([[token.id for token in sequence.target]])
    start = ids.shape[1] - sequence.target_attributions.shape[1]
    for step in range(sequence.target_attributions.shape[1]):
        length = start + step
        column = sequence.target_attributions[:length, step]
        assert not torch.isnan(column).any()
        assert torch.isnan(sequence.target_attributions[length:, step]).all()
        assert float(column.sum()) == pytest.approx(float(sequence.step_scores["logit"][step]), abs=atol)
        expected = by_hand(model, ids[:, :length], torch.ones(1, length, dtype=torch.long), ids[:, length])
        torch.testing.assert_close(column, expected[0].float(), atol=atol, rtol=1e-4)


def test_importing_registers_decompx():
    assert "decompx" in inseq.list_feature_attribution_methods()
    assert decompx_inseq.METHOD_NAME == "decompx"


@pytest.mark.parametrize("architecture", sorted(BUILDERS))
def test_every_step_is_complete_and_equals_decompx(architecture):
    model, tokenizer = BUILDERS[architecture](), word_tokenizer()
    attribution_model = inseq.load_model(model, "decompx", tokenizer=tokenizer)
    out = attribution_model.attribute(
        "the cat sat on", "the cat sat on the mat", attributed_fn="logit", step_scores=["logit"], show_progress=False
    )
    (sequence,) = out.sequence_attributions
    assert [token.token for token in sequence.target] == "the cat sat on the mat".split()
    assert sequence.target_attributions.shape == (6, 2)
    check_steps(sequence, model, tokenizer)
    assert out.info["attribution_method"] == "decompx" and out.info["attributed_fn"] == "logit_fn"
    html = decompx_inseq.show_html(out)
    assert "the" in html and "mat" in html
    assert "np.float" not in html and "background:rgba(" in html  # colours a browser can read
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("architecture", sorted(BUILDERS))
def test_batched_left_padded_prompts(architecture):
    model, tokenizer = BUILDERS[architecture](), word_tokenizer()
    attribution_model = inseq.load_model(model, "decompx", tokenizer=tokenizer)
    prompts = ["the cat sat on", "a dog"]
    out = attribution_model.attribute(
        prompts,
        attributed_fn="logit",
        step_scores=["logit"],
        show_progress=False,
        generation_args={"max_new_tokens": 2, "do_sample": False, "bad_words_ids": [[0], [1], [2]]},  # no special token generated
    )
    generated = out.info["generated_texts"]
    assert len(out.sequence_attributions) == 2
    assert [sequence.target_attributions.shape[1] for sequence in out.sequence_attributions] == [2, 2]
    # inseq attributes the batch at once, left-padded: rebuild that batch and run DecompX on it by hand.
    tokenizer.padding_side = "left"
    encoded = tokenizer(generated, padding=True, return_tensors="pt")
    padded_ids, mask = encoded["input_ids"], encoded["attention_mask"]
    pads = (mask == 0).sum(1).tolist()
    assert pads[1] > 0  # the short prompt really is padded
    prompt_width = padded_ids.shape[1] - 2
    for step in range(2):
        width = prompt_width + step
        expected = by_hand(model, padded_ids[:, :width], mask[:, :width], padded_ids[:, width])
        for row, sequence in enumerate(out.sequence_attributions):
            column = sequence.target_attributions[: width - pads[row], step]
            assert float(column.sum()) == pytest.approx(float(sequence.step_scores["logit"][step]), abs=1e-5)
            torch.testing.assert_close(column, expected[row, pads[row] : width].float(), atol=1e-5, rtol=1e-4)
            assert torch.all(expected[row, : pads[row]] == 0)


def test_default_probability_target_warns_and_explains_the_logit():
    model, tokenizer = tiny_gpt2(), word_tokenizer()
    attribution_model = inseq.load_model(model, "decompx", tokenizer=tokenizer)
    with pytest.warns(UserWarning, match="explains the logit of each generated token, not its probability"):
        out = attribution_model.attribute(
            "the cat sat on", "the cat sat on the mat", step_scores=["logit", "probability"], show_progress=False
        )
    (sequence,) = out.sequence_attributions
    sums = torch.nansum(sequence.target_attributions, 0)
    torch.testing.assert_close(sums, sequence.step_scores["logit"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sums, sequence.step_scores["probability"], atol=1e-2)
    assert out.info["attributed_fn"] == "logit_fn"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attribution_model.attribute("the cat sat on", "the cat sat on the mat", attributed_fn="logit", show_progress=False)


@pytest.mark.parametrize("attributed_fn", ["entropy", "contrast_prob_diff", "custom"])
def test_other_attributed_functions_are_refused(attributed_fn):
    model, tokenizer = tiny_gpt2(), word_tokenizer()
    attribution_model = inseq.load_model(model, "decompx", tokenizer=tokenizer)
    kwargs = {}
    if attributed_fn == "custom":

        def log_probability(args):
            return torch.log_softmax(args.forward_output.logits[:, -1], -1).gather(1, args.target_ids.view(-1, 1)).squeeze(1)

        attributed_fn = log_probability
    elif attributed_fn == "contrast_prob_diff":
        kwargs = {"contrast_targets": "the cat sat on a mat"}
    with pytest.raises(ValueError, match="cannot attribute .*attributed_fn='logit'"):
        attribution_model.attribute(
            "the cat sat on", "the cat sat on the mat", attributed_fn=attributed_fn, show_progress=False, **kwargs
        )


def test_options_pass_through_and_bias_share_is_a_step_score():
    model, tokenizer = tiny_llama(), word_tokenizer()
    attribution_model = inseq.load_model(model, "decompx", tokenizer=tokenizer, include_biases=False)
    assert attribution_model.attribution_method.decompx.algorithm == "fast"
    out = attribution_model.attribute(
        "the cat sat on", "the cat sat on the mat", attributed_fn="logit", step_scores=["logit"], show_progress=False
    )
    (sequence,) = out.sequence_attributions
    ids = torch.tensor([[token.id for token in sequence.target]])
    for step, length in enumerate((4, 5)):
        column = sequence.target_attributions[:length, step]
        bias = float(sequence.step_scores[decompx_inseq.BIAS_STEP_SCORE][step])
        assert float(column.sum()) + bias == pytest.approx(float(sequence.step_scores["logit"][step]), abs=1e-5)
        expected = by_hand(model, ids[:, :length], torch.ones(1, length, dtype=torch.long), ids[:, length], include_biases=False)
        torch.testing.assert_close(column, expected[0].float(), atol=1e-5, rtol=1e-4)
    assert out.info["decompx_options"] == {"include_biases": False}
    out.show(display=False, return_html=True)


def test_unknown_options_and_include_head_are_refused():
    model, tokenizer = tiny_gpt2(), word_tokenizer()
    with pytest.raises(TypeError, match="Unknown DecompX option"):
        inseq.load_model(model, "decompx", tokenizer=tokenizer, include_bias=False)
    exact = inseq.load_model(model, "decompx", tokenizer=tokenizer, include_biases=False, algorithm="exact")
    assert exact.attribution_method.decompx.algorithm == "exact"
    with pytest.raises(TypeError, match="include_head=False gives norms"):
        inseq.load_model(model, "decompx", tokenizer=tokenizer, include_head=False)


SEQ2SEQ_WORDS = ["<pad>", "</s>", "<unk>"] + WORDS[3:]  # T5's ids: pad 0, eos 1


def tiny_t5():
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SEQ2SEQ_WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    config = tf.T5Config(
        vocab_size=len(SEQ2SEQ_WORDS),
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
    )
    return randomize_parameters(tf.T5ForConditionalGeneration(config), seed=0), tokenizer


@pytest.mark.parametrize("attribute_target", [True, False], ids=["source-and-target", "source-only"])
def test_encoder_decoder_steps_are_complete_and_equal_decompx(attribute_target):
    """A batch of sources and targets of different lengths: each step's source (and target-prefix)
    attributions sum to inseq's logit step score (without attribute_target, the prefix's share is
    the step score decompx_target_prefix), and equal DecompX called by hand on that step."""
    model, tokenizer = tiny_t5()
    sources, targets = ["the cat sat", "a dog ran fast"], ["big small", "the mat on"]
    out = inseq.load_model(model, "decompx", tokenizer=tokenizer).attribute(
        sources, targets, attributed_fn="logit", attribute_target=attribute_target, show_progress=False, step_scores=["logit"]
    )
    explainer = DecompX(
        lambda src, tgt, mask: model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits, model=model
    )
    for seq, source, target in zip(out.sequence_attributions, sources, targets):
        source_ids = tokenizer(source, return_tensors="pt")["input_ids"]
        target_ids = tokenizer(target, return_tensors="pt")["input_ids"][0]
        steps = target_ids.numel()
        assert seq.source_attributions.shape == (source_ids.shape[1], steps)
        prefix_share = seq.target_attributions.nansum(0) if attribute_target else seq.step_scores[decompx_inseq.PREFIX_STEP_SCORE]
        torch.testing.assert_close(seq.source_attributions.nansum(0) + prefix_share, seq.step_scores["logit"], rtol=0, atol=1e-5)
        decoder_ids = torch.cat([torch.tensor([0]), target_ids])
        for step in range(steps):
            attr_src, attr_tgt = explainer.attribute(
                (source_ids, decoder_ids[None, : step + 1]),
                target=(step, int(target_ids[step])),
                additional_forward_args=(torch.ones_like(source_ids),),
            )
            torch.testing.assert_close(seq.source_attributions[:, step], attr_src[0], rtol=0, atol=1e-5)
            if attribute_target:
                torch.testing.assert_close(seq.target_attributions[: step + 1, step], attr_tgt[0], rtol=0, atol=1e-5)


def test_attributions_are_finite_numbers():
    model, tokenizer = tiny_gpt2(), word_tokenizer()
    out = inseq.load_model(model, "decompx", tokenizer=tokenizer).attribute(
        "a dog", "a dog ran fast", attributed_fn="logit", show_progress=False
    )
    values = out.sequence_attributions[0].target_attributions
    assert all(math.isfinite(v) for v in values[~torch.isnan(values)].tolist())

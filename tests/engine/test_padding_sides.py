"""Left and right padding give complete decompositions for every family and head, on both paths.

A padding token's share is what the decomposition gives it: zero where nothing the output reads
attends to it, and its real share where the model itself reads it. With left padding the encoder
classifiers pool position 0, a padding token: its own embedding reaches the logit through the
residuals, so it keeps that share (it used to be zeroed, and the logit was then incomplete, with
the fast path pushing the missing share into the bias). Every test checks completeness against
the logits the model itself returns (its own attention implementation, sdpa by default), and the
values against independent computations: the literal spec (``literal_spec.py``) run on the whole
padded sequence with its attention mask, a model whose biases are all zero, the sequence
classifier with the multiple-choice model's weights.
"""

from __future__ import annotations

import literal_spec as spec
import pytest
import torch
import transformers as tf
from support.architectures import COMMON, DECODER
from support.literal_models import bert, bert_embeddings, bert_weights

from captum_decompx import DecompX
from captum_decompx.testing import randomize_parameters

SIDES = ("left", "right")
LENGTHS = (6, 4, 2)
VOCAB = 60

FAMILIES = {
    "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(**COMMON)),
    "roberta": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(**COMMON, pad_token_id=1)),
    "electra": lambda: tf.ElectraForSequenceClassification(tf.ElectraConfig(**COMMON, embedding_size=16)),
    "distilbert": lambda: tf.DistilBertForSequenceClassification(
        tf.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=40, num_labels=3, max_position_embeddings=64
        )
    ),
    "albert": lambda: tf.AlbertForSequenceClassification(
        tf.AlbertConfig(**COMMON, embedding_size=16, num_hidden_groups=1, inner_group_num=1)
    ),
    "deberta-v2": lambda: tf.DebertaV2ForSequenceClassification(
        tf.DebertaV2Config(
            **COMMON, relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"], pooler_hidden_act="gelu"
        )
    ),
    # a local window of 4: with left padding, position 0's window in the local layer holds only padding
    "modernbert-cls": lambda: tf.ModernBertForSequenceClassification(
        tf.ModernBertConfig(**COMMON, global_attn_every_n_layers=2, local_attention=4, classifier_pooling="cls", pad_token_id=0)
    ),
    "modernbert-mean": lambda: tf.ModernBertForSequenceClassification(
        tf.ModernBertConfig(**COMMON, classifier_pooling="mean", pad_token_id=0)
    ),
    "gpt2": lambda: tf.GPT2ForSequenceClassification(
        tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=3, pad_token_id=0)
    ),
    "llama": lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(**DECODER)),
    # sliding windows of 2: padding rows whose window holds only padding, on both sides
    "mistral": lambda: tf.MistralForSequenceClassification(tf.MistralConfig(**DECODER, sliding_window=2)),
    "gemma3_text": lambda: tf.Gemma3TextForSequenceClassification(tf.Gemma3TextConfig(**DECODER, sliding_window=2)),
    "phi3": lambda: tf.Phi3ForSequenceClassification(
        tf.Phi3Config(**{key: value for key, value in DECODER.items() if key != "head_dim"})
    ),
}


def padded(lengths, side: str, seed: int, pad_id: int = 0, vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids in [2, vocab) padded on ``side`` with ``pad_id``, and the attention mask."""
    generator = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    ids = torch.full((len(lengths), seq), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        where = slice(seq - length, seq) if side == "left" else slice(0, length)
        ids[row, where] = torch.randint(2, vocab, (length,), generator=generator)
        mask[row, where] = 1
    return ids, mask


def keyword_forward(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def assert_close(actual, expected, scale, tol=1e-5, what=""):
    difference = float((actual - expected).abs().max())
    assert difference <= tol * max(1.0, float(scale)), f"{what}: max |difference| {difference:.3e} at scale {float(scale):.3f}"


def pad_id_of(model) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_is_complete_on_both_paths_for_both_padding_sides(name, side):
    model = randomize_parameters(FAMILIES[name](), seed=4)
    ids, mask = padded(LENGTHS, side, seed=4, pad_id=pad_id_of(model))
    forward = keyword_forward(model)
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask).logits
    scale = own.abs().max()

    exact = DecompX(forward, model=model).decompose(ids, (mask,))
    assert_close(exact.logits, own, scale, what="the explained logits are the model's own")
    assert_close(exact.attributions.sum(1), own, scale, what="exact, biases decomposed")
    assert float(exact.bias.abs().max()) == 0.0

    exact_free = DecompX(forward, model=model, include_biases=False, algorithm="exact").decompose(ids, (mask,))
    fast = DecompX(forward, model=model, include_biases=False, algorithm="fast").decompose(ids, (mask,))
    for out, path in ((exact_free, "exact"), (fast, "fast")):
        assert_close(out.attributions.sum(1) + out.bias, own, scale, what=f"{path}, biases left out")
    assert_close(fast.attributions, exact_free.attributions, scale, what="fast = exact without biases")
    # The fast path's bias share is the frozen logits minus the token shares: a share that the
    # tokens lose shows up here.
    assert_close(fast.bias, exact_free.bias, scale, what="the biases' share, fast = exact")


def literal_padded_bert(model, ids, mask, **options) -> list[tuple[spec.Trace, spec.Decomposition]]:
    """Per example, the literal forward pass of the whole padded row under its attention mask
    (checked against the model's own logits) and its literal decomposition at row 0, the row
    BERT pools."""
    weights = bert_weights(model)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    results = []
    for b in range(ids.shape[0]):
        embeddings = bert_embeddings(model, ids[b])
        keys = mask[b].bool()
        trace = spec.real_forward(weights, embeddings, pooled_row=0, keys=keys)
        spec.assert_matches(trace.logits, logits[b], float(logits.abs().max()), "literal forward vs model logits", 1e-9)
        results.append((trace, spec.decompose(weights, embeddings, trace, 0, **options)))
    return results


@pytest.mark.parametrize(
    "include_biases, algorithm", [(True, "exact"), (False, "exact"), (False, "fast")], ids=["rule", "left-out-exact", "fast"]
)
def test_left_padded_bert_matches_the_literal_spec_padding_position_included(include_biases, algorithm):
    """The pooled padding position's share is its own embedding carried through the residuals
    (the literal spec decomposes the padded row as it is); the other padding tokens get zero."""
    model = bert(seed=5)
    ids, mask = padded((7, 5, 3), "left", seed=5, vocab=50)
    out = DecompX(model, include_biases=include_biases, algorithm=algorithm).decompose(ids, (mask,))
    literal = literal_padded_bert(model, ids, mask, mode="rule" if include_biases else "drop")
    scale = float(out.logits.abs().max())
    for b, (trace, decomposition) in enumerate(literal):
        spec.assert_matches(out.attributions[b], decomposition.contributions, scale, f"example {b}: every position's share")
        spec.assert_matches(out.bias[b], trace.logits - decomposition.contributions.sum(0), scale, f"example {b}: bias share")
        padding = (mask[b] == 0).nonzero().flatten()
        if padding.numel():
            assert float(decomposition.contributions[padding[0]].abs().max()) > 1e-3 * scale  # the pooled padding token
            if padding.numel() > 1:
                assert float(out.attributions[b, padding[1:]].abs().max()) == 0.0  # padding nobody reads


@pytest.mark.parametrize("side", SIDES)
def test_bert_without_any_bias_has_no_bias_share_on_either_path(side):
    model = randomize_parameters(FAMILIES["bert"](), seed=6).double()  # float64: a share of 1e-10 is no rounding
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    ids, mask = padded(LENGTHS, side, seed=6)
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask).logits
    scale = float(own.abs().max())
    for algorithm in ("exact", "fast"):
        out = DecompX(model, include_biases=False, algorithm=algorithm).decompose(ids, (mask,))
        assert float(out.bias.abs().max()) <= 1e-10 * max(1.0, scale), (algorithm, out.bias)
        assert_close(out.attributions.sum(1), own, scale, what=f"{algorithm}: the tokens carry the whole logit")


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", ["bert", "albert", "modernbert-cls"])
def test_multiple_choice_is_complete_and_equals_the_sequence_classifier(name, side):
    builders = {
        "bert": (tf.BertForMultipleChoice, tf.BertForSequenceClassification, tf.BertConfig(**{**COMMON, "num_labels": 1})),
        "albert": (
            tf.AlbertForMultipleChoice,
            tf.AlbertForSequenceClassification,
            tf.AlbertConfig(**{**COMMON, "num_labels": 1}, embedding_size=16),
        ),
        "modernbert-cls": (
            tf.ModernBertForMultipleChoice,
            tf.ModernBertForSequenceClassification,
            tf.ModernBertConfig(**{**COMMON, "num_labels": 1}, classifier_pooling="cls", pad_token_id=0),
        ),
    }
    choice_class, classifier_class, config = builders[name]
    choice_model = randomize_parameters(choice_class(config), seed=7)
    classifier = classifier_class(config).eval()
    classifier.load_state_dict(choice_model.state_dict(), strict=False)
    rows = [padded((6, 3, 5), side, seed=7 + example) for example in range(2)]
    ids = torch.stack([r[0] for r in rows])  # (2 examples, 3 choices, 6)
    mask = torch.stack([r[1] for r in rows])
    with torch.no_grad():
        own = choice_model(input_ids=ids, attention_mask=mask).logits
    scale = own.abs().max()
    out = DecompX(choice_model).decompose(ids, (mask,))
    assert_close(out.attributions.sum(-1), own, scale, what="exact, biases decomposed")
    fast = DecompX(choice_model, include_biases=False, algorithm="fast").decompose(ids, (mask,))
    exact = DecompX(choice_model, include_biases=False, algorithm="exact").decompose(ids, (mask,))
    assert_close(fast.attributions.sum(-1) + fast.bias, own, scale, what="fast")
    assert_close(fast.attributions, exact.attributions, scale, what="fast = exact without biases")
    assert_close(fast.bias, exact.bias, scale, what="the biases' share, fast = exact")
    if name == "modernbert-cls" and side == "left":
        return  # its multiple-choice head pools the first real token, its classifier position 0
    for choice in range(3):
        alone = DecompX(classifier).decompose(ids[:, choice], (mask[:, choice],))
        assert_close(out.attributions[:, choice], alone.attributions[..., 0], scale, what=f"choice {choice} = classifier")


@pytest.mark.parametrize("side", SIDES)
def test_token_classification_every_position_padding_included_is_complete(side):
    model = randomize_parameters(tf.BertForTokenClassification(tf.BertConfig(**COMMON)), seed=8)
    ids, mask = padded(LENGTHS, side, seed=8)
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask).logits  # (batch, seq, classes)
    scale = own.abs().max()
    out = DecompX(model).decompose(ids, (mask,))  # (batch, positions, seq, classes)
    assert_close(out.attributions.sum(2), own, scale, what="every position, padding positions too")
    free = DecompX(model, include_biases=False, algorithm="exact").decompose(ids, (mask,))
    assert_close(free.attributions.sum(2) + free.bias, own, scale, what="biases left out")
    padding_position = int((mask[2] == 0).nonzero()[0])
    target = (padding_position, 1)
    fast = DecompX(model, include_biases=False, algorithm="fast").attribute(ids, target=target, additional_forward_args=(mask,))
    assert_close(fast[2], free.attributions[2, padding_position, :, 1], scale, what="fast, a padding position's output")


@pytest.mark.parametrize("side", SIDES)
def test_causal_lm_last_real_token_is_complete_and_fast_equals_exact(side):
    """A causal LM's next-token logit at the last real token (the last position under left padding)."""
    model = randomize_parameters(tf.LlamaForCausalLM(tf.LlamaConfig(**DECODER)), seed=9)
    ids, mask = padded(LENGTHS, side, seed=9)

    def next_token(input_ids, attention_mask):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        last = (attention_mask * torch.arange(attention_mask.shape[1])).argmax(1)
        return logits[torch.arange(logits.shape[0]), last]

    with torch.no_grad():
        own = next_token(ids, mask)
    targets = own.argmax(-1)
    scale = own.abs().max()
    scores, delta = DecompX(next_token, model=model).attribute(
        ids, target=targets, additional_forward_args=(mask,), return_convergence_delta=True
    )
    assert_close(scores.sum(-1), own.gather(1, targets[:, None])[:, 0], scale, what="exact, biases decomposed")
    assert float(delta.abs().max()) <= 1e-5 * max(1.0, float(scale))
    fast = DecompX(next_token, model=model, include_biases=False, algorithm="fast")
    exact = DecompX(next_token, model=model, include_biases=False, algorithm="exact")
    args = dict(target=targets, additional_forward_args=(mask,))
    assert_close(fast.attribute(ids, **args), exact.attribute(ids, **args), scale, what="fast = exact without biases")


def test_eager_attention_that_reads_padding_keeps_its_share():
    """A ModernBERT loaded with eager attention: with left padding, position 0's local window holds
    only padding, and eager attention spreads that row over every key, padding included. The model
    itself reads those padding tokens, so their shares are part of its logit."""
    config = tf.ModernBertConfig(
        **COMMON,
        global_attn_every_n_layers=2,
        local_attention=4,
        classifier_pooling="cls",
        pad_token_id=0,
        attn_implementation="eager",
    )
    model = randomize_parameters(tf.ModernBertForSequenceClassification(config), seed=11)
    ids, mask = padded((6, 3), "left", seed=11)
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask).logits
    scale = own.abs().max()
    out = DecompX(model).decompose(ids, (mask,))
    assert_close(out.attributions.sum(1), own, scale, what="eager, biases decomposed")
    assert float(out.attributions[1, 1:3].abs().max()) > 0  # padding tokens the eager row reads
    fast = DecompX(model, include_biases=False, algorithm="fast").decompose(ids, (mask,))
    exact = DecompX(model, include_biases=False, algorithm="exact").decompose(ids, (mask,))
    assert_close(fast.attributions, exact.attributions, scale, what="fast = exact without biases")
    assert_close(fast.bias, exact.bias, scale, what="the biases' share, fast = exact")

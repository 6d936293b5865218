"""Second, independent checks for values that a single test guarded so far.

Each test here catches a realistic bug by a different computation than the test that caught it
first: the model's own output where that one compared two paths, two paths where that one read a
shape, another parameter set where that one used one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from support.architectures import CAUSAL_LMS, COMMON, VOCAB, padded_batch
from torch import nn

from captum_decompx import DecompX
from captum_decompx.testing import randomize_parameters

# ----------------------------------------------------------------------------------------------
# Right-padded causal LMs in decompose(): fast = exact without biases, with and without the head


@pytest.mark.parametrize("name", ["gpt2-lm", "llama-lm", "qwen3-lm"])
@pytest.mark.parametrize("include_head", [True, False], ids=["head", "no-head"])
def test_right_padded_causal_lm_fast_equals_exact_and_reads_the_last_real_token(name, include_head):
    """The fast path pools the last real token of each right-padded example, as the exact path
    does; its logits are the model's at that position (read here from the model's own output)."""
    model = randomize_parameters(CAUSAL_LMS[name](), 5)
    lengths = (7, 4, 2)
    ids, mask = padded_batch(5, lengths=lengths)

    def forward(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    with torch.no_grad():
        per_position = forward(ids, mask)
    expected_logits = per_position[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
    scale = max(1.0, float(expected_logits.abs().max()))
    options = dict(include_biases=False, include_head=include_head)
    exact = DecompX(forward, model=model, algorithm="exact", **options).decompose(ids, (mask,))
    fast = DecompX(forward, model=model, algorithm="fast", **options).decompose(ids, (mask,))
    for result in (exact, fast):
        torch.testing.assert_close(result.logits, expected_logits, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(fast.attributions, exact.attributions, rtol=0, atol=1e-5 * scale)
    if include_head:
        torch.testing.assert_close(fast.bias, exact.bias, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(fast.attributions.sum(1) + fast.bias, expected_logits, rtol=0, atol=1e-5 * scale)
    for row, length in enumerate(lengths):  # padding after the pooled token carries nothing
        assert bool((exact.attributions[row, length:] == 0).all()) and bool((fast.attributions[row, length:] == 0).all())


# ----------------------------------------------------------------------------------------------
# Token maps: the map of layer l at the pooled row is the no-head score of the model cut after l


@pytest.mark.parametrize("include_biases", [True, False], ids=["biases", "no-biases"])
def test_token_map_of_each_layer_is_the_no_head_score_of_the_model_cut_after_it(include_biases):
    """``token_maps[l][b, 0, k]`` is ``||X_l[0, k]||``; the no-head score of a BERT cut after layer
    ``l`` is the same norm, computed by another route (its last layer, pooled, without the maps)."""
    model = randomize_parameters(tf.BertForSequenceClassification(tf.BertConfig(**{**COMMON, "num_hidden_layers": 3})), 4)
    ids, mask = padded_batch(4, lengths=(8, 5, 3))
    out = DecompX(model, include_biases=include_biases).decompose(ids, (mask,), return_token_maps=True)
    assert len(out.token_maps) == 3
    for layer in range(3):
        cut = copy.deepcopy(model)
        cut.bert.encoder.layer = nn.ModuleList(list(cut.bert.encoder.layer)[: layer + 1])
        cut.config.num_hidden_layers = layer + 1
        scores = DecompX(cut, include_biases=include_biases, include_head=False).decompose(ids, (mask,)).attributions
        scale = max(1.0, float(scores.abs().max()))
        torch.testing.assert_close(out.token_maps[layer][:, 0, :], scores, rtol=0, atol=1e-5 * scale)


# ----------------------------------------------------------------------------------------------
# ALBERT's layer groups: completeness against the model and fast = exact


@pytest.mark.parametrize("layers, groups, inner", [(4, 2, 2), (6, 3, 1), (3, 2, 1)])
def test_albert_groups_are_complete_and_fast_equals_exact(layers, groups, inner):
    """The fast path freezes the modules that ran, the exact path reads the adapter's layer list:
    a wrong group index makes them disagree, and the exact path's sum miss the model's logits."""
    config = tf.AlbertConfig(
        vocab_size=VOCAB,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=layers,
        num_hidden_groups=groups,
        inner_group_num=inner,
        num_attention_heads=4,
        intermediate_size=40,
        num_labels=3,
        max_position_embeddings=64,
    )
    model = randomize_parameters(tf.AlbertForSequenceClassification(config), 2)
    ids, mask = padded_batch(2, lengths=(7, 4))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    scale = max(1.0, float(logits.abs().max()))
    complete = DecompX(model).decompose(ids, (mask,))
    torch.testing.assert_close(complete.attributions.sum(1), logits, rtol=0, atol=1e-5 * scale)
    exact = DecompX(model, include_biases=False, algorithm="exact").decompose(ids, (mask,))
    fast = DecompX(model, include_biases=False, algorithm="fast").decompose(ids, (mask,))
    torch.testing.assert_close(fast.attributions, exact.attributions, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(exact.attributions.sum(1) + exact.bias, logits, rtol=0, atol=1e-5 * scale)


# ----------------------------------------------------------------------------------------------
# A softmax tail: the referred class, checked against the model's own logit of that class


@pytest.mark.parametrize("algorithm", ["exact", "fast"])
def test_a_softmax_tail_explains_the_logit_of_the_target_class(algorithm):
    """``softmax(logits)[:, c]`` refers to logit ``c``: the scores plus the bias share are the
    model's logit ``c`` (called here on the model, not through DecompX), per example."""
    model = randomize_parameters(tf.BertForSequenceClassification(tf.BertConfig(**COMMON)), 6)
    ids, mask = padded_batch(6, lengths=(7, 5, 3))
    targets = torch.tensor([2, 0, 1])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    expected = logits[torch.arange(3), targets]
    include_biases = algorithm == "exact"
    explainer = DecompX(
        lambda i, m: torch.softmax(model(input_ids=i, attention_mask=m).logits, -1),
        model=model,
        include_biases=include_biases,
        algorithm=algorithm,
    )
    with pytest.warns(UserWarning, match="class"):
        scores = explainer.attribute(ids, target=targets, additional_forward_args=(mask,))
    share = torch.zeros(3)
    if not include_biases:
        bias = DecompX(model, include_biases=False, algorithm="fast").decompose(ids, (mask,)).bias
        share = bias[torch.arange(3), targets]
    scale = max(1.0, float(logits.abs().max()))
    torch.testing.assert_close(scores.sum(-1) + share, expected, rtol=0, atol=1e-5 * scale)


# ----------------------------------------------------------------------------------------------
# LoRA scaling: other alpha / r than 4 / 8, with and without rank-stabilized scaling


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("rank, alpha, rslora", [(2, 16, False), (2, 16, True), (8, 4, True)])
def test_lora_scaling_of_other_ranks_equals_the_merged_model(rank, alpha, rslora):
    """PEFT's scaling is ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``; compared with
    PEFT's own ``merge_and_unload()``."""
    peft = pytest.importorskip("peft")
    model = randomize_parameters(tf.BertForSequenceClassification(tf.BertConfig(**COMMON)), 7)
    config = peft.LoraConfig(
        task_type="SEQ_CLS",
        target_modules=["value", "intermediate.dense", "pooler.dense"],
        r=rank,
        lora_alpha=alpha,
        use_rslora=rslora,
        init_lora_weights=False,
    )
    lora = peft.get_peft_model(model, config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    lora.eval()
    scaling = lora.base_model.model.bert.encoder.layer[0].attention.self.value.scaling["default"]
    assert scaling == pytest.approx(alpha / (rank**0.5 if rslora else rank))
    merged = copy.deepcopy(lora).merge_and_unload()
    ids, mask = padded_batch(7, lengths=(7, 4))

    def forward_of(m):
        return lambda i, k: m(input_ids=i, attention_mask=k).logits

    for include_biases in (True, False):
        got = DecompX(forward_of(lora), model=lora, include_biases=include_biases).decompose(ids, (mask,))
        want = DecompX(forward_of(merged), model=merged, include_biases=include_biases).decompose(ids, (mask,))
        scale = max(1.0, float(want.logits.abs().max()), float(want.attributions.abs().max()))
        torch.testing.assert_close(got.attributions, want.attributions, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-5 * scale)


# ----------------------------------------------------------------------------------------------
# A dataset part's rows stay under their ids when they are sorted by length


def test_a_part_sorted_by_length_keeps_every_row_under_its_id():
    """Rows in strictly decreasing length, so sorting by length reverses them: each output row's
    tokens are its own text's, its logits the model's on that text alone."""
    from support.classifiers import make_model, make_word_tokenizer

    from captum_decompx.runs.attribute import attribute_part, output_schema
    from captum_decompx.runs.tables import TextTable

    words = "good bad film plot dull great fun story".split()
    texts = [" ".join(words[: 8 - row]) for row in range(6)]  # 8, 7, ..., 3 words
    model = make_model("bert", seed=3, num_labels=2)
    tokenizer = make_word_tokenizer(words)
    table = TextTable(Path("rows.tsv"), texts, None, None, "text", None, None)
    part, _, _ = attribute_part(
        DecompX(model),
        tokenizer,
        table,
        1,
        6,
        schema=output_schema(with_pairs=False, with_labels=False),
        batch_size=2,
        max_length=64,
        bucket_by_length=True,
        device=torch.device("cpu"),
    )
    assert part.column("id").to_pylist() == [1, 2, 3, 4, 5]
    for row in part.to_pylist():
        text = texts[row["id"]]
        assert row["text"] == text
        encoded = tokenizer(text, return_tensors="pt")
        assert row["tokens"] == ["[CLS]"] + text.split() + ["[SEP]"]
        with torch.no_grad():
            logits = model(**encoded).logits[0]
        torch.testing.assert_close(torch.tensor(row["logits"]), logits, rtol=0, atol=2e-5)


# ----------------------------------------------------------------------------------------------
# Row chunks: every row once, in order


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    rows=st.lists(st.integers(0, 40), min_size=0, max_size=25, unique=True).map(sorted),
    contiguous=st.tuples(st.integers(0, 20), st.integers(0, 20)),
    size=st.integers(1, 12),
    use_range=st.booleans(),
)
def test_row_chunks_cover_every_row_once_in_order(rows, contiguous, size, use_range):
    """The exact path's row chunks: their rows, concatenated, are the rows asked for (no row
    twice, none missing, none out of order), and no chunk is larger than asked."""
    from captum_decompx.core.decomposition import _chunks

    if use_range:
        start, count = contiguous
        rows = list(range(start, start + count))
    chunks = _chunks(torch.tensor(rows, dtype=torch.long), size)
    covered: list[int] = []
    for chunk in chunks:
        chunk_rows = list(range(chunk.start, chunk.stop)) if isinstance(chunk, slice) else chunk.tolist()
        assert 1 <= len(chunk_rows) <= size
        covered.extend(chunk_rows)
    assert covered == rows

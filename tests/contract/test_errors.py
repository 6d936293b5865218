"""Clear errors for invalid options, targets, models and adapter registrations."""

from __future__ import annotations

import pytest
import torch
from support.classifiers import NUM_LABELS, cached_model, make_model, make_padded_batch
from torch import nn
from transformers import GPT2Config, GPT2ForSequenceClassification

from captum_decompx import Activation, Adapter, DecompX, LayerPaths, Linear, register_adapter, supported_model_types
from captum_decompx.testing import registrations_restored

SUPPORTED = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")


@pytest.fixture(scope="module")
def model():
    return cached_model("bert", seed=0)


@pytest.fixture(scope="module")
def batch():
    return make_padded_batch()


@pytest.fixture
def private_registry():
    """Registrations made by a test are undone after it."""
    with registrations_restored():
        yield


# ----------------------------------------------------------------------------------------------
# Options

INVALID_OPTIONS = {
    "bias_decomposition": ("dot", ("absdot", "abssim", "norm", "equal", "cls")),
    "ffn_approximation": ("gelu", ("zo", "la", "relu")),
    "head_approximation": ("relu", ("zo", "la")),
    "algorithm": ("slow", ("auto", "exact", "fast")),
}


@pytest.mark.parametrize("option", list(INVALID_OPTIONS))
def test_invalid_option_names_the_valid_choices(model, option):
    value, choices = INVALID_OPTIONS[option]
    with pytest.raises(ValueError) as error:
        DecompX(model, **{option: value})
    message = str(error.value)
    assert option in message
    assert repr(value) in message or value in message
    for choice in choices:
        assert choice in message, f"{choice!r} missing from: {message}"


@pytest.mark.parametrize("flag", ["include_biases", "include_ffn", "include_head"])
def test_non_boolean_flags_raise(model, flag):
    with pytest.raises(ValueError, match=flag):
        DecompX(model, **{flag: "yes"})


@pytest.mark.parametrize("max_memory", [0, -5, 1.5, "4GB"])
def test_invalid_max_memory_raises(model, max_memory):
    with pytest.raises(ValueError, match="max_memory"):
        DecompX(model, max_memory=max_memory)


# ----------------------------------------------------------------------------------------------
# Targets

BAD_TARGETS = {
    "too-large": NUM_LABELS,
    "too-negative": -NUM_LABELS - 1,  # -1 .. -NUM_LABELS count from the last class, as in Captum
    "one-too-large-in-list": [0, 1, NUM_LABELS],
    "list-too-short": [0, 1],
    "list-too-long": [0, 1, 2, 0],
    "tensor-wrong-length": torch.tensor([0, 1]),
    "two-dimensional": torch.tensor([[0], [1], [2]]),
    "float": 1.0,
    "float-list": [0.0, 1.0, 2.0],
    "float-tensor": torch.tensor([0.0, 1.0, 2.0]),
    "string": "LABEL_1",
}


@pytest.mark.parametrize("method", ["exact", "fast"])
@pytest.mark.parametrize("target", list(BAD_TARGETS))
def test_bad_target_raises(model, batch, target, method):
    options = {} if method == "exact" else dict(include_biases=False)
    explainer = DecompX(model, **options)
    with pytest.raises(ValueError, match="target"):
        explainer.attribute(batch.input_ids, target=BAD_TARGETS[target], additional_forward_args=(batch.attention_mask,))


def test_out_of_range_target_lists_the_labels(model, batch):
    with pytest.raises(ValueError) as error:
        DecompX(model).attribute(batch.input_ids, target=5, additional_forward_args=(batch.attention_mask,))
    message = str(error.value)
    assert "5" in message and "LABEL_0" in message and "LABEL_2" in message


# ----------------------------------------------------------------------------------------------
# Models


def test_training_mode_raises_mentioning_eval(batch):
    model = make_model("bert", seed=0).train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        DecompX(model).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        DecompX(model).decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))


def _tiny_gpt2_classifier() -> nn.Module:
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=2, pad_token_id=0)
    return GPT2ForSequenceClassification(config).eval()


class PlainClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(100, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, input_ids):
        return self.out(self.embedding(input_ids).mean(1))


@pytest.mark.parametrize("unsupported", ["gpt2-renamed", "plain-module"])
def test_unsupported_model_names_supported_types_and_register_adapter(unsupported):
    if unsupported == "gpt2-renamed":
        # GPT-2 may gain an adapter; a model_type nobody registered is unsupported for sure
        model = _tiny_gpt2_classifier()
        model.config.model_type = "gpt2-unregistered"
    else:
        model = PlainClassifier().eval()
    with pytest.raises(ValueError) as error:
        DecompX(model)
    message = str(error.value)
    assert "register_adapter" in message
    for model_type in SUPPORTED:
        assert model_type in message


def test_supported_model_types_include_the_bert_family():
    assert set(SUPPORTED) <= set(supported_model_types())


def test_plain_module_through_forward_func_is_also_rejected():
    model = PlainClassifier().eval()
    with pytest.raises(ValueError, match="register_adapter"):
        DecompX(lambda input_ids: model(input_ids), model=model)


# ----------------------------------------------------------------------------------------------
# Adapter registration


def renamed_bert_adapter() -> Adapter:
    """An adapter written from scratch for BertForSequenceClassification, with explicit paths."""
    return Adapter(
        name="renamed-bert",
        layers="bert.encoder.layer",
        layer=LayerPaths(
            attention="attention.self",
            value="attention.self.value",
            attention_output="attention.output.dense",
            attention_norm="attention.output.LayerNorm",
            ffn_in="intermediate.dense",
            ffn_activation="intermediate.intermediate_act_fn",
            ffn_out="output.dense",
            ffn_norm="output.LayerNorm",
        ),
        head=(Linear("bert.pooler.dense"), Activation(function=torch.tanh), Linear("classifier")),
        pooling="first",
    )


def test_registering_a_model_type_twice_without_overwrite_raises(private_registry):
    register_adapter("my-new-type", renamed_bert_adapter())
    with pytest.raises(ValueError, match="overwrite"):
        register_adapter("my-new-type", renamed_bert_adapter())
    register_adapter("my-new-type", renamed_bert_adapter(), overwrite=True)  # explicitly allowed
    with pytest.raises(ValueError, match="overwrite"):
        register_adapter("bert", renamed_bert_adapter())


def test_custom_adapter_for_a_renamed_model_type(private_registry, batch):
    reference = make_model("bert", seed=0)
    renamed = make_model("bert", seed=0)
    renamed.config.model_type = "renamed-bert-for-test"
    assert renamed.config.model_type == "renamed-bert-for-test"
    args = (batch.attention_mask,)

    with pytest.raises(ValueError, match="register_adapter"):
        DecompX(renamed)
    register_adapter("renamed-bert-for-test", renamed_bert_adapter())
    assert "renamed-bert-for-test" in supported_model_types()

    for options in (dict(), dict(include_biases=False), dict(include_head=False)):
        custom = DecompX(renamed, **options).decompose(batch.input_ids, additional_forward_args=args)
        builtin = DecompX(reference, **options).decompose(batch.input_ids, additional_forward_args=args)
        torch.testing.assert_close(custom.attributions, builtin.attributions, rtol=1e-5, atol=1e-5)
    complete = DecompX(renamed).decompose(batch.input_ids, additional_forward_args=args)
    torch.testing.assert_close(complete.attributions.sum(1), complete.logits, rtol=1e-5, atol=1e-5)


def test_adapter_factory_is_called_with_the_model(private_registry, batch):
    seen = []

    def factory(model):
        seen.append(model)
        return renamed_bert_adapter()

    model = make_model("bert", seed=0)
    model.config.model_type = "factory-bert-for-test"
    register_adapter("factory-bert-for-test", factory)
    out = DecompX(model).decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    assert seen and seen[0] is model
    torch.testing.assert_close(out.attributions.sum(1), out.logits, rtol=1e-5, atol=1e-5)


def test_forward_function_that_runs_the_model_twice_is_refused(model, batch):
    ids, mask = batch.input_ids, batch.attention_mask

    def twice(input_ids, attention_mask):
        model(input_ids, attention_mask=attention_mask)
        return model(input_ids, attention_mask=attention_mask).logits

    with pytest.raises(RuntimeError, match="2 times"):
        DecompX(twice, model=model).attribute(ids, target=0, additional_forward_args=(mask,))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

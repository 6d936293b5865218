"""Agreement with the outputs of the authors' DecompX implementation (``tests/data/public_refs.pt``).

The reference file holds, for a tiny random BERT and RoBERTa, three cases (5, 9 and 17 tokens) and
the authors' outputs for the paper's default settings (``full``) and three ablations: biases left
out (``no_bias``), feed-forward networks left out (``no_ffn``) and no classification head
(``no_head``: the L2 norm of each token's piece of the [CLS] representation).
"""

from __future__ import annotations

import pytest
import torch
from support.paths import DATA
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from captum_decompx import DecompX

REFERENCE_FILE = DATA / "public_refs.pt"
TOLERANCE = dict(rtol=1e-5, atol=1e-5)

MODEL_CLASSES = {
    "bert": (BertConfig, BertForSequenceClassification),
    "roberta": (RobertaConfig, RobertaForSequenceClassification),
}

# setting id -> (DecompX keyword options, key of the reference output)
SETTINGS = {
    "full": (dict(), "full"),
    "no_bias-exact": (dict(include_biases=False, algorithm="exact"), "no_bias"),
    "no_bias-fast": (dict(include_biases=False, algorithm="fast"), "no_bias"),
    "no_ffn": (dict(include_ffn=False), "no_ffn"),
    "no_head": (dict(include_head=False), "no_head"),
}


@pytest.fixture(scope="module")
def references() -> dict:
    return torch.load(REFERENCE_FILE, weights_only=True)


_MODELS: dict[str, torch.nn.Module] = {}


def reference_model(references: dict, name: str) -> torch.nn.Module:
    """The reference's tiny model, rebuilt from its config and state dict, in eval mode."""
    if name not in _MODELS:
        config_class, model_class = MODEL_CLASSES[name]
        model = model_class(config_class(**references[name]["config"]))
        result = model.load_state_dict(references[name]["state_dict"], strict=False)
        unexpected = [key for key in result.unexpected_keys if not key.endswith("position_ids")]
        missing = [key for key in result.missing_keys if not key.endswith("position_ids")]
        assert not unexpected and not missing, (missing, unexpected)
        _MODELS[name] = model.eval()
    return _MODELS[name]


def forward_args(case: dict) -> tuple:
    """additional_forward_args for ``model(input_ids, attention_mask, token_type_ids)``."""
    return (case["attention_mask"], case["token_type_ids"])


CASES = [(name, index) for name in MODEL_CLASSES for index in range(3)]


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name,case_index", CASES, ids=[f"{name}-case{index}" for name, index in CASES])
def test_matches_reference(references, name, case_index, setting):
    model = reference_model(references, name)
    case = references[name]["cases"][case_index]
    options, reference_key = SETTINGS[setting]

    out = DecompX(model, **options).decompose(case["input_ids"], additional_forward_args=forward_args(case))

    torch.testing.assert_close(out.logits, case["ref"]["logits"], **TOLERANCE)
    torch.testing.assert_close(out.attributions, case["ref"][reference_key], **TOLERANCE)


@pytest.mark.parametrize("name,case_index", CASES, ids=[f"{name}-case{index}" for name, index in CASES])
def test_attribute_matches_reference_for_every_target(references, name, case_index):
    model = reference_model(references, name)
    case = references[name]["cases"][case_index]
    explainer = DecompX(model)
    for target in range(case["ref"]["logits"].shape[1]):
        attributions = explainer.attribute(
            case["input_ids"], target=target, additional_forward_args=forward_args(case)
        )
        torch.testing.assert_close(attributions, case["ref"]["full"][..., target], **TOLERANCE)


@pytest.mark.parametrize("name,case_index", CASES, ids=[f"{name}-case{index}" for name, index in CASES])
def test_full_setting_sums_to_the_models_own_logits(references, name, case_index):
    """Completeness of the code's output against a forward pass of the model's own."""
    model = reference_model(references, name)
    case = references[name]["cases"][case_index]
    out = DecompX(model).decompose(case["input_ids"], additional_forward_args=forward_args(case))
    with torch.no_grad():
        own_logits = model(case["input_ids"], *forward_args(case)).logits
    torch.testing.assert_close(out.attributions.sum(1), own_logits, **TOLERANCE)


def _padded_cases(cases: list[dict], pad_token_id: int) -> tuple[torch.Tensor, ...]:
    """The cases as one right-padded batch: input_ids, attention_mask, token_type_ids (batch, seq)."""
    seq = max(case["input_ids"].shape[1] for case in cases)
    batch = len(cases)
    input_ids = torch.full((batch, seq), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(batch, seq, dtype=torch.long)
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    for row, case in enumerate(cases):
        length = case["input_ids"].shape[1]
        input_ids[row, :length] = case["input_ids"][0]
        attention_mask[row, :length] = case["attention_mask"][0]
        if case["token_type_ids"] is not None:
            token_type_ids[row, :length] = case["token_type_ids"][0]
    return input_ids, attention_mask, token_type_ids


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", list(MODEL_CLASSES))
def test_padded_batch_matches_reference(references, name, setting):
    model = reference_model(references, name)
    cases = references[name]["cases"]
    options, reference_key = SETTINGS[setting]
    input_ids, attention_mask, token_type_ids = _padded_cases(cases, model.config.pad_token_id)
    if cases[0]["token_type_ids"] is None:
        token_type_ids = None

    out = DecompX(model, **options).decompose(input_ids, additional_forward_args=(attention_mask, token_type_ids))

    for row, case in enumerate(cases):
        length = case["input_ids"].shape[1]
        torch.testing.assert_close(out.logits[row : row + 1], case["ref"]["logits"], **TOLERANCE)
        torch.testing.assert_close(out.attributions[row : row + 1, :length], case["ref"][reference_key], **TOLERANCE)
        padding = out.attributions[row, length:]
        assert torch.equal(padding, torch.zeros_like(padding)), f"padding of example {row} is not exactly 0"

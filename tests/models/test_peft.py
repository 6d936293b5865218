"""PEFT models: a LoRA ``PeftModel`` is explained as the merged model it stands for.

Every comparison is against an independent model: ``copy.deepcopy(peft_model).merge_and_unload()``
(a plain Hugging Face model whose weights PEFT merged itself), or a copy of the base model taken
before the adapters were added. The LoRA matrices (A and B), DoRA magnitudes and the
``modules_to_save`` copies are re-drawn to non-zero random values, so that an adapter term that is
dropped, scaled wrongly or added when it should not be changes the attributions (each case checks
that the adapter moves them by far more than the tolerance).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from torch import nn

peft = pytest.importorskip("peft", reason="peft is not installed (pip install peft, or the dev extra)")

from support.architectures import CAUSAL_LMS, COMMON, ENCODERS, VOCAB  # noqa: E402

from captum_decompx import DecompX  # noqa: E402
from captum_decompx.components import UnsupportedLinearMap  # noqa: E402
from captum_decompx.testing import randomize_parameters  # noqa: E402

pytestmark = [
    # Raised by PEFT itself when it wraps a model, and when it sets fan_in_fan_out for GPT-2's Conv1D.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
]

TOLERANCE = 1e-5
# An adapter must move the attributions by at least this (relative to their scale) for a case to count.
VISIBLE = 1e-2

BUILDERS = {
    "bert": ENCODERS["bert"],
    "roberta": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(**COMMON, pad_token_id=1)),
    "gpt2": ENCODERS["gpt2"],
    "llama": ENCODERS["llama"],
    "gpt2-lm": CAUSAL_LMS["gpt2-lm"],
    "llama-lm": CAUSAL_LMS["llama-lm"],
}


def base_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_parameters(BUILDERS[name](), seed)


def adapter_parameters(peft_model: nn.Module, seed: int) -> None:
    """Re-draw LoRA A/B (and biases, DoRA magnitudes) and the modules_to_save copies: as if trained."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" not in name and "modules_to_save" not in name:
                continue
            noise = torch.randn(parameter.shape, generator=generator)
            if "lora_magnitude_vector" in name:
                parameter.mul_(1.0 + 0.3 * noise)
            else:
                parameter.copy_((0.3 if parameter.dim() > 1 else 0.2) * noise)


def task_of(name: str) -> str:
    return "CAUSAL_LM" if name.endswith("-lm") else "SEQ_CLS"


def with_lora(model: nn.Module, name: str, targets, seed: int = 1, adapter: str = "default", **options) -> nn.Module:
    config = peft.LoraConfig(
        task_type=task_of(name), target_modules=targets, r=4, lora_alpha=8, lora_dropout=0.1, init_lora_weights=False, **options
    )
    if isinstance(model, peft.PeftModel):
        model.add_adapter(adapter, config)
    else:
        model = peft.get_peft_model(model, config, adapter_name=adapter)
    adapter_parameters(model, seed)
    return model.eval()


def batch(seed: int = 0, lengths=(9, 6, 4)):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(2, VOCAB, (length,), generator=generator)
        mask[row, :length] = 1
    return ids, mask


def forward_of(model: nn.Module, name: str):
    if name.endswith("-lm"):
        return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits[:, -1, :]
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def explain(model: nn.Module, name: str, include_biases: bool = True, lengths=(9, 6, 4)):
    """(attributions (batch, seq), logits (batch, classes)) of target 1; LMs: one example (no padding)."""
    ids, mask = batch(lengths=(7,) if name.endswith("-lm") else lengths)
    forward = forward_of(model, name)
    explainer = DecompX(forward, model=model, include_biases=include_biases)
    attributions = explainer.attribute(ids, target=1, additional_forward_args=(mask,))
    with torch.no_grad():
        logits = forward(ids, mask)
    return attributions, logits


def assert_close(actual, expected, what: str = ""):
    scale = max(1.0, float(expected.abs().max()))
    difference = float((actual - expected).abs().max())
    assert difference <= TOLERANCE * scale, f"{what}: max abs difference {difference:.3e} at scale {scale:.3f}"


def assert_visible(first, second, what: str):
    difference = float((first - second).abs().max())
    assert difference > VISIBLE * max(1.0, float(second.abs().max())), f"{what} changes the attributions by only {difference:.2e}"


def peft_state(model: nn.Module) -> dict:
    """Weights, adapter states (active, disabled, merged), wrappers, training flags and hooks."""
    layers = [module for module in model.modules() if isinstance(module, peft.tuners.tuners_utils.BaseTunerLayer)]
    wrappers = [module for module in model.modules() if isinstance(module, peft.utils.other.ModulesToSaveWrapper)]
    return {
        "state": {key: value.clone() for key, value in model.state_dict().items()},
        "layers": [(m.disable_adapters, list(m.active_adapters), list(m.merged_adapters)) for m in layers],
        "wrappers": [(m.disable_adapters, list(m.active_adapters)) for m in wrappers],
        "active": model.active_adapter if isinstance(model, peft.PeftModel) else None,
        "training": [module.training for module in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "types": [type(module) for module in model.modules()],
    }


def assert_state_unchanged(model: nn.Module, before: dict) -> None:
    after = peft_state(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    for field in ("layers", "wrappers", "active", "training", "hooks", "types"):
        assert after[field] == before[field], field


def target_class_logit(logits):
    return logits[:, 1]


CASES = {
    # name: (architecture, LoRA target modules)
    "bert-value-dense-query": ("bert", ["query", "value", "dense"]),
    "roberta-value-dense": ("roberta", ["value", "attention.output.dense", "intermediate.dense"]),
    "gpt2-fused-c_attn-conv1d": ("gpt2", ["c_attn", "c_proj", "c_fc"]),
    "llama-all-projections": ("llama", ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gpt2-lm": ("gpt2-lm", ["c_attn", "c_fc"]),
    "llama-lm-with-lm_head": ("llama-lm", ["v_proj", "down_proj", "lm_head"]),
}


@pytest.mark.parametrize("include_biases", [True, False], ids=["exact-with-biases", "fast-without-biases"])
@pytest.mark.parametrize("case", list(CASES))
def test_lora_model_is_explained_as_the_merged_model(case, include_biases):
    name, targets = CASES[case]
    plain = base_model(name)
    before_lora = copy.deepcopy(plain)
    model = with_lora(plain, name, targets)
    merged = copy.deepcopy(model).merge_and_unload()
    assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in merged.modules())
    state = peft_state(model)

    attributions, logits = explain(model, name, include_biases)
    expected, merged_logits = explain(merged, name, include_biases)
    assert_close(logits, merged_logits, "forward outputs")
    assert_close(attributions, expected, f"{case}: PEFT model against merged model")
    if include_biases:  # exact: the tokens share the logit of the PEFT model's own forward pass
        assert_close(attributions.sum(-1), target_class_logit(logits), "completeness")
    base_attributions, _ = explain(before_lora, name, include_biases)
    assert_visible(attributions, base_attributions, "the LoRA adapter")
    assert_state_unchanged(model, state)


def test_disabled_adapter_is_explained_as_the_base_model():
    plain = base_model("bert")
    before_lora = copy.deepcopy(plain)
    model = with_lora(plain, "bert", ["value", "dense"])
    expected, _ = explain(before_lora, "bert")
    with model.disable_adapter():
        state = peft_state(model)
        attributions, logits = explain(model, "bert")
        assert_state_unchanged(model, state)
    assert_close(attributions, expected, "disabled adapter against the base model (original classifier)")
    assert_close(attributions.sum(-1), logits[:, 1], "completeness")
    enabled, _ = explain(model, "bert")
    assert_visible(enabled, attributions, "enabling the adapter again")


def test_switched_adapter_is_explained_as_that_adapter_merged():
    model = with_lora(base_model("roberta"), "roberta", ["value"], seed=1)
    model = with_lora(model, "roberta", ["dense"], seed=2, adapter="other")
    model.set_adapter("other")
    merged_other = copy.deepcopy(model).merge_and_unload()
    state = peft_state(model)
    attributions, _ = explain(model, "roberta")
    assert_state_unchanged(model, state)
    assert_close(attributions, explain(merged_other, "roberta")[0], "set_adapter('other') against its merged model")
    model.set_adapter("default")
    first, _ = explain(model, "roberta")
    assert_visible(first, attributions, "switching adapters")
    assert_close(first, explain(copy.deepcopy(model).merge_and_unload(), "roberta")[0], "back to 'default'")


def test_several_active_adapters_add_up():
    model = with_lora(base_model("llama-lm"), "llama-lm", ["v_proj", "up_proj"], seed=1)
    model = with_lora(model, "llama-lm", ["v_proj", "o_proj"], seed=2, adapter="other")
    model.base_model.set_adapter(["default", "other"])
    merged_both = copy.deepcopy(model).merge_and_unload()
    attributions, logits = explain(model, "llama-lm")
    assert_close(attributions, explain(merged_both, "llama-lm")[0], "two active adapters against both merged")
    model.base_model.set_adapter("default")
    assert_visible(explain(model, "llama-lm")[0], attributions, "the second adapter")


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_merge_adapter_in_place_is_not_added_twice(name):
    targets = ["value", "dense"] if name == "bert" else ["c_attn", "c_fc"]
    model = with_lora(base_model(name), name, targets)
    merged = copy.deepcopy(model).merge_and_unload()
    model.merge_adapter()
    state = peft_state(model)
    for include_biases in (True, False):
        attributions, _ = explain(model, name, include_biases)
        assert_close(attributions, explain(merged, name, include_biases)[0], f"merge_adapter(), biases={include_biases}")
    assert_state_unchanged(model, state)


VARIANTS = {
    "bert-dora": ("bert", ["value", "intermediate.dense", "pooler.dense"], dict(use_dora=True)),
    "gpt2-dora-conv1d": ("gpt2", ["c_attn", "c_fc"], dict(use_dora=True)),
    "bert-rslora-lora_bias": ("bert", ["value", "intermediate.dense", "pooler.dense"], dict(use_rslora=True, lora_bias=True)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lora_variants_equal_the_merged_model(variant):
    name, targets, options = VARIANTS[variant]
    model = with_lora(base_model(name), name, targets, **options)
    merged = copy.deepcopy(model).merge_and_unload()
    for include_biases in (True, False):
        attributions, logits = explain(model, name, include_biases)
        assert_close(attributions, explain(merged, name, include_biases)[0], f"{variant}, biases={include_biases}")
        if include_biases:
            assert_close(attributions.sum(-1), logits[:, 1], "completeness")
    with model.disable_adapter():
        assert_visible(attributions, explain(model, name, include_biases=False)[0], f"the {variant} adapter")


def test_prompt_learning_is_refused_with_its_name():
    config = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3)
    model = peft.get_peft_model(base_model("bert"), config).eval()
    with pytest.raises(ValueError, match=r"PROMPT_TUNING.*virtual tokens.*supports LoRA"):
        DecompX(forward_of(model, "bert"), model=model)


def test_other_peft_methods_are_refused_with_their_name():
    config = peft.IA3Config(task_type="SEQ_CLS", target_modules=["value", "output.dense"], feedforward_modules=["output.dense"])
    model = peft.get_peft_model(base_model("bert"), config).eval()
    with pytest.raises(ValueError, match=r"IA3.*supports LoRA.*merge_and_unload"):
        DecompX(forward_of(model, "bert"), model=model)
    # The same layers injected into a plain model (no PeftModel around it) are refused where they are met.
    plain = peft.inject_adapter_in_model(peft.IA3Config(target_modules=["value"], feedforward_modules=[]), base_model("bert"))
    explainer = DecompX(forward_of(plain, "bert"), model=plain.eval())
    ids, mask = batch()
    with pytest.raises(UnsupportedLinearMap, match=r"attention\.self\.value.*ia3.*decomposes LoRA layers"):
        explainer.attribute(ids, target=0, additional_forward_args=(mask,))


def test_mixed_adapter_batches_are_refused():
    model = with_lora(base_model("llama"), "llama", ["v_proj"], seed=1)
    model = with_lora(model, "llama", ["v_proj"], seed=2, adapter="other")
    ids, mask = batch()
    state = peft_state(model)

    def mixed(input_ids, attention_mask):
        names = ["default", "other", "__base__"][: input_ids.shape[0]]
        return model(input_ids=input_ids, attention_mask=attention_mask, adapter_names=names).logits

    with pytest.raises(UnsupportedLinearMap, match=r"adapter_names.*set_adapter"):
        DecompX(mixed, model=model).attribute(ids, target=0, additional_forward_args=(mask,))
    assert_state_unchanged(model, state)


def test_disabled_merged_layer_reads_as_its_base_map():
    """A merged layer whose adapters are disabled runs its base map (its forward unmerges first)."""
    from captum_decompx.components import lora_affine

    model = with_lora(base_model("gpt2"), "gpt2", ["c_attn"], lora_bias=True)
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    base_weight, base_bias = layer.base_layer.weight.detach().T.clone(), layer.base_layer.bias.detach().clone()
    enabled = lora_affine(layer)
    model.merge_adapter()
    layer.enable_adapters(False)
    disabled = lora_affine(layer)
    assert_close(disabled.weight, base_weight, "weight")
    assert_close(disabled.bias, base_bias, "bias")
    assert_visible(enabled.weight, base_weight, "the LoRA term")


# Per-position heads: token classification and question answering (PEFT wraps the head in modules_to_save).
PER_POSITION_CASES = {
    # name: (builder, PEFT task type, LoRA targets, the head PEFT saves, targets (position, label or start/end))
    "bert-token-classification": (
        lambda: tf.BertForTokenClassification(tf.BertConfig(**COMMON)),
        "TOKEN_CLS",
        ["query", "value", "dense"],
        "classifier",
        [(3, 2), (1, 0)],
    ),
    "bert-question-answering": (
        lambda: tf.BertForQuestionAnswering(tf.BertConfig(**{**COMMON, "num_labels": 2})),
        "QUESTION_ANS",
        ["value", "dense"],
        "qa_outputs",
        [(3, 0), (1, 1)],
    ),
}


def per_position_output(model: nn.Module, ids, mask) -> torch.Tensor:
    """(batch, seq, labels): token-classification logits, or the start and end logits stacked."""
    output = model(input_ids=ids, attention_mask=mask)
    if hasattr(output, "start_logits"):
        return torch.stack([output.start_logits, output.end_logits], dim=-1)
    return output.logits


def explain_per_position(model: nn.Module, target, include_biases: bool = True):
    """(attributions (batch, seq), explained values (batch,)) of ``target=(position, label)``, exact algorithm."""
    ids, mask = batch()
    explainer = DecompX(
        lambda i, m: per_position_output(model, i, m), model=model, include_biases=include_biases, algorithm="exact"
    )
    attributions = explainer.attribute(ids, target=target, additional_forward_args=(mask,))
    with torch.no_grad():
        values = per_position_output(model, ids, mask)[:, target[0], target[1]]
    return attributions, values


@pytest.mark.parametrize("case", list(PER_POSITION_CASES))
def test_lora_token_classification_and_qa_are_explained_as_the_merged_model(case):
    build, task_type, targets, head, positions = PER_POSITION_CASES[case]
    torch.manual_seed(0)
    plain = randomize_parameters(build(), 0)
    before_lora = copy.deepcopy(plain)
    config = peft.LoraConfig(task_type=task_type, target_modules=targets, r=4, lora_alpha=8, init_lora_weights=False)
    model = peft.get_peft_model(plain, config)
    adapter_parameters(model, seed=1)
    model.eval()
    saved = [name for name, m in model.named_modules() if isinstance(m, peft.utils.other.ModulesToSaveWrapper)]
    assert saved and all(name.endswith(head) for name in saved), saved  # PEFT put the head in modules_to_save
    merged = copy.deepcopy(model).merge_and_unload()
    assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in merged.modules())
    state = peft_state(model)
    for target in positions:
        for include_biases in (True, False):
            attributions, values = explain_per_position(model, target, include_biases)
            expected, merged_values = explain_per_position(merged, target, include_biases)
            assert_close(values, merged_values, f"{case} {target}: forward outputs")
            assert_close(attributions, expected, f"{case} {target} biases={include_biases}: PEFT against merged")
            if include_biases:
                assert_close(attributions.sum(-1), values, f"{case} {target}: completeness")
        base_attributions, _ = explain_per_position(before_lora, target, include_biases=False)
        assert_visible(attributions, base_attributions, f"{case} {target}: the LoRA adapter and saved head")
    assert_state_unchanged(model, state)

"""LLMDecompX explains a whole target from one pass: equal to the step-by-step results.

The reference is re-created here from plain ``DecompX.attribute`` calls, one per target token on
the growing context, and the model's own logits; the one-pass results must equal it to float
precision on every share (prompt tokens, earlier generated tokens, skipped tokens, bias).
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from support.classifiers import reinit_parameters
from support.paths import BENCHMARKS
from support.word_level import LLM_WORDS as WORDS
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn

from captum_decompx import DecompX, DecompXMemoryError, LLMDecompX
from captum_decompx.core import decomposition, rows
from captum_decompx.llm import LLMDecompX as LLMDecompXClass

PROMPT = "the cat sat on a big"
TARGET = "mat and the dog ran the"  # "the" twice: one class explained at two positions


@pytest.fixture(scope="module")
def tokenizer():
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>")


def llama_with_biases(vocab_size: int = len(WORDS)) -> nn.Module:
    config = tf.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=40,
        max_position_embeddings=64,
        attention_bias=True,
        mlp_bias=True,
    )
    torch.manual_seed(0)
    return reinit_parameters(tf.LlamaForCausalLM(config), seed=3).double().eval()


def gpt2_with_biases() -> nn.Module:
    config = tf.GPT2Config(vocab_size=len(WORDS), n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1)
    torch.manual_seed(1)
    return reinit_parameters(tf.GPT2LMHeadModel(config), seed=4).double().eval()


def llama_with_head_bias(vocab_size: int = len(WORDS)) -> nn.Module:
    """A head with a bias: spread by the rule, its weights read every class (the full-vocabulary head)."""
    model = llama_with_biases(vocab_size)
    head = nn.Linear(32, vocab_size, bias=True).double()
    with torch.no_grad():
        head.weight.copy_(0.25 * torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(5)))
        head.bias.copy_(0.3 * torch.randn(head.bias.shape, generator=torch.Generator().manual_seed(6)))
    model.lm_head = head
    return model


MODELS = {"llama": llama_with_biases, "gpt2": gpt2_with_biases, "llama-head-bias": llama_with_head_bias}
OPTIONS = {
    "exact": {},
    "exact-no-bias": {"include_biases": False, "algorithm": "exact"},
    "fast": {"include_biases": False},
    "exact-norm-rule": {"bias_decomposition": "norm"},
}


def ids_of(tokenizer, prompt, target):
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    return prompt_ids, target_ids


def step_by_step(model, prompt_ids, target_ids, **options):
    """Per target token: DecompX.attribute on the context before it, the convergence delta and the
    model's own logit and probability."""
    explainer = DecompX(lambda ids: model(input_ids=ids).logits[:, -1, :], model=model, **options)
    steps = []
    for step, token in enumerate(target_ids.tolist()):
        context = torch.cat([prompt_ids, target_ids[:step].view(1, -1)], dim=1)
        shares, delta = explainer.attribute(context, target=token, return_convergence_delta=True)
        with torch.no_grad():
            logits = model(input_ids=context).logits[0, -1]
        steps.append((shares[0], -delta[0], logits[token], torch.softmax(logits, -1)[token]))
    return steps


def explain_counting_steps(model, tokenizer, prompt, target, **options):
    """LLMDecompX's result and how many step-by-step runs it made."""
    explainer = LLMDecompX(model, tokenizer, **options)
    calls = []
    original = explainer._step_by_step
    explainer._step_by_step = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    return explainer.attribute(prompt, target=target), len(calls)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("make_model", MODELS.values(), ids=MODELS.keys())
def test_one_pass_equals_the_step_by_step_results(make_model, options, tokenizer):
    model = make_model()
    result, step_runs = explain_counting_steps(model, tokenizer, PROMPT, TARGET, **options)
    assert step_runs == 0, "the one pass was not taken"
    prompt_ids, target_ids = ids_of(tokenizer, PROMPT, TARGET)
    n_prompt = prompt_ids.shape[1]
    expected = step_by_step(model, prompt_ids, target_ids, **options)
    assert result.token_attr.shape == (len(expected), n_prompt)
    for step, (shares, bias, logit, prob) in enumerate(expected):
        shares = shares.float()
        torch.testing.assert_close(result.token_attr[step], shares[:n_prompt], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.generated_attr[step, :step], shares[n_prompt:], rtol=1e-5, atol=1e-6)
        assert float(result.generated_attr[step, step:].abs().max()) == 0.0
        torch.testing.assert_close(result.logits[step], logit.float(), rtol=1e-6, atol=1e-6)  # the model's own
        torch.testing.assert_close(result.output_probs[step], prob.float(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(result.bias[step], bias.float(), rtol=1e-5, atol=1e-6)
    total = result.token_attr.sum(1) + result.skipped_attr + result.generated_attr.sum(1) + result.bias
    torch.testing.assert_close(total, result.logits, rtol=1e-5, atol=1e-5)
    if options.get("include_biases", True):  # every bias spread over the tokens: nothing left over
        assert float(result.bias.abs().max()) < 1e-5
    else:  # the biases carry a real share, which must be the step's own
        assert float(result.bias.abs().max()) > 1e-2
    assert float(result.generated_attr[1:].abs().max()) > 1e-2  # earlier generated tokens matter


def test_the_per_step_path_stays_available_and_agrees(tokenizer):
    model = llama_with_biases()
    one = LLMDecompX(model, tokenizer).attribute(PROMPT, target=TARGET)
    steps, step_runs = explain_counting_steps(model, tokenizer, PROMPT, TARGET, one_pass=False)
    assert step_runs == 1
    for name in ("token_attr", "generated_attr", "skipped_attr", "bias", "logits", "output_probs"):
        torch.testing.assert_close(getattr(one, name), getattr(steps, name), rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="one_pass must be True or False"):
        LLMDecompX(model, tokenizer, one_pass="yes")


def test_skip_tokens_and_a_single_target_token_in_one_pass(tokenizer):
    model = llama_with_biases()
    one = LLMDecompX(model, tokenizer).attribute(PROMPT, target="mat", skip_tokens=["the"])
    steps = LLMDecompX(model, tokenizer, one_pass=False).attribute(PROMPT, target="mat", skip_tokens=["the"])
    assert one.token_attr.shape == (1, 5)
    torch.testing.assert_close(one.token_attr, steps.token_attr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.skipped_attr, steps.skipped_attr, rtol=1e-5, atol=1e-6)
    assert float(one.skipped_attr.abs().max()) > 1e-3


def test_rows_are_chunked_under_max_memory_with_equal_results(tokenizer, monkeypatch):
    model = llama_with_biases()
    prompt_ids, target_ids = ids_of(tokenizer, PROMPT, TARGET)
    seq = prompt_ids.shape[1] + target_ids.numel() - 1
    full = decomposition.exact_memory_per_example(seq, seq, 32, 40, 8, seq)
    small = decomposition.exact_memory_per_example(seq, seq, 32, 40, 8, 2)
    plans = []
    original = rows.plan_rows
    monkeypatch.setattr(rows, "plan_rows", lambda *a, **k: plans.append(original(*a, **k)) or plans[-1])
    chunked = LLMDecompX(model, tokenizer, max_memory=small).attribute(PROMPT, target=TARGET)
    assert plans and all(plan.rows_per_chunk < seq for plan, _ in plans), "the rows were not chunked"
    whole = LLMDecompX(model, tokenizer, max_memory=4 * full).attribute(PROMPT, target=TARGET)
    torch.testing.assert_close(chunked.token_attr, whole.token_attr, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(chunked.generated_attr, whole.generated_attr, rtol=1e-6, atol=1e-8)


def test_the_fast_paths_backward_passes_run_in_groups_with_equal_results(tokenizer, monkeypatch):
    model = llama_with_biases()
    whole = LLMDecompX(model, tokenizer, include_biases=False).attribute(PROMPT, target=TARGET)
    monkeypatch.setattr(decomposition, "FAST_GRADIENT_BYTES", 1)  # one target row per backward pass
    grouped = LLMDecompX(model, tokenizer, include_biases=False).attribute(PROMPT, target=TARGET)
    torch.testing.assert_close(grouped.token_attr, whole.token_attr, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grouped.generated_attr, whole.generated_attr, rtol=1e-6, atol=1e-8)


def test_the_full_vocabulary_head_is_chunked_over_rows(tokenizer):
    """A head bias spread by the rule needs every class of each row; rows go through the head in chunks."""
    vocab_size = 2000  # a head output much wider than the hidden states
    model = llama_with_head_bias(vocab_size)
    prompt_ids, target_ids = ids_of(tokenizer, PROMPT, TARGET)
    options = decomposition.Options()
    seq = prompt_ids.shape[1] + target_ids.numel() - 1
    explainer = DecompX(lambda ids: model(input_ids=ids).logits[:, -1, :], model=model)
    context = torch.cat([prompt_ids, target_ids[:-1].view(1, -1)], dim=1)
    captured = explainer._capture_forward(context, None).captured
    positions = torch.arange(prompt_ids.shape[1] - 1, seq)
    kept = target_ids.numel() * seq * 32 * 8  # the last layer's rows
    per_row = 2 * seq * vocab_size * 8  # one row through the head, every class
    budget = kept + 2 * per_row + 100
    plan, head_rows = rows.plan_rows(
        model, explainer.adapter, options, batch=1, seq=seq, rows=target_ids.numel(), dtype=torch.float64, max_memory=budget
    )
    one_chunk = rows.decompose_rows(
        captured, model, explainer.adapter, options, positions=positions, classes=target_ids, dtype=torch.float64
    )
    chunks = rows.decompose_rows(
        captured,
        model,
        explainer.adapter,
        options,
        positions=positions,
        classes=target_ids,
        dtype=torch.float64,
        max_memory=budget,
    )
    assert head_rows == 2
    torch.testing.assert_close(chunks.contributions, one_chunk.contributions)


def test_a_decomposition_that_cannot_fit_is_refused_before_any_work(tokenizer):
    model = llama_with_biases()
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        explainer = LLMDecompX(model, tokenizer, max_memory=4096)
        with pytest.raises(DecompXMemoryError, match="max_memory"):
            explainer.attribute(PROMPT, target=TARGET)
    finally:
        handle.remove()
    assert forwards == []
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in model.modules())


def test_a_soft_capped_or_nonlinear_head_is_explained_step_by_step(tokenizer, monkeypatch):
    model = llama_with_biases()
    explainer = LLMDecompX(model, tokenizer)
    assert explainer._one_pass_applies()
    monkeypatch.setattr(LLMDecompXClass, "_one_pass", lambda self, *args: None)  # e.g. a non-causal model
    result, step_runs = explain_counting_steps(model, tokenizer, PROMPT, "mat and", one_pass=True)
    assert step_runs == 1 and result.token_attr.shape == (2, 6)


# --------------------------------------------------------------------------------------------
# The benchmark (benchmarks/llm_one_pass.py)


def _benchmark():
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    import llm_one_pass

    return llm_one_pass


def test_the_benchmark_checks_the_issues_targets():
    bench = _benchmark()
    assert bench.RATIO_TARGETS == (("exact", 8, 2.0), ("exact", 32, 3.0), ("fast", 32, 25.0))
    medians = {("exact", 1): 1.0, ("exact", 8): 2.5, ("exact", 32): 2.9, ("fast", 1): 0.1, ("fast", 32): 2.0}
    rows = {(m, t): (ratio, limit) for m, t, ratio, limit in bench.ratio_rows(medians)}
    assert rows[("exact", 8)] == (2.5, 2.0) and rows[("exact", 32)] == (2.9, 3.0)
    assert abs(rows[("fast", 32)][0] - 20.0) < 1e-9


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_and_writes_its_report(tmp_path):
    bench = _benchmark()
    out = tmp_path / "llm_one_pass.md"
    assert bench.main(["--quick", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "medians of interleaved calls" in text and "machine was shared" in text
    for label in bench.METHOD_LABELS.values():
        assert f"| {label} | " in text
    assert "exact, T = 32" not in text  # only measured targets are judged
    assert (tmp_path / "llm_one_pass.png").stat().st_size > 1000

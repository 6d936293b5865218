"""LLMDecompX: next-token attributions for causal LMs, as Captum's LLMAttributionResult."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from captum.attr import LLMAttributionResult
from support.word_level import LLM_WORDS, tiny_gpt2, tiny_llama

from captum_decompx import DecompX, LLMDecompX

WORDS = LLM_WORDS


@pytest.fixture(scope="module")
def tokenizer(llm_tokenizer):
    return llm_tokenizer


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_token_attr_rows_are_exact_logit_decompositions(make_model, tokenizer):
    model = make_model()
    result = LLMDecompX(model, tokenizer).attribute("the cat sat on", target="the mat")
    assert isinstance(result, LLMAttributionResult)
    assert result.input_tokens == ["the", "cat", "sat", "on"]
    assert result.output_tokens == ["the", "mat"]
    assert result.token_attr.shape == (2, 4)
    assert torch.allclose(result.seq_attr, result.token_attr.sum(0))

    prompt = tokenizer("the cat sat on", return_tensors="pt")["input_ids"]
    continuation = tokenizer("the mat", add_special_tokens=False, return_tensors="pt")["input_ids"]
    decompx = DecompX(lambda ids: model(input_ids=ids).logits[:, -1, :], model=model)
    for step in range(2):
        context = torch.cat([prompt, continuation[:, :step]], dim=1)
        with torch.no_grad():
            logits = model(input_ids=context).logits[0, -1]
        token = int(continuation[0, step])
        full = decompx.attribute(context, target=token)[0]
        # Every token before the target (prompt and generated prefix) shares the logit exactly.
        assert torch.allclose(full.sum(), logits[token], atol=1e-5)
        assert torch.allclose(result.token_attr[step], full[:4], atol=1e-6)
        assert torch.allclose(result.output_probs[step], torch.softmax(logits, -1)[token], atol=1e-6)


def test_fast_path_matches_exact_without_biases(tokenizer):
    model = tiny_llama()
    fast = LLMDecompX(model, tokenizer, include_biases=False).attribute("a big dog ran", target="fast and")
    exact = LLMDecompX(model, tokenizer, include_biases=False, algorithm="exact").attribute("a big dog ran", target="fast and")
    assert torch.allclose(fast.token_attr, exact.token_attr, atol=1e-5)


def test_generated_continuation_is_explained_token_by_token(tokenizer):
    model = tiny_gpt2()
    result = LLMDecompX(model, tokenizer).attribute("the cat", gen_args={"max_new_tokens": 3})
    with torch.no_grad():
        generated = model.generate(tokenizer("the cat", return_tensors="pt")["input_ids"], max_new_tokens=3,
                                   do_sample=False, pad_token_id=0)
    assert result.output_tokens == tokenizer.convert_ids_to_tokens(generated[0, 2:].tolist())
    assert result.token_attr.shape == (3, 2)


def test_plots_render(tokenizer, tmp_path):
    result = LLMDecompX(tiny_llama(), tokenizer).attribute("the cat sat on", target="the mat")
    figure, _ = result.plot_token_attr(show=False)
    figure.savefig(tmp_path / "token.png")
    figure, _ = result.plot_seq_attr(show=False)
    figure.savefig(tmp_path / "seq.png")
    assert (tmp_path / "token.png").stat().st_size > 1000 and (tmp_path / "seq.png").stat().st_size > 1000


def test_empty_prompt_and_target_are_refused(tokenizer):
    explainer = LLMDecompX(tiny_llama(), tokenizer)
    with pytest.raises(ValueError, match="prompt is empty"):
        explainer.attribute("", target="the")
    with pytest.raises(ValueError, match="target is empty"):
        explainer.attribute("the cat", target=[])


# --------------------------------------------------------------------------------------------
# Captum's LLM inputs, skip_tokens, and the earlier generated tokens' shares


def step_decompositions(model, prompt_ids, continuation_ids):
    """Per step: the decomposition of the next-token logit over the whole context (a plain forward
    on the last position, DecompX.decompose), and the logit itself from the model."""
    explainer = DecompX(lambda ids: model(input_ids=ids).logits[:, -1, :], model=model)
    rows = []
    for step, token in enumerate(continuation_ids.tolist()):
        context = torch.cat([prompt_ids, continuation_ids[:step].view(1, -1)], dim=1)
        out = explainer.decompose(context)
        with torch.no_grad():
            logit = model(input_ids=context).logits[0, -1, token]
        rows.append((out.attributions[0, :, token], out.bias[0, token], logit))
    return rows


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_every_row_adds_up_to_its_logit_with_the_generated_tokens_shares(make_model, tokenizer):
    model = make_model()
    result = LLMDecompX(model, tokenizer).attribute("the cat sat on", target="the mat and")
    prompt = tokenizer("the cat sat on", return_tensors="pt")["input_ids"]
    continuation = tokenizer("the mat and", add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    expected = step_decompositions(model, prompt, continuation)
    assert result.generated_attr.shape == (3, 3)
    for step, (shares, bias, logit) in enumerate(expected):
        torch.testing.assert_close(result.token_attr[step], shares[:4], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.generated_attr[step, :step], shares[4:], rtol=1e-5, atol=1e-6)
        assert float(result.generated_attr[step, step:].abs().max()) == 0.0
        torch.testing.assert_close(result.logits[step], logit, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.bias[step], bias, rtol=0, atol=1e-5)
    total = result.token_attr.sum(1) + result.skipped_attr + result.generated_attr.sum(1) + result.bias
    torch.testing.assert_close(total, result.logits, rtol=1e-5, atol=1e-5)
    assert float(result.generated_attr[1:].abs().max()) > 1e-2  # the earlier tokens matter: a real check


def test_skip_tokens_and_text_token_input_leave_tokens_out_of_the_features(tokenizer):
    from captum.attr import TextTokenInput

    model = tiny_llama()
    explainer = LLMDecompX(model, tokenizer)
    everything = explainer.attribute("the cat sat on", target="the mat")
    by_argument = explainer.attribute("the cat sat on", target="the mat", skip_tokens=["the"])
    by_input = explainer.attribute(TextTokenInput("the cat sat on", tokenizer, skip_tokens=["the"]), target="the mat")
    for result in (by_argument, by_input):
        assert result.input_tokens == ["cat", "sat", "on"]
        torch.testing.assert_close(result.token_attr, everything.token_attr[:, 1:])
        torch.testing.assert_close(result.skipped_attr, everything.token_attr[:, 0])
        total = result.token_attr.sum(1) + result.skipped_attr + result.generated_attr.sum(1) + result.bias
        torch.testing.assert_close(total, result.logits, rtol=1e-5, atol=1e-5)
    by_id = explainer.attribute("the cat sat on", target="the mat", skip_tokens=[WORDS.index("the")])
    torch.testing.assert_close(by_id.token_attr, by_argument.token_attr)


def test_a_text_template_input_sums_each_values_tokens(tokenizer):
    from captum.attr import TextTemplateInput

    model = tiny_gpt2()
    explainer = LLMDecompX(model, tokenizer)
    tokens = explainer.attribute("the big cat sat on a", target="mat")
    template = explainer.attribute(TextTemplateInput("the {} sat on {}", values=["big cat", "a"]), target="mat")
    assert template.input_tokens == ["big cat", "a"]
    row = tokens.token_attr[0]  # the, big, cat, sat, on, a
    torch.testing.assert_close(template.token_attr[0], torch.stack([row[1] + row[2], row[5]]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(template.skipped_attr[0], row[0] + row[3] + row[4], rtol=1e-5, atol=1e-6)
    grouped = explainer.attribute(TextTemplateInput("the {} sat on {}", values=["big cat", "a"], mask=[0, 0]), target="mat")
    torch.testing.assert_close(grouped.token_attr[0], template.token_attr[0].sum().view(1), rtol=1e-5, atol=1e-6)
    figure, _ = template.plot_token_attr(show=False)
    assert figure is not None


def test_a_template_that_changes_its_values_is_refused(tokenizer):
    from captum.attr import TextTemplateInput

    with pytest.raises(ValueError, match="changes its values"):
        LLMDecompX(tiny_gpt2(), tokenizer).attribute(TextTemplateInput(lambda a: f"the {a.upper()}", values=["cat"]), target="sat")

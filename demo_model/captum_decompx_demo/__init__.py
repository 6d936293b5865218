"""The demo classifier of captum-decompx, as an installable package.

``MODEL_PATH`` is the folder of a ``BertForSequenceClassification`` (MiniLM-L6 fine-tuned on SST-2,
labels ``negative``/``positive``) that ``from_pretrained`` reads; ``captum-decompx explain`` and
``captum_decompx.demo.load_demo_model`` use it when this package is installed.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

__version__ = version("captum-decompx-demo")

#: The model folder (config.json, model.safetensors, the tokenizer files).
MODEL_PATH: Path = Path(__file__).resolve().parent / "minilm-sst2"

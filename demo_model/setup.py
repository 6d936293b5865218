"""Build hook of captum-decompx-demo: the model files come from the repository's models/minilm-sst2.

The weights are kept once in git, in ``models/minilm-sst2/`` at the repository root. Building from
this folder (``python -m build demo_model``) copies them into ``captum_decompx_demo/minilm-sst2/``
(ignored by git) before setuptools collects the package data, so that the sdist holds them and the
wheel built from that sdist (where the repository is out of reach) finds them already in place.
A symbolic link would not do: sdists do not keep links the same way on every platform.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "models" / "minilm-sst2"
TARGET = HERE / "captum_decompx_demo" / "minilm-sst2"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_info.json", "README.md")

if (SOURCE / "config.json").is_file():
    TARGET.mkdir(exist_ok=True)
    for name in FILES:
        shutil.copy2(SOURCE / name, TARGET / name)
missing = [name for name in FILES if not (TARGET / name).is_file()]
if missing:
    raise SystemExit(
        f"captum-decompx-demo: the model files {', '.join(missing)} are neither in {TARGET} nor in {SOURCE}. "
        "Build this project from a clone of the captum-decompx repository (python -m build demo_model)."
    )

setup()

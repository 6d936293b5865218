"""Find and load the demo sentiment classifier and the data sets shipped with the repository.

The demo model (MiniLM-L6 fine-tuned on SST-2, labels ``negative``/``positive``) and the SST-2
files live in the repository, next to the package, not inside it:

- ``models/minilm-sst2/``: the classifier and its tokenizer (see its README);
- ``data/sst2/dev.tsv``, ``data/sst2/train.tsv``: SST-2 (GLUE), ``label<TAB>text`` with a header.

With the editable install (``pip install -e .``) the repository root is the folder above the
package. The environment variable ``CAPTUM_DECOMPX_DEMO_MODEL`` points to another model folder.
Nothing here downloads anything: local folders load with ``local_files_only=True``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .adapters import supported_model_types

#: Environment variable naming the folder of the demo model (overrides the repository's).
DEMO_MODEL_ENV = "CAPTUM_DECOMPX_DEMO_MODEL"
#: The demo model's folder, relative to the repository root.
DEMO_MODEL_RELATIVE_PATH = Path("models") / "minilm-sst2"
#: Short names of the data sets shipped with the repository, relative to its root.
DATASETS: dict[str, Path] = {
    "sst2-dev": Path("data") / "sst2" / "dev.tsv",
    "sst2-train": Path("data") / "sst2" / "train.tsv",
}


class DemoError(Exception):
    """A problem the user can act on (a missing file, an unusable model); the message says how."""


class DemoModelNotFoundError(DemoError, FileNotFoundError):
    """Neither ``$CAPTUM_DECOMPX_DEMO_MODEL`` nor the repository's ``models/minilm-sst2`` exists."""


class ModelLoadError(DemoError, OSError):
    """A model path or hub id that cannot be read."""


class UnsupportedModelError(DemoError, ValueError):
    """A model whose ``config.model_type`` has no DecompX adapter."""


def repository_root() -> Path:
    """The folder that holds the package folder ``captum_decompx/`` (the repository, when installed editable)."""
    return Path(__file__).resolve().parents[1]


def demo_model_path() -> Path:
    """The folder of the demo classifier.

    ``$CAPTUM_DECOMPX_DEMO_MODEL`` when set, otherwise ``models/minilm-sst2`` in the repository.

    Raises:
        DemoModelNotFoundError: the folder (or its ``config.json``) does not exist.
    """
    from_env = os.environ.get(DEMO_MODEL_ENV)
    if from_env:
        path = Path(from_env).expanduser()
        if not (path / "config.json").is_file():
            raise DemoModelNotFoundError(
                f"{DEMO_MODEL_ENV}={from_env} does not name a model folder (no config.json there). "
                f"Point it to a folder saved with save_pretrained, or unset it to use the repository's "
                f"{DEMO_MODEL_RELATIVE_PATH}."
            )
        return path
    path = repository_root() / DEMO_MODEL_RELATIVE_PATH
    if not (path / "config.json").is_file():
        raise DemoModelNotFoundError(
            f"The demo model was not found at {path}. It ships with the repository: install the "
            "package from a clone of the repository with `pip install -e .`, or rebuild it with "
            f"`python scripts/train_demo_model.py`, or set {DEMO_MODEL_ENV} to a model folder, or "
            "pass --model PATH_OR_HUB_ID."
        )
    return path


def dataset_path(name_or_path: Union[str, Path]) -> Path:
    """Resolve a data set short name (``"sst2-dev"``, ``"sst2-train"``) or a file path.

    Raises:
        DemoError: the file does not exist.
    """
    key = str(name_or_path)
    path = repository_root() / DATASETS[key] if key in DATASETS else Path(key).expanduser()
    if not path.is_file():
        known = ", ".join(DATASETS)
        raise DemoError(f"No data file at {path}. Pass one of the shipped data sets ({known}) or a TSV file path.")
    return path


def read_labelled_tsv(path: Union[str, Path], limit: Optional[int] = None) -> tuple[list[str], list[int]]:
    """Read an SST-2-style file: a header row, then ``label<TAB>text`` rows.

    Args:
        path: the TSV file.
        limit: keep the first ``limit`` examples (all when None).

    Returns:
        The texts and their integer labels, in file order.
    """
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)
        for row in reader:
            if len(row) < 2:
                continue
            if limit is not None and len(texts) >= limit:
                break
            labels.append(int(row[0]))
            texts.append(row[1])
    return texts, labels


@dataclass
class LoadedClassifier:
    """A sequence classifier ready to explain.

    Attributes:
        model: the ``*ForSequenceClassification`` model, float32, in eval mode.
        tokenizer: its tokenizer.
        source: where it was loaded from (a folder path or a hub id).
    """

    model: nn.Module
    tokenizer: object
    source: str

    @property
    def labels(self) -> list[str]:
        """The class names, by class index (``config.id2label``)."""
        id2label = getattr(self.model.config, "id2label", None) or {}
        count = int(getattr(self.model.config, "num_labels", len(id2label)))
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def load_classifier(name_or_path: Union[None, str, Path] = None) -> LoadedClassifier:
    """Load a sequence classifier and its tokenizer for DecompX, checking it is supported first.

    Args:
        name_or_path: a local folder or a hub id (used only from the local cache when
            ``HF_HUB_OFFLINE=1``); None loads the demo model.

    Raises:
        DemoModelNotFoundError: ``name_or_path`` is None and the demo model is missing.
        ModelLoadError: the folder or hub id cannot be read.
        UnsupportedModelError: DecompX has no adapter for the model's ``model_type``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = demo_model_path() if name_or_path is None else Path(str(name_or_path)).expanduser()
    source = str(path) if name_or_path is None else str(name_or_path)
    local = path.exists()
    if not local and _looks_like_a_path(source):
        raise ModelLoadError(f"Cannot read the model at {source}: no such folder.")
    if local and not path.is_dir():
        raise ModelLoadError(f"Cannot read the model at {source}: it is a file, not a model folder.")
    location = str(path) if local else source
    options = {"local_files_only": True} if local else {}
    try:
        config = AutoConfig.from_pretrained(location, **options)
    except Exception as error:  # transformers raises OSError, ValueError, JSON errors, ...
        raise ModelLoadError(f"Cannot read the model at {source}: {_first_line(error)}") from error
    model_type = getattr(config, "model_type", None)
    if model_type not in supported_model_types():
        raise UnsupportedModelError(
            f"DecompX does not support the architecture of {source} (model_type {model_type!r}). "
            f"Supported model_types: {', '.join(supported_model_types())}."
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(location, dtype=torch.float32, **options)
        tokenizer = AutoTokenizer.from_pretrained(location, **options)
    except Exception as error:
        raise ModelLoadError(f"Cannot load the classifier at {source}: {_first_line(error)}") from error
    return LoadedClassifier(model=model.eval(), tokenizer=tokenizer, source=source)


def load_demo_model() -> LoadedClassifier:
    """The demo sentiment classifier (see :func:`demo_model_path`) and its tokenizer."""
    return load_classifier(None)


def _looks_like_a_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that does not exist is a missing folder."""
    return name.startswith((".", "/", "~", "\\")) or name.endswith("/") or name.count("/") > 1 or "\\" in name


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

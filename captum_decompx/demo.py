"""Find and load the demo sentiment classifier and the data sets shipped with the repository.

The demo model (MiniLM-L6 fine-tuned on SST-2, labels ``negative``/``positive``) and the SST-2
files live in the repository, next to the package, not inside it:

- ``models/minilm-sst2/``: the classifier and its tokenizer (see its README);
- ``data/sst2/dev.tsv``, ``data/sst2/train.tsv``: SST-2 (GLUE), ``label<TAB>text`` with a header.

With the editable install (``pip install -e .``) the repository root is the folder above the
package. Installed from wheels, the demo model comes from the distribution ``captum-decompx-demo``
(the extra ``captum-decompx[demo]``). The environment variable ``CAPTUM_DECOMPX_DEMO_MODEL`` points
to another model folder.
Nothing here downloads anything: local folders load with ``local_files_only=True``.
"""

from __future__ import annotations

import csv
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union
from urllib.parse import urlsplit

if TYPE_CHECKING:  # torch and transformers load when a model is loaded, not on import
    from torch import nn

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
    """Neither ``$CAPTUM_DECOMPX_DEMO_MODEL``, the repository's ``models/minilm-sst2`` nor ``captum-decompx-demo`` is there."""


class ModelLoadError(DemoError, OSError):
    """A model path or hub id that cannot be read."""


class UnsupportedModelError(DemoError, ValueError):
    """A model whose ``config.model_type`` has no DecompX adapter."""


class MissingWeightsError(ModelLoadError):
    """A checkpoint without the weights of a sequence classifier (e.g. a bare encoder or a language model)."""


class DataFileError(DemoError, ValueError):
    """A data file with a row that cannot be read (e.g. a label that is not an integer)."""


def repository_root() -> Path:
    """The folder that holds the package folder ``captum_decompx/`` (the repository, when installed editable)."""
    return Path(__file__).resolve().parents[1]


def demo_model_path() -> Path:
    """The folder of the demo classifier.

    ``$CAPTUM_DECOMPX_DEMO_MODEL`` when set, otherwise ``models/minilm-sst2`` in the repository
    (an editable install from a clone), otherwise the model of the installed ``captum-decompx-demo``
    (the extra ``captum-decompx[demo]``).

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
    if (path / "config.json").is_file():
        return path
    installed = installed_demo_model_path()
    if installed is not None:
        return installed
    raise DemoModelNotFoundError(
        f"The demo model is not installed (not at {path}, and no captum-decompx-demo package). Install it "
        f'with the extra: pip install "captum-decompx[demo]" (from built wheels: pip install --find-links dist/ '
        f'"captum-decompx[demo]"), or set {DEMO_MODEL_ENV} to a model folder, or pass --model PATH_OR_HUB_ID.'
    )


def installed_demo_model_path() -> Optional[Path]:
    """The model folder of the installed distribution ``captum-decompx-demo``, or None when it is absent.

    Found without importing torch or transformers; a package whose folder lacks ``config.json``
    counts as absent.
    """
    import importlib.util

    spec = importlib.util.find_spec("captum_decompx_demo")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "minilm-sst2"
        if (candidate / "config.json").is_file():
            return candidate
    return None


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

    Raises:
        DataFileError: a label is not an integer, or the file is not UTF-8 text; the message
            names the file, the line and the value.
    """
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            next(reader, None)
            for row in reader:
                if len(row) < 2:
                    continue
                if limit is not None and len(texts) >= limit:
                    break
                try:
                    labels.append(int(row[0]))
                except ValueError:
                    raise DataFileError(
                        f"{path}, line {reader.line_num}: the label {row[0]!r} is not an integer class index. "
                        "Each row after the header must be label<TAB>text with an integer label (e.g. 0 or 1)."
                    ) from None
                texts.append(row[1])
        except UnicodeDecodeError as error:
            raise DataFileError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}).") from None
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
    tokenizer: Any
    source: str

    @property
    def model_type(self) -> str:
        """``config.model_type`` (e.g. ``"bert"``)."""
        return str(getattr(getattr(self.model, "config", None), "model_type", ""))

    @property
    def labels(self) -> list[str]:
        """The class names, by class index (``config.id2label``)."""
        id2label = getattr(self.model.config, "id2label", None) or {}
        count = int(getattr(self.model.config, "num_labels", len(id2label)))
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def load_model_and_tokenizer(name_or_path: Union[None, str, Path] = None) -> LoadedClassifier:
    """Load any supported sequence classifier (a folder or a hub id) and its tokenizer, float32, eval mode.

    The architecture is checked before the weights load. A hub id is read from the local Hugging
    Face cache when it is there (no network); otherwise it is downloaded, after a quick check that
    the hub can be reached, so that an offline machine gets one message at once instead of a
    series of retries.

    Args:
        name_or_path: a local folder or a hub id; None loads the demo model.

    Raises:
        DemoModelNotFoundError: ``name_or_path`` is None and the demo model is missing.
        ModelLoadError: the folder or hub id cannot be read (or downloaded).
        MissingWeightsError: the checkpoint lacks weights of the classifier (e.g. a bare encoder or a
            language model: its head would be random).
        UnsupportedModelError: DecompX has no adapter for the model's ``model_type``.
    """
    location, options = resolve_model_source(name_or_path)
    source = location if name_or_path is None else str(name_or_path)

    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from .adapters import supported_model_types

    local_files_only = options.get("local_files_only", False)
    try:
        config = AutoConfig.from_pretrained(location, local_files_only=local_files_only)
    except Exception as error:  # transformers raises OSError, ValueError, JSON errors, ...
        raise ModelLoadError(f"Cannot read the model at {source}: {_first_line(error)}") from error
    model_type = getattr(config, "model_type", None)
    if model_type not in supported_model_types():
        raise UnsupportedModelError(
            f"DecompX does not support the architecture of {source} (model_type {model_type!r}). "
            f"Supported model_types: {', '.join(supported_model_types())}."
        )
    try:
        model, loading_info = AutoModelForSequenceClassification.from_pretrained(
            location, dtype=torch.float32, local_files_only=local_files_only, output_loading_info=True
        )
    except Exception as error:
        raise ModelLoadError(f"Cannot load the classifier at {source}: {_first_line(error)}") from error
    check_no_missing_weights(source, config, loading_info.get("missing_keys") or ())
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_files_only)
    except Exception as error:
        raise ModelLoadError(f"Cannot load the tokenizer at {source}: {_first_line(error)}") from error
    return LoadedClassifier(model=model.eval(), tokenizer=tokenizer, source=source)


def check_no_missing_weights(source: str, config: Any, missing_keys: Sequence[str]) -> None:
    """Refuse a checkpoint that lacks weights of the sequence classifier (its head, most often).

    transformers fills missing weights with random values and only logs a warning; a classifier
    whose head is random explains nothing, and gives other numbers on every load.

    Args:
        source: the folder or hub id, for the message.
        config: the checkpoint's configuration (its ``architectures`` say what was saved).
        missing_keys: the parameter names ``from_pretrained(..., output_loading_info=True)`` reports
            as not found in the checkpoint.

    Raises:
        MissingWeightsError: naming the missing weights, what the folder holds, and what to pass.
    """
    if not missing_keys:
        return
    names = sorted(missing_keys)
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    saved = ", ".join(getattr(config, "architectures", None) or []) or "a model without a sequence-classification head"
    raise MissingWeightsError(
        f"{source} is not a sequence classifier: its weights lack {shown} (it holds {saved}), so the "
        "classification head would be random and its explanation meaningless. Pass a classifier fine-tuned "
        "and saved with save_pretrained (a *ForSequenceClassification model), or leave out --model for the demo model."
    )


def resolve_model_source(name_or_path: Union[None, str, Path] = None) -> tuple[str, dict[str, bool]]:
    """Where to load a model from, checked without loading torch or transformers.

    Returns:
        the folder or hub id to pass to ``from_pretrained``, and its options
        (``local_files_only=True`` for folders and for hub ids already in the Hugging Face cache).

    Raises:
        DemoModelNotFoundError: ``name_or_path`` is None and the demo model is missing.
        ModelLoadError: a missing folder, a file, or a hub id that is not cached and cannot be
            downloaded (offline mode, or the hub not reachable): reported at once, in one line.
    """
    path = demo_model_path() if name_or_path is None else Path(str(name_or_path)).expanduser()
    source = str(path) if name_or_path is None else str(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"Cannot read the model at {source}: it is a file, not a model folder.")
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"Cannot read the model at {source}: the folder has no config.json. Pass a folder written by "
                "save_pretrained (config.json, the weights and the tokenizer files)."
            )
        return str(path), {"local_files_only": True}
    if _looks_like_a_path(source):
        raise ModelLoadError(f"Cannot read the model at {source}: no such folder.")
    if Path(source).as_posix().rstrip("/") == DEMO_MODEL_RELATIVE_PATH.as_posix():
        raise ModelLoadError(
            f"Cannot read the model at {source}: no such folder in {Path.cwd()}. The demo model lies in the "
            "repository's clone: run the command from the clone's root, pass the folder's full path, or leave out "
            "--model (the demo model is then found wherever the package was installed from)."
        )
    if _in_hub_cache(source):
        return source, {"local_files_only": True}
    _check_hub_reachable(source)
    return source, {}


def stored_label_names(location: str) -> Optional[list[str]]:
    """The class names in a model's ``config.json`` (``id2label``), read without loading torch or transformers.

    Args:
        location: a folder or hub id as returned by :func:`resolve_model_source`.

    Returns:
        The names by class index, or None when the configuration is not at hand (a hub id not yet
        downloaded) or names no classes (transformers then gives defaults).
    """
    config_file = Path(location) / "config.json"
    if not config_file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(location, "config.json")
        except Exception:  # not a hub id the cache can name
            return None
        if not isinstance(cached, str):
            return None
        config_file = Path(cached)
    try:
        id2label = json.loads(config_file.read_text(encoding="utf-8")).get("id2label")
    except (OSError, ValueError, AttributeError):
        return None  # the loader reports an unreadable configuration
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        return [str(id2label[str(index)]) for index in range(len(id2label))]
    except KeyError:
        return None


#: The former name of :func:`load_model_and_tokenizer` (it loads any supported model, not only the demo).
load_classifier = load_model_and_tokenizer


def load_demo_model() -> LoadedClassifier:
    """The demo sentiment classifier (see :func:`demo_model_path`) and its tokenizer."""
    return load_model_and_tokenizer(None)


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _in_hub_cache(hub_id: str) -> bool:
    """The hub id's ``config.json`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:  # an id the cache cannot even name: let the loader report it
        return False


def _check_hub_reachable(hub_id: str, timeout_s: float = 3.0) -> None:
    """Raise :class:`ModelLoadError` at once when ``hub_id`` would have to be downloaded but cannot be.

    Offline mode, or the hub's host not answering within ``timeout_s``, is reported in one line,
    instead of the downloader's retries (about 30 s). Behind a proxy the check is left to the
    downloader.
    """
    advice = "Pass a local model folder (saved with save_pretrained) with --model PATH, or run where the hub can be reached."
    if _hub_offline():
        raise ModelLoadError(
            f"{hub_id} is not a folder in {Path.cwd()} nor in the Hugging Face cache, and HF_HUB_OFFLINE is set. {advice}"
        )
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ModelLoadError(
            f"Cannot download {hub_id}: {constants.ENDPOINT} cannot be reached ({reason}), and it is not a folder in "
            f"{Path.cwd()} nor in the Hugging Face cache. {advice}"
        ) from None


def _looks_like_a_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that does not exist is a missing folder."""
    return name.startswith((".", "/", "~", "\\")) or name.endswith("/") or name.count("/") > 1 or "\\" in name


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

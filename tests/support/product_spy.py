"""Observing which dtype and device every matrix product outside the forward function ran with."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_PRODUCTS = {
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.__rmatmul__,
    torch.einsum,
    torch.bmm,
    torch.mm,
    torch.baddbmm,
    torch.addmm,
    torch.nn.functional.linear,
}


class ProductSpy(TorchFunctionMode):
    """Records (dtype, device) of the floating operands of every matrix product run outside the
    forward function."""

    def __init__(self) -> None:
        super().__init__()
        self.in_forward = False
        self.operands: list[tuple[torch.dtype, torch.device]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.in_forward and func in _PRODUCTS:
            for value in list(args) + list(kwargs.values()):
                for tensor in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                        self.operands.append((tensor.dtype, tensor.device))
        return func(*args, **kwargs)


def spied_forward(model, spy: ProductSpy):
    def forward(input_ids, attention_mask):
        spy.in_forward = True
        try:
            return model(input_ids, attention_mask=attention_mask).logits
        finally:
            spy.in_forward = False

    return forward

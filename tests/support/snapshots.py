"""Snapshots of everything about a model that DecompX must not change, and their comparison.

Two snapshots of different reach: :func:`snapshot` / :func:`assert_unchanged` (state dict values and
dtypes, parameter storage, training flags, config, attention implementation, every hook dictionary,
instance attributes, classes) and :func:`model_snapshot` / :func:`assert_same_snapshot` (also buffers'
storage, devices, ``.grad`` and the grad mode).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def snapshot(model: nn.Module) -> dict:
    """Everything about the model that DecompX must not change."""
    return {
        "state": {name: tensor.detach().clone() for name, tensor in model.state_dict(keep_vars=True).items()},
        "parameters": {name: (p.data_ptr(), p.requires_grad, p.grad) for name, p in model.named_parameters()},
        "training": {name: module.training for name, module in model.named_modules()},
        "config": copy.deepcopy(model.config.to_dict()),
        "attn_implementation": model.config._attn_implementation,
        "module_configs": {
            name: getattr(module.config, "_attn_implementation", None)
            for name, module in model.named_modules()
            if hasattr(module, "config")
        },
        "hooks": {
            name: {attribute: list(getattr(module, attribute, {}).items()) for attribute in HOOK_DICTS}
            for name, module in model.named_modules()
        },
        "global_hooks": {attribute: list(getattr(torch_module, attribute).items()) for attribute in GLOBAL_HOOK_DICTS},
        "attributes": {name: sorted(vars(module)) for name, module in model.named_modules()},
        "classes": {name: type(module) for name, module in model.named_modules()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for name, tensor in before["state"].items():
        assert torch.equal(after["state"][name], tensor), f"{name} changed"
        assert after["state"][name].dtype == tensor.dtype
    assert after["parameters"] == before["parameters"]
    assert after["training"] == before["training"]
    assert after["config"] == before["config"]
    assert after["attn_implementation"] == before["attn_implementation"]
    assert after["module_configs"] == before["module_configs"]
    for name, hooks in before["hooks"].items():
        assert after["hooks"][name] == hooks, f"hooks of module {name!r} changed"
    assert after["global_hooks"] == before["global_hooks"]
    assert after["attributes"] == before["attributes"]
    assert after["classes"] == before["classes"]


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _hooks(holder: Any, names: tuple[str, ...]) -> dict[str, list]:
    return {name: [(key, id(hook)) for key, hook in getattr(holder, name, {}).items()] for name in names}


def model_snapshot(model: nn.Module) -> dict:
    """Everything a call could change: parameters (values, storage, dtype, device, requires_grad),
    buffers, every module's class, training flag, hooks and instance attributes, the config (with
    the attention implementation), the global module hooks and the grad mode."""
    config = getattr(model, "config", None)
    return {
        "parameters": {
            name: (p.detach().clone(), p.data_ptr(), p.dtype, p.device, p.requires_grad, p.grad)
            for name, p in model.named_parameters()
        },
        "buffers": {name: (b.detach().clone(), b.data_ptr()) for name, b in model.named_buffers()},
        "modules": {name: (type(m), m.training, _hooks(m, _HOOK_DICTS), sorted(vars(m))) for name, m in model.named_modules()},
        "config": None if config is None else repr(sorted(vars(config).items())),
        "attention": None if config is None else config._attn_implementation,
        "global_hooks": _hooks(torch.nn.modules.module, _GLOBAL_HOOK_DICTS),
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    assert before["parameters"].keys() == after["parameters"].keys()
    for name, (value, pointer, dtype, device, requires_grad, grad) in before["parameters"].items():
        value_after, pointer_after, dtype_after, device_after, requires_grad_after, grad_after = after["parameters"][name]
        assert torch.equal(value, value_after), f"parameter {name} changed"
        assert (pointer, dtype, device, requires_grad) == (pointer_after, dtype_after, device_after, requires_grad_after), name
        assert grad is None and grad_after is None, f"parameter {name} got a .grad"
    assert before["buffers"].keys() == after["buffers"].keys()
    for name, (value, pointer) in before["buffers"].items():
        assert torch.equal(value, after["buffers"][name][0]) and pointer == after["buffers"][name][1], f"buffer {name} changed"
    assert before["modules"] == after["modules"]
    for key in ("config", "attention", "global_hooks", "grad_enabled"):
        assert before[key] == after[key], f"{key} changed"

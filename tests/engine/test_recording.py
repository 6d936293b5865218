"""The hook recorder the component kinds use: calls in order, one hook per (module, role), removal."""

from __future__ import annotations

import torch
from torch import nn

from captum_decompx.core.recording import Reader, Recorder


def test_records_every_call_in_order_and_replaces_outputs_until_removed():
    linear = nn.Linear(3, 2)
    recorder = Recorder()
    recorder.record_output(linear, "output")
    recorder.record_output(linear, "output")  # the same role twice: one hook
    recorder.record_input(linear, "input")
    recorder.replace_output(linear, "frozen", lambda output: output.detach() * 0 + 7)
    first, second = torch.randn(4, 3), torch.randn(4, 3)
    with torch.no_grad():
        out = linear(first)
        linear(second)
    assert torch.equal(out, torch.full((4, 2), 7.0))
    reader = Reader(recorder)
    torch.testing.assert_close(reader.take(linear, "input", "x"), first)
    torch.testing.assert_close(reader.take(linear, "input", "x"), second)
    assert len(recorder.calls(linear, "output")) == 2
    recorder.remove()
    assert not linear._forward_hooks and not linear._forward_pre_hooks
    assert not torch.equal(linear(first), torch.full((4, 2), 7.0))

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


class _ProbsOnRequest(nn.Module):
    """An attention that appends its probabilities (batch, 1, seq, seq) to ``(output, extra)`` only
    when asked, as T5's does on transformers 4.x."""

    def __init__(self) -> None:
        super().__init__()
        self.v, self.o = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> tuple:
        probs = torch.softmax(x @ x.transpose(1, 2), dim=-1).unsqueeze(1)
        outputs = (self.o(probs[:, 0] @ self.v(x)), "extra")
        return outputs + (probs,) if output_attentions else outputs


class _Caller(nn.Module):
    def __init__(self, asks: bool) -> None:
        super().__init__()
        self.attention, self.asks = _ProbsOnRequest(), asks

    def forward(self, x: torch.Tensor) -> tuple:
        return self.attention(x, output_attentions=self.asks)


def test_probabilities_read_on_request_are_taken_back_out_of_a_call_that_did_not_ask():
    from captum_decompx.components.attention import Attention
    from captum_decompx.components.linear import LinearMap

    x = torch.randn(2, 3, 4)
    for asks in (False, True):
        caller = _Caller(asks)
        with torch.no_grad():
            own = caller(x)
        attention = Attention("attention", LinearMap.at("attention.v"), LinearMap.at("attention.o"), None, 2, True)
        recorder = Recorder()
        attention.install(recorder, caller)
        with torch.no_grad():
            outputs = caller(x)
        assert len(outputs) == len(own) == (3 if asks else 2), "the caller gets the output it asked for"
        torch.testing.assert_close(outputs[0], own[0], rtol=0, atol=0)
        probs = attention.read(Reader(recorder), caller, "layer 0")
        torch.testing.assert_close(probs, torch.softmax(x @ x.transpose(1, 2), dim=-1).unsqueeze(1))
        recorder.remove()
        assert not caller.attention._forward_hooks and not caller.attention._forward_pre_hooks

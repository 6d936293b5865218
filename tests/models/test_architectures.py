"""The same battery for every architecture: exactness, fast = exact without biases, padding
invariance, and the model left exactly as it was found.

Tiny random models are built from configs and every parameter is re-drawn under a seed, so that
biases, norm gains and feed-forward networks all matter.
"""

from __future__ import annotations

import types
from dataclasses import replace

import pytest
import torch
import transformers as tf
from support.architectures import CAUSAL_LMS, DECODER, ENCODERS, PHI3, forward_of, padded_batch
from torch import nn

from captum_decompx import Adapter, DecompX, LayerPaths, Linear, register_adapter, supported_model_types
from captum_decompx.adapters import unregister_adapter
from captum_decompx.core import decomposition
from captum_decompx.testing import randomize_parameters


def vit() -> nn.Module:
    return tf.ViTForImageClassification(tf.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=40, num_labels=3))


def assert_close(actual, expected, scale, tol=1e-5):
    assert torch.allclose(actual, expected, rtol=tol, atol=tol * max(1.0, float(scale))), (
        f"max abs difference {float((actual - expected).abs().max()):.3e} at scale {float(scale):.3f}"
    )


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {name: tensor.clone() for name, tensor in model.state_dict().items()},
        "training": [module.training for module in model.modules()],
        "config": model.config.to_dict(),
        "attn": getattr(model.config, "_attn_implementation", None),
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for name, tensor in before["state"].items():
        assert torch.equal(after["state"][name], tensor), name
    assert after["training"] == before["training"]
    assert after["config"] == before["config"]
    assert after["attn"] == before["attn"]
    assert after["hooks"] == before["hooks"]


def test_every_listed_architecture_has_an_adapter():
    listed = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "deberta-v2", "albert",
              "modernbert", "vit", "deit", "beit", "data2vec-vision", "dinov2", "swin", "gpt2", "llama", "qwen2", "mistral", "qwen3", "gemma", "gemma2", "gemma3_text",
              "phi3"}
    assert listed <= set(supported_model_types())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_sequence_classifier_battery(name, seed, monkeypatch):
    model = randomize_parameters(ENCODERS[name](), seed)
    ids, mask = padded_batch(seed)
    before = snapshot(model)
    forward = forward_of(model)

    out = DecompX(forward, model=model).decompose(ids, additional_forward_args=(mask,))
    with torch.no_grad():
        own_logits = model(input_ids=ids, attention_mask=mask).logits
    scale = own_logits.abs().max()
    assert_close(out.logits, own_logits, scale, tol=2e-5)
    # Exact, biases included: every class logit is the sum of the token contributions.
    assert_close(out.attributions.sum(1), own_logits, scale)
    # Padding positions get exactly zero.
    assert torch.all(out.attributions[mask == 0] == 0)

    # Fast = exact without biases (attributions and the biases' share).
    exact = DecompX(forward, model=model, include_biases=False, algorithm="exact").decompose(ids, additional_forward_args=(mask,))
    fast = DecompX(forward, model=model, include_biases=False, algorithm="fast").decompose(ids, additional_forward_args=(mask,))
    assert_close(exact.attributions.sum(1) + exact.bias, exact.logits, scale)
    assert_close(fast.attributions, exact.attributions, scale)
    assert_close(fast.bias, exact.bias, scale)

    # Padding invariance: each example alone equals its row of the padded batch.
    for row in range(ids.shape[0]):
        length = int(mask[row].sum())
        alone = DecompX(forward, model=model).decompose(ids[row:row + 1, :length], additional_forward_args=(mask[row:row + 1, :length],))
        assert_close(alone.attributions[0], out.attributions[row, :length], scale)

    # Bounded memory: one example at a time, two rows at a time, gives the same result.
    monkeypatch.setattr(decomposition, "plan_memory", lambda *args, **kwargs: decomposition.MemoryPlan(1, 2, 0))
    chunked = DecompX(forward, model=model).decompose(ids, additional_forward_args=(mask,))
    assert_close(chunked.attributions, out.attributions, scale)

    assert_unchanged(model, before)


@pytest.mark.parametrize("name", sorted(CAUSAL_LMS))
def test_causal_lm_next_token_battery(name):
    model = randomize_parameters(CAUSAL_LMS[name](), 3)
    ids, mask = padded_batch(3, lengths=(7,))

    def next_token(input_ids):
        return model(input_ids=input_ids).logits[:, -1, :]

    before = snapshot(model)
    with torch.no_grad():
        logits = next_token(ids)
    target = int(logits.argmax())
    scale = logits.abs().max()

    attributions, delta = DecompX(next_token, model=model).attribute(ids, target=target, return_convergence_delta=True)
    assert attributions.shape == ids.shape
    assert_close(attributions.sum(-1), logits[:, target], scale)
    assert float(delta.abs().max()) <= 1e-5 * max(1.0, float(scale))

    exact = DecompX(next_token, model=model, include_biases=False, algorithm="exact").attribute(ids, target=target)
    fast = DecompX(next_token, model=model, include_biases=False, algorithm="fast").attribute(ids, target=target)
    assert_close(fast, exact, scale)
    assert_unchanged(model, before)


@pytest.mark.parametrize("algorithm", ["exact", "fast"])
def test_gemma_logit_softcap_is_warned_and_not_decomposed(algorithm):
    """Gemma 2's causal LM returns cap * tanh(z / cap): DecompX explains z (the logits before the
    cap) with a warning; the attributions equal those of the same model without the cap. Both
    algorithms (the fast one without biases, whose bias share is then part of z)."""
    options = {"algorithm": algorithm, "include_biases": algorithm == "exact"}
    config = tf.Gemma2Config(**DECODER, sliding_window=4, final_logit_softcapping=3.0, attn_implementation="eager")
    model = randomize_parameters(tf.Gemma2ForCausalLM(config), 3)
    ids, _ = padded_batch(3, lengths=(7,))
    def next_token(input_ids):
        return model(input_ids=input_ids).logits[:, -1, :]

    with torch.no_grad():
        capped = next_token(ids)
    uncapped = 3.0 * torch.atanh(capped / 3.0)
    target = int(capped.argmax())
    with pytest.warns(UserWarning, match=r"soft-caps its logits.*BEFORE the cap"):
        attributions = DecompX(next_token, model=model, **options).attribute(ids, target=target)
    if algorithm == "exact":  # biases decomposed: the attributions add up to z
        assert_close(attributions.sum(-1), uncapped[:, target], uncapped.abs().max(), tol=1e-4)
        assert float((attributions.sum(-1) - capped[:, target]).abs().max()) > 1e-2  # the cap is not decomposed
    plain = randomize_parameters(tf.Gemma2ForCausalLM(tf.Gemma2Config(
        **DECODER, sliding_window=4, final_logit_softcapping=None, attn_implementation="eager")), 3)

    def plain_forward(input_ids):
        return plain(input_ids=input_ids).logits[:, -1, :]

    assert_close(attributions, DecompX(plain_forward, model=plain, **options).attribute(ids, target=target), uncapped.abs().max())


def test_gemma2_under_sdpa_is_warned():
    """transformers 4.57 runs Gemma 2 with sdpa, which skips the attention soft-capping that the
    eager attention DecompX reads applies: the explained logits then differ from the model's."""
    try:
        model = tf.Gemma2ForSequenceClassification(tf.Gemma2Config(**DECODER, attn_implementation="sdpa")).eval()
    except (ValueError, ImportError) as error:
        pytest.skip(f"this transformers version has no sdpa attention for Gemma 2 ({error})")
    if model.config._attn_implementation != "sdpa":
        pytest.skip("this transformers version has no sdpa attention for Gemma 2")
    with pytest.warns(UserWarning, match="skips its attention soft-capping"):
        DecompX(forward_of(model), model=model)


def test_vit_battery():
    model = randomize_parameters(vit(), 5)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    before = snapshot(model)
    out = DecompX(model).decompose(pixels)
    assert out.attributions.shape == (2, 1 + 16, 3)  # CLS + 4x4 patches, per class
    with torch.no_grad():
        own_logits = model(pixels).logits
    scale = own_logits.abs().max()
    assert_close(out.logits, own_logits, scale)
    assert_close(out.attributions.sum(1), out.logits, scale)
    exact = DecompX(model, include_biases=False, algorithm="exact").decompose(pixels)
    fast = DecompX(model, include_biases=False).decompose(pixels)
    assert_close(fast.attributions, exact.attributions, scale)
    assert_close(fast.bias, exact.bias, scale)
    assert DecompX(model).attribute(pixels, target=1).shape == (2, 17)
    assert_unchanged(model, before)


def test_vit_rejects_token_ids():
    model = vit().eval()
    with pytest.raises(ValueError, match="pixel_values"):
        DecompX(model).attribute(torch.zeros(1, 5, dtype=torch.long), target=0)


# ------------------------------------------------------------------------------------------------
# An architecture added from outside the package


class TinyAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x):
        batch, seq, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(batch, seq, hidden)
        return self.out(context), probs


class TinyBlock(nn.Module):
    """A pre-LN block with a SiLU feed-forward network."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.attn = TinyAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden)
        self.up = nn.Linear(hidden, 2 * hidden)
        self.act = nn.SiLU()
        self.down = nn.Linear(2 * hidden, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))[0]
        return x + self.down(self.act(self.up(self.norm2(x))))


class TinyClassifier(nn.Module):
    """A small transformer classifier written from scratch (no Hugging Face code)."""

    def __init__(self, vocab: int = 30, hidden: int = 16, heads: int = 2, layers: int = 2, labels: int = 2) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(model_type="tiny-custom-transformer")
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(TinyBlock(hidden, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, labels)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.final_norm(x)[:, 0])


TINY_ADAPTER = Adapter(
    name="tiny-custom-transformer",
    layers="blocks",
    layer=LayerPaths(
        attention="attn", value="attn.qkv[2/3]", attention_output="attn.out", attention_norm="norm1",
        ffn_in="up", ffn_activation="act", ffn_out="down", ffn_norm="norm2",
    ),
    head=(Linear("classifier"),),
    pooling="first",
    norm_position="pre",
    final_norm="final_norm",
)


def test_user_registered_adapter_for_a_custom_module():
    model = randomize_parameters(TinyClassifier(), 7)
    with pytest.raises(ValueError, match="register_adapter"):
        DecompX(model)
    register_adapter("tiny-custom-transformer", TINY_ADAPTER)
    try:
        check_tiny_classifier(model)
    finally:
        unregister_adapter("tiny-custom-transformer")


def check_tiny_classifier(model: nn.Module) -> None:
    ids = torch.randint(0, 30, (2, 7), generator=torch.Generator().manual_seed(7))
    out = DecompX(model).decompose(ids)
    with torch.no_grad():
        logits = model(ids)
    scale = logits.abs().max()
    assert_close(out.logits, logits, scale)
    assert_close(out.attributions.sum(1), logits, scale)
    fast = DecompX(model, include_biases=False).decompose(ids)
    exact = DecompX(model, include_biases=False, algorithm="exact").decompose(ids)
    assert_close(fast.attributions, exact.attributions, scale)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class TinyGatedBlock(TinyBlock):
    """A pre-LN block whose SwiGLU unit computes gate and up-projection in one map and calls
    ``F.silu`` from no attribute (as DINOv2's SwiGLU unit does in transformers 4.x)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__(hidden, heads)
        self.gate_up = nn.Linear(hidden, 4 * hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))[0]
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(nn.functional.silu(gate) * up)


def test_gated_unit_whose_activation_is_a_plain_function():
    """The adapter gives the function itself; the fast path freezes the gate's half of the fused map."""
    model = TinyClassifier()
    model.blocks = nn.ModuleList(TinyGatedBlock(16, 2) for _ in range(2))
    model = randomize_parameters(model, 8)
    layer = LayerPaths(
        attention="attn", value="attn.qkv[2/3]", attention_output="attn.out", attention_norm="norm1",
        ffn_in="gate_up[1/2]", ffn_activation=nn.functional.silu, ffn_out="down", ffn_norm="norm2", ffn_gate="gate_up[0/2]",
    )  # fmt: skip
    register_adapter("tiny-custom-transformer", replace(TINY_ADAPTER, layer=layer))
    try:
        check_tiny_classifier(model)
    finally:
        unregister_adapter("tiny-custom-transformer")


def test_feature_range_paths_select_the_values_of_a_fused_projection():
    """Phi-3's ``qkv_proj`` holds queries, then the key-value heads' keys and values: with
    grouped-query attention the blocks differ in size, and the values are a feature range."""
    from captum_decompx.adapters.base import FeatureRange, split_block
    from captum_decompx.components import LinearMap

    model = randomize_parameters(tf.Phi3ForSequenceClassification(tf.Phi3Config(**PHI3)), 2)
    attention = model.model.layers[0].self_attn
    queries, kv_width = 4 * 8, 2 * 8  # heads * head_dim, kv_heads * head_dim
    assert split_block(f"qkv_proj[{queries + kv_width}:{queries + 2 * kv_width}]") == ("qkv_proj", FeatureRange(48, 64))
    values = LinearMap.at("qkv_proj[48:64]").resolve(attention, torch.float32)
    assert torch.equal(values.weight, attention.qkv_proj.weight[48:64])
    with pytest.raises(ValueError, match="empty"):
        split_block("qkv_proj[8:8]")
    with pytest.raises(ValueError, match="outside the map's 64 output features"):
        LinearMap.at("qkv_proj[48:65]").resolve(attention, torch.float32)

"""Tiny CLIP and SigLIP models, their inputs, and readers of their weights into :mod:`literal_spec`'s
plain structures (by module name: nothing here imports the engine)."""

from __future__ import annotations

import literal_spec as spec
import torch
import transformers as tf

VOCAB, BOS, EOS, PAD = 50, 48, 49, 0
IMAGE, PATCH, CHANNELS = 8, 4, 3
TOWER = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2)


def clip_config() -> tf.CLIPConfig:
    text = dict(TOWER, vocab_size=VOCAB, max_position_embeddings=12, eos_token_id=EOS, bos_token_id=BOS, pad_token_id=PAD)
    vision = dict(TOWER, image_size=IMAGE, patch_size=PATCH, num_channels=CHANNELS)
    return tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)


def siglip_config() -> tf.SiglipConfig:
    text = dict(TOWER, vocab_size=VOCAB, max_position_embeddings=12, projection_size=TOWER["hidden_size"])
    vision = dict(TOWER, image_size=IMAGE, patch_size=PATCH, num_channels=CHANNELS)
    return tf.SiglipConfig(text_config=text, vision_config=vision)


def clip_float64(seed: int) -> tf.CLIPModel:
    """A float64 CLIP with every parameter redrawn (``logit_scale`` kept small, so that the logits stay moderate)."""
    model = spec.randomize(tf.CLIPModel(clip_config()), seed)
    with torch.no_grad():
        model.logit_scale.fill_(1.2)
    return model


def siglip_float64(seed: int) -> tf.SiglipModel:
    model = spec.randomize(tf.SiglipModel(siglip_config()), seed)
    with torch.no_grad():
        model.logit_scale.fill_(1.2)
        model.logit_bias.fill_(-0.7)
    return model


def pixels(images: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(images, CHANNELS, IMAGE, IMAGE, generator=generator).to(dtype)


def clip_texts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three right-padded texts, each ``BOS ... EOS``, and their attention mask."""
    ids = torch.tensor([[BOS, 5, 7, 9, EOS, PAD], [BOS, 3, 4, EOS, PAD, PAD], [BOS, 11, 12, 13, 14, EOS]])
    return ids, (ids != PAD).long()


def siglip_texts() -> torch.Tensor:
    """Three texts of six ids, no padding (SigLIP reads the last position)."""
    return torch.tensor([[5, 7, 9, 21, 30, 2], [3, 4, 17, 40, 8, 2], [11, 12, 13, 14, 33, 2]])


# ----------------------------------------------------------------------------------------------
# Literal readers


def tower_layers(tower, activation: spec.Activation) -> list[spec.LayerWeights]:
    """The encoder layers of a CLIP or SigLIP tower, by module name."""
    heads = tower.config.num_attention_heads
    return [
        spec.LayerWeights(
            query=spec.affine_of(layer.self_attn.q_proj),
            key=spec.affine_of(layer.self_attn.k_proj),
            value=spec.affine_of(layer.self_attn.v_proj),
            output=spec.affine_of(layer.self_attn.out_proj),
            heads=heads,
            kv_heads=heads,
            norm1=spec.norm_of(layer.layer_norm1),
            norm2=spec.norm_of(layer.layer_norm2),
            ffn_in=spec.affine_of(layer.mlp.fc1),
            activation=activation,
            ffn_out=spec.affine_of(layer.mlp.fc2),
        )
        for layer in tower.encoder.layers
    ]


def patch_embeddings(embeddings, image: torch.Tensor) -> torch.Tensor:
    """(patches, d): the patch convolution written as a dot product per patch, row by row."""
    conv = embeddings.patch_embedding
    weight = conv.weight.detach().to(spec.DTYPE)
    rows, cols = image.shape[1] // PATCH, image.shape[2] // PATCH
    out = torch.zeros(rows * cols, weight.shape[0], dtype=spec.DTYPE)
    for r in range(rows):
        for c in range(cols):
            window = image[:, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH].to(spec.DTYPE)
            out[r * cols + c] = (weight * window).sum(dim=(1, 2, 3))
            if conv.bias is not None:
                out[r * cols + c] += conv.bias.detach().to(spec.DTYPE)
    return out


def clip_image_embeddings(model, image: torch.Tensor) -> torch.Tensor:
    """(1 + patches, d): the class embedding, then the patches, plus positions, then ``pre_layrnorm``."""
    vision = model.vision_model
    tokens = torch.cat(
        [vision.embeddings.class_embedding.detach().to(spec.DTYPE).unsqueeze(0), patch_embeddings(vision.embeddings, image)]
    )
    tokens = tokens + vision.embeddings.position_embedding.weight.detach().to(spec.DTYPE)[: tokens.shape[0]]
    return spec.norm_of(vision.pre_layrnorm)(tokens)


def siglip_image_embeddings(model, image: torch.Tensor) -> torch.Tensor:
    """(patches, d): the patches plus positions (no class token, no norm before the layers)."""
    embeddings = model.vision_model.embeddings
    tokens = patch_embeddings(embeddings, image)
    return tokens + embeddings.position_embedding.weight.detach().to(spec.DTYPE)[: tokens.shape[0]]


def text_embeddings(text_model, ids: torch.Tensor) -> torch.Tensor:
    """(N, d): token + position embeddings of one text."""
    embeddings = text_model.embeddings
    table = embeddings.token_embedding.weight.detach().to(spec.DTYPE)
    return table[ids] + embeddings.position_embedding.weight.detach().to(spec.DTYPE)[: ids.shape[0]]


def clip_text_weights(model, head: list) -> spec.ModelWeights:
    text = model.text_model
    return spec.ModelWeights(
        layers=tower_layers(text, spec.QUICK_GELU),
        pre_norm=True,
        head=head,
        final_norm=spec.norm_of(text.final_layer_norm),
        causal=True,
        softmax=spec.float32_softmax,
    )


def clip_image_weights(model, head: list) -> spec.ModelWeights:
    vision = model.vision_model
    return spec.ModelWeights(
        layers=tower_layers(vision, spec.QUICK_GELU),
        pre_norm=True,
        head=[spec.norm_of(vision.post_layernorm), *head],
        softmax=spec.float32_softmax,
    )


def siglip_text_weights(model, head: list) -> spec.ModelWeights:
    text = model.text_model
    return spec.ModelWeights(
        layers=tower_layers(text, spec.GELU_TANH),
        pre_norm=True,
        head=[spec.affine_of(text.head), *head],
        final_norm=spec.norm_of(text.final_layer_norm),
        softmax=spec.float32_softmax,
    )


def siglip_image_weights(model, head: list) -> spec.ModelWeights:
    vision = model.vision_model
    pooling = vision.head
    query, key, value = (
        spec.Affine(w.detach().to(spec.DTYPE), b.detach().to(spec.DTYPE))
        for w, b in zip(pooling.attention.in_proj_weight.chunk(3), pooling.attention.in_proj_bias.chunk(3))
    )
    probe = spec.ProbeWeights(
        probe=pooling.probe.detach().to(spec.DTYPE)[0, 0],
        query=query,
        key=key,
        value=value,
        output=spec.affine_of(pooling.attention.out_proj),
        heads=pooling.attention.num_heads,
        norm=spec.norm_of(pooling.layernorm),
        ffn_in=spec.affine_of(pooling.mlp.fc1),
        activation=spec.GELU_TANH,
        ffn_out=spec.affine_of(pooling.mlp.fc2),
    )
    return spec.ModelWeights(
        layers=tower_layers(vision, spec.GELU_TANH),
        pre_norm=True,
        head=head,
        final_norm=spec.norm_of(vision.post_layernorm),
        softmax=spec.float32_softmax,
        probe=probe,
    )


def contrastive_step(model, other: torch.Tensor, *, with_bias: bool) -> spec.ContrastiveWeights:
    scale = float(model.logit_scale.detach().to(spec.DTYPE).exp())
    bias = float(model.logit_bias.detach()) if with_bias else None
    return spec.ContrastiveWeights(other, scale, bias)

"""Tiny T5, BART and mBART models for the encoder-decoder tests, and readers of their weights into
:mod:`literal_spec`'s plain structures (by module name: the engine is never involved)."""

from __future__ import annotations

import literal_spec as spec
import torch
import transformers as tf

from captum_decompx.testing import randomize_parameters

VOCAB = 40
FAMILIES = ("t5", "t5-gated", "bart", "mbart", "marian", "pegasus", "m2m_100")

# The rest of the BART family: (config class, model class). Marian is post-LN like BART; Pegasus
# and M2M100 (NLLB's architecture) are pre-LN like mBART; all three add sinusoidal positions to
# scaled token embeddings (M2M100 has no final_logits_bias).
BART_LIKE = {
    "marian": (tf.MarianConfig, tf.MarianMTModel),
    "pegasus": (tf.PegasusConfig, tf.PegasusForConditionalGeneration),
    "m2m_100": (tf.M2M100Config, tf.M2M100ForConditionalGeneration),
}


def t5(seed: int, *, gated: bool = False, tied: bool = True) -> torch.nn.Module:
    """T5 v1.0 (ReLU) or v1.1 (gated GELU), float64, every parameter redrawn (T5 has no biases)."""
    config = tf.T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=tied,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
    )
    return randomize_parameters(tf.T5ForConditionalGeneration(config).double(), seed)


def bart(seed: int, *, pre_norm: bool = False, family: str = "") -> torch.nn.Module:
    """BART (post-LN) or mBART (pre-LN, scaled embeddings), or another of the family, float64,
    every parameter and the ``final_logits_bias`` buffer redrawn so that every bias matters (the
    sinusoidal position tables stay sinusoidal)."""
    config_class = tf.MBartConfig if pre_norm else tf.BartConfig
    model_class = tf.MBartForConditionalGeneration if pre_norm else tf.BartForConditionalGeneration
    if family:
        config_class, model_class = BART_LIKE[family]
    config = config_class(
        vocab_size=VOCAB,
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=24,
        decoder_ffn_dim=24,
        max_position_embeddings=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=pre_norm or bool(family),
    )
    model = model_class(config).double()
    positions = {
        name: parameter.detach().clone() for name, parameter in model.named_parameters() if "embed_positions" in name and family
    }
    model = randomize_parameters(model, seed)
    with torch.no_grad():
        for name, table in positions.items():
            model.get_parameter(name).copy_(table)
        if hasattr(model, "final_logits_bias"):
            generator = torch.Generator().manual_seed(seed + 1000)
            model.final_logits_bias.copy_(
                0.5 * torch.randn(model.final_logits_bias.shape, generator=generator, dtype=torch.float64)
            )
    return model


def whisper(seed: int) -> torch.nn.Module:
    """Whisper over 6 mel bins and 16 mel frames (8 audio frames after the stride-2 stem), float64,
    every parameter redrawn but the encoder's sinusoidal position table."""
    config = tf.WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=6,
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=24,
        decoder_ffn_dim=24,
        max_source_positions=8,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    model = tf.WhisperForConditionalGeneration(config).double()
    table = model.model.encoder.embed_positions.weight.detach().clone()
    model = randomize_parameters(model, seed)
    with torch.no_grad():
        model.model.encoder.embed_positions.weight.copy_(table)
    return model


def whisper_features(batch: int, seed: int) -> torch.Tensor:
    """(batch, 6 mel bins, 16 mel frames) random log-mel features."""
    return torch.randn(batch, 6, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def model_of(family: str, seed: int) -> torch.nn.Module:
    if family.startswith("t5"):
        return t5(seed, gated=family == "t5-gated")
    return bart(seed, pre_norm=family == "mbart", family=family if family in BART_LIKE else "")


def forward_of(model: torch.nn.Module):
    """The issue's forward function: f(source_ids, target_ids, source_mask) -> logits (B, T, V)."""
    return lambda src, tgt, mask: model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits


def pad_id(model: torch.nn.Module) -> int:
    return int(model.config.pad_token_id)


def source_batch(lengths: tuple[int, ...], pad: int, seed: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded source ids in [3, VOCAB) (never a special id) and their mask, right- or left-padded."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        where = slice(width - length, width) if left else slice(0, length)
        ids[row, where] = torch.randint(3, VOCAB, (length,), generator=generator)
        mask[row, where] = 1
    return ids, mask


def target_batch(batch: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 7)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


# ----------------------------------------------------------------------------------------------
# Weights, read by module name


def _t5_norm(module) -> spec.NormWeights:
    return spec.NormWeights(
        module.weight.detach().to(spec.DTYPE), None, float(module.variance_epsilon), "rms", statistic_in_float32=True
    )


def _t5_layer(block, ffn_index: int, gated: bool) -> spec.LayerWeights:
    attention = block.layer[0].SelfAttention
    ffn = block.layer[ffn_index].DenseReluDense
    return spec.LayerWeights(
        query=spec.affine_of(attention.q),
        key=spec.affine_of(attention.k),
        value=spec.affine_of(attention.v),
        output=spec.affine_of(attention.o),
        heads=attention.n_heads,
        kv_heads=attention.n_heads,
        norm1=_t5_norm(block.layer[0].layer_norm),
        norm2=_t5_norm(block.layer[ffn_index].layer_norm),
        ffn_in=spec.affine_of(ffn.wi_1 if gated else ffn.wi),
        activation=spec.GELU_TANH if gated else spec.RELU,
        ffn_out=spec.affine_of(ffn.wo),
        ffn_gate=spec.affine_of(ffn.wi_0) if gated else None,
    )


def _relative_position_bias(attention):
    """(heads, N, N) T5's learned bias of each relative position bucket, read from the first
    layer's table by Hugging Face's bucketing (shared by every layer of the stack)."""

    def bias(seq: int) -> torch.Tensor:
        with torch.no_grad():
            return attention.compute_bias(seq, seq)[0].to(spec.DTYPE)

    return bias


# transformers 4.x's T5Attention computes its softmax in float32 (then casts back), also in a
# float64 model; transformers 5 runs T5 through the shared eager attention, in the model's dtype.
def _t5_softmax(scores: torch.Tensor) -> torch.Tensor:
    if int(tf.__version__.split(".")[0]) < 5:
        return spec.float32_softmax(scores)
    return torch.softmax(scores, dim=-1)


def t5_weights(model) -> spec.Seq2SeqWeights:
    """T5: pre-RMSNorm layers, unscaled attention scores plus the relative position bias, the LM
    head on the decoder's output times ``d_model ** -0.5`` (tied embeddings)."""
    gated = bool(model.config.is_gated_act)
    encoder = spec.ModelWeights(
        layers=[_t5_layer(block, 1, gated) for block in model.encoder.block],
        pre_norm=True,
        head=[],
        final_norm=_t5_norm(model.encoder.final_layer_norm),
        softmax=_t5_softmax,
        score_scale=1.0,
        position_bias=_relative_position_bias(model.encoder.block[0].layer[0].SelfAttention),
    )
    # transformers 5 names the rescale scale_decoder_outputs; 4.x rescales when the head is tied
    rescaled = getattr(model.config, "scale_decoder_outputs", None)
    rescaled = model.config.tie_word_embeddings if rescaled is None else rescaled
    scale = model.config.d_model**-0.5 if rescaled else 1.0
    decoder = spec.ModelWeights(
        layers=[_t5_layer(block, 2, gated) for block in model.decoder.block],
        pre_norm=True,
        head=[spec.Affine(model.lm_head.weight.detach().to(spec.DTYPE) * scale, None)],
        final_norm=_t5_norm(model.decoder.final_layer_norm),
        causal=True,
        softmax=_t5_softmax,
        score_scale=1.0,
        position_bias=_relative_position_bias(model.decoder.block[0].layer[0].SelfAttention),
    )
    cross = [
        spec.CrossWeights(
            query=spec.affine_of(block.layer[1].EncDecAttention.q),
            key=spec.affine_of(block.layer[1].EncDecAttention.k),
            value=spec.affine_of(block.layer[1].EncDecAttention.v),
            output=spec.affine_of(block.layer[1].EncDecAttention.o),
            heads=block.layer[1].EncDecAttention.n_heads,
            norm=_t5_norm(block.layer[1].layer_norm),
            scale=1.0,  # T5 does not scale its attention scores
            softmax=_t5_softmax,
        )
        for block in model.decoder.block
    ]
    return spec.Seq2SeqWeights(encoder, decoder, cross)


ACTIVATIONS = {"gelu": spec.GELU, "relu": spec.RELU, "swish": spec.SILU, "silu": spec.SILU, "gelu_new": spec.GELU_TANH}


def _bart_layer(layer, heads: int, activation: spec.Activation) -> spec.LayerWeights:
    return spec.LayerWeights(
        query=spec.affine_of(layer.self_attn.q_proj),
        key=spec.affine_of(layer.self_attn.k_proj),
        value=spec.affine_of(layer.self_attn.v_proj),
        output=spec.affine_of(layer.self_attn.out_proj),
        heads=heads,
        kv_heads=heads,
        norm1=spec.norm_of(layer.self_attn_layer_norm),
        norm2=spec.norm_of(layer.final_layer_norm),
        ffn_in=spec.affine_of(layer.fc1),
        activation=activation,
        ffn_out=spec.affine_of(layer.fc2),
    )


def bart_weights(model) -> spec.Seq2SeqWeights:
    """BART / mBART: post-LN or pre-LN layers (mBART adds a final norm to each stack), the LM head
    plus ``final_logits_bias``."""
    config = model.config
    pre = getattr(model.model.decoder, "layer_norm", None) is not None
    heads = config.decoder_attention_heads
    head_dim = config.d_model // heads
    activation = ACTIVATIONS[config.activation_function]
    encoder = spec.ModelWeights(
        layers=[_bart_layer(layer, config.encoder_attention_heads, activation) for layer in model.model.encoder.layers],
        pre_norm=pre,
        head=[],
        final_norm=spec.norm_of(model.model.encoder.layer_norm) if pre else None,
    )
    decoder = spec.ModelWeights(
        layers=[_bart_layer(layer, heads, activation) for layer in model.model.decoder.layers],
        pre_norm=pre,
        head=[spec.Affine(_lm_head(model).weight.detach().to(spec.DTYPE), _final_logits_bias(model))],
        final_norm=spec.norm_of(model.model.decoder.layer_norm) if pre else None,
        causal=True,
    )
    cross = [
        spec.CrossWeights(
            query=spec.affine_of(layer.encoder_attn.q_proj),
            key=spec.affine_of(layer.encoder_attn.k_proj),
            value=spec.affine_of(layer.encoder_attn.v_proj),
            output=spec.affine_of(layer.encoder_attn.out_proj),
            heads=heads,
            norm=spec.norm_of(layer.encoder_attn_layer_norm),
            scale=head_dim**-0.5,
        )
        for layer in model.model.decoder.layers
    ]
    return spec.Seq2SeqWeights(encoder, decoder, cross)


def _lm_head(model):
    return model.proj_out if hasattr(model, "proj_out") else model.lm_head  # Whisper's, or the others'


def _final_logits_bias(model):
    bias = getattr(model, "final_logits_bias", None)
    return None if bias is None else bias[0].detach().to(spec.DTYPE)


def first_layer_inputs(
    model, source: torch.Tensor, target: torch.Tensor, *, features: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of each stack's first layer for one example (the spec's captured embedding
    output: everything before the first layer acts on each token alone), read by a hook."""
    seen: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def record(_module, args) -> None:
            seen.setdefault(name, args[0].detach())

        return record

    handles = [
        stack.layers[0].register_forward_pre_hook(recorder(name))
        for name, stack in (("source", model.model.encoder), ("target", model.model.decoder))
    ]
    try:
        with torch.no_grad():
            if features:
                model(input_features=source[None], decoder_input_ids=target[None])
            else:
                model(input_ids=source[None], decoder_input_ids=target[None])
    finally:
        for handle in handles:
            handle.remove()
    return seen["source"][0].to(spec.DTYPE), seen["target"][0].to(spec.DTYPE)


def bart_embeddings(model, stack, ids: torch.Tensor) -> torch.Tensor:
    """A BART stack's first-layer input for one example: the token embedding times the embedding
    scale, plus the learned position ``2 + i`` (the offset), then ``layernorm_embedding``."""
    scale = float(getattr(stack.embed_tokens, "embed_scale", 1.0))
    positions = stack.embed_positions.weight[2 + torch.arange(ids.shape[0])]
    summed = stack.embed_tokens.weight[ids] * scale + positions
    return spec.norm_of(stack.layernorm_embedding)(summed.detach().to(spec.DTYPE))


def literal(
    family: str, model, source: torch.Tensor, target: torch.Tensor, mode: str
) -> tuple[spec.Seq2SeqTrace, spec.Seq2SeqDecomposition]:
    """One example without padding (source (S,), target (T,) ids): the literal forward pass and
    its literal decomposition (T5's relative position bias table is read through Hugging Face's
    bucketing; everything else is recomputed from the weights)."""
    if family == "whisper":  # the source is features: the stem's output frames are the pieces
        weights = bart_weights(model)
        source_embeddings, target_embeddings = first_layer_inputs(model, source, target, features=True)
        trace = spec.real_seq2seq_forward(weights, source_embeddings, target_embeddings)
    elif family.startswith("t5"):
        weights = t5_weights(model)
        shared = model.shared.weight.detach().to(spec.DTYPE)
        source_embeddings, target_embeddings = shared[source], shared[target]
        trace = spec.real_seq2seq_forward(weights, source_embeddings, target_embeddings)
    else:
        weights = bart_weights(model)
        if family in BART_LIKE:  # sinusoidal positions: the first layers' inputs as the model built them
            source_embeddings, target_embeddings = first_layer_inputs(model, source, target)
        else:
            source_embeddings = bart_embeddings(model, model.model.encoder, source)
            target_embeddings = bart_embeddings(model, model.model.decoder, target)
        trace = spec.real_seq2seq_forward(weights, source_embeddings, target_embeddings)
    return trace, spec.decompose_seq2seq(weights, source_embeddings, target_embeddings, trace, mode=mode)

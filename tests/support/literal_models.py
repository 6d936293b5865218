"""Tiny BERT, GPT-2 and Llama models for the literal-spec tests, readers of their weights into
:mod:`literal_spec`'s plain structures (by module name, so the engine is never involved), and the
literal decomposition of a padded BERT batch."""

from __future__ import annotations

import literal_spec as spec
import torch
import transformers as tf

HIDDEN, HEADS, KV_HEADS = 16, 4, 2  # the Llama models of the decoder spec tests


VOCAB = 50
LLAMA_LENGTHS = (7, 4)  # the real lengths of the Llama decoder spec tests' padded batch


def bert(seed: int) -> torch.nn.Module:
    config = tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        num_labels=3,
        hidden_act="gelu",
    )
    return spec.randomize(tf.BertForSequenceClassification(config), seed)


def bert_layers(encoder) -> list[spec.LayerWeights]:
    """The layers of a BertModel (``model.bert`` of a classifier), read by their module names."""
    heads = encoder.config.num_attention_heads
    return [
        spec.LayerWeights(
            query=spec.affine_of(layer.attention.self.query),
            key=spec.affine_of(layer.attention.self.key),
            value=spec.affine_of(layer.attention.self.value),
            output=spec.affine_of(layer.attention.output.dense),
            heads=heads,
            kv_heads=heads,
            norm1=spec.norm_of(layer.attention.output.LayerNorm),
            norm2=spec.norm_of(layer.output.LayerNorm),
            ffn_in=spec.affine_of(layer.intermediate.dense),
            activation=spec.GELU,
            ffn_out=spec.affine_of(layer.output.dense),
        )
        for layer in encoder.encoder.layer
    ]


def bert_weights(model) -> spec.ModelWeights:
    """The weights of a BertForSequenceClassification, read by their module names."""
    head = [spec.affine_of(model.bert.pooler.dense), spec.TANH, spec.affine_of(model.classifier)]
    return spec.ModelWeights(layers=bert_layers(model.bert), pre_norm=False, head=head)


def bert_embeddings(model, ids: torch.Tensor) -> torch.Tensor:
    """word + position + segment-0 embeddings of a BERT model's ``ids`` (N,), then the embedding
    LayerNorm: (N, d)."""
    return bert_embeddings_of(model.bert.embeddings, ids)


def bert_embeddings_of(embeddings, ids: torch.Tensor) -> torch.Tensor:
    """The same from a BERT-style embeddings module (BERT, ELECTRA, ...): positions 0..N-1, segment 0."""
    seq = ids.shape[0]
    summed = (
        embeddings.word_embeddings.weight[ids]
        + embeddings.position_embeddings.weight[:seq]
        + embeddings.token_type_embeddings.weight[0]
    )
    return spec.norm_of(embeddings.LayerNorm)(summed.detach().to(spec.DTYPE))


def literal_bert(model, ids, mask, **options) -> list[tuple[spec.Trace, spec.Decomposition]]:
    """Per example of the padded batch, alone and without its padding: the literal forward pass
    (checked against the model's logits) and its literal decomposition."""
    weights = bert_weights(model)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    results = []
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].bool()]
        embeddings = bert_embeddings(model, real)
        trace = spec.real_forward(weights, embeddings, pooled_row=0)
        spec.assert_matches(trace.logits, logits[b], float(logits.abs().max()), "literal forward vs model logits", 1e-9)
        results.append((trace, spec.decompose(weights, embeddings, trace, 0, **options)))
    return results


def gpt2(seed: int) -> torch.nn.Module:
    config = tf.GPT2Config(
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    return spec.randomize(tf.GPT2ForSequenceClassification(config), seed)


def conv1d_blocks(module, count: int) -> list[spec.Affine]:
    """GPT-2's Conv1D computes ``x @ W + b`` with W (in, out): its ``count`` output blocks as Affines."""
    weight = module.weight.detach().to(spec.DTYPE).T
    bias = module.bias.detach().to(spec.DTYPE)
    return [spec.Affine(w, b) for w, b in zip(weight.chunk(count, dim=0), bias.chunk(count))]


def gpt2_weights(model) -> spec.ModelWeights:
    layers = []
    for block in model.transformer.h:
        query, key, value = conv1d_blocks(block.attn.c_attn, 3)
        layers.append(
            spec.LayerWeights(
                query=query,
                key=key,
                value=value,
                output=conv1d_blocks(block.attn.c_proj, 1)[0],
                heads=model.config.n_head,
                kv_heads=model.config.n_head,
                norm1=spec.norm_of(block.ln_1),
                norm2=spec.norm_of(block.ln_2),
                ffn_in=conv1d_blocks(block.mlp.c_fc, 1)[0],
                activation=spec.GELU_TANH,
                ffn_out=conv1d_blocks(block.mlp.c_proj, 1)[0],
            )
        )
    return spec.ModelWeights(
        layers=layers,
        pre_norm=True,
        head=[spec.affine_of(model.score)],
        final_norm=spec.norm_of(model.transformer.ln_f),
        causal=True,
    )


def llama(seed: int, biases: bool) -> torch.nn.Module:
    """A Llama sequence classifier with grouped-query attention, every parameter redrawn from ``seed``;
    ``biases`` adds attention and MLP biases."""
    config = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=24,
        max_position_embeddings=32,
        num_labels=3,
        pad_token_id=0,
        attention_bias=biases,
        mlp_bias=biases,
        # eager attention: the literal forward reproduces its arithmetic (a float32 softmax); the fast
        # path explains the attention the model runs, and sdpa rounds differently (about 1e-7)
        attn_implementation="eager",
    )
    assert config.num_key_value_heads < config.num_attention_heads
    return spec.randomize(tf.LlamaForSequenceClassification(config), seed)


def rotary_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None)  # transformers 5.x
    return float(parameters["rope_theta"]) if parameters else float(config.rope_theta)


def rotary(theta: float, head_dim: int):
    """Rotate (N, head_dim) vectors by their positions 0..N-1: ``x cos + rotate_half(x) sin`` with
    angles ``position / theta^(2j / head_dim)``, computed in float32 as the model does."""

    def rotate(x: torch.Tensor) -> torch.Tensor:
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
        frequencies = 1.0 / (theta**exponents)
        angles = torch.arange(x.shape[0], dtype=torch.float32)[:, None] * frequencies[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos().to(spec.DTYPE), angles.sin().to(spec.DTYPE)
        half = head_dim // 2
        rotated_half = torch.cat([-x[:, half:], x[:, :half]], dim=-1)
        return x * cos + rotated_half * sin

    return rotate


def rms_norm(module) -> spec.NormWeights:
    norm = spec.norm_of(module, kind="rms")
    norm.real_in_float32 = True
    return norm


def llama_weights(model) -> spec.ModelWeights:
    layers = []
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        layers.append(
            spec.LayerWeights(
                query=spec.affine_of(attention.q_proj),
                key=spec.affine_of(attention.k_proj),
                value=spec.affine_of(attention.v_proj),
                output=spec.affine_of(attention.o_proj),
                heads=model.config.num_attention_heads,
                kv_heads=model.config.num_key_value_heads,
                norm1=rms_norm(layer.input_layernorm),
                norm2=rms_norm(layer.post_attention_layernorm),
                ffn_in=spec.affine_of(mlp.up_proj),
                ffn_gate=spec.affine_of(mlp.gate_proj),
                activation=spec.SILU,
                ffn_out=spec.affine_of(mlp.down_proj),
            )
        )
    head_dim = HIDDEN // HEADS
    return spec.ModelWeights(
        layers=layers,
        pre_norm=True,
        head=[spec.affine_of(model.score)],
        final_norm=rms_norm(model.model.norm),
        causal=True,
        rotary=rotary(rotary_theta(model.config), head_dim),
        softmax=spec.float32_softmax,
    )

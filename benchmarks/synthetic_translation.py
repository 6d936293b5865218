"""A synthetic translation task with a known word alignment, and the small BART (or Marian) model trained on it.

The source language is verb-final with adjectives before the noun; the target language is English
words in verb-second order with adjectives after the noun. Every source word is translated by a
fixed lexicon, so each target word's source words are known:

- word substitution: one source word -> one target word (most of the lexicon);
- reordering: adjective-noun swap inside a noun phrase, and the verb moved from the end of the
  clause to the second place (after the subject, or after a fronted time word, which then pushes the
  subject behind the verb);
- many-to-one: a past-tense verb is the stem followed by the particle ``ta`` (two source words ->
  one target word, ``riko ta`` -> ``saw``), and three nouns are two source words (``sumi lo`` -> ``fish``);
- one-to-many: four nouns are one source word and two target words (``pelu`` -> ``ice cream``).

The gold alignment holds only sure links (Och & Ney): every source word of a lexicon entry is linked
to every target word of that entry. Tokens are words (a word-level vocabulary, no tokenizer).

Example::

    pairs = generate_pairs(3, seed=0)
    vocabulary = Vocabulary.build()
    model = load_model()               # the stored weights in models/bart-synthetic-alignment

``python benchmarks/synthetic_translation.py`` retrains the model and stores it (a few minutes on one
CPU thread); ``benchmarks/translation_alignment.py --train`` does the same before its benchmark. The
stored model is a BART (``BartForConditionalGeneration``: post-LN, learned positions, biases in every
layer); ``--architecture marian`` trains a ``MarianMTModel`` of the same size (the same layers with
sinusoidal positions) instead.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parent.parent
#: Where the trained weights, the vocabulary and the training record are stored.
MODEL_DIR = REPO / "models" / "bart-synthetic-alignment"

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
MIN_WORDS, MAX_WORDS = 4, 12

# The lexicon: target words -> source words. Source words are fixed pseudo-words (CV syllables).
DETERMINERS = {"the": ("ka",), "a": ("mi",)}
NOUNS = {
    ("dog",): ("bato",),
    ("cat",): ("neko",),
    ("bird",): ("tori",),
    ("horse",): ("uma",),
    ("cow",): ("gyu",),
    ("girl",): ("sato",),
    ("boy",): ("roku",),
    ("man",): ("hito",),
    ("woman",): ("joki",),
    ("queen",): ("mera",),
    ("farmer",): ("nofu",),
    ("teacher",): ("sesi",),
    ("child",): ("kodo",),
    ("river",): ("kawa",),
    ("house",): ("ieno",),
    ("tree",): ("kiba",),
    # many-to-one: two source words, one target word
    ("fish",): ("sumi", "lo"),
    ("king",): ("raka", "tem"),
    ("doctor",): ("isa", "hu"),
    # one-to-many: one source word, two target words
    ("ice", "cream"): ("pelu",),
    ("fire", "truck"): ("hiku",),
    ("tea", "cup"): ("chawa",),
    ("post", "office"): ("yubi",),
}
ADJECTIVES = {
    "big": "ooki",
    "small": "chisa",
    "red": "aka",
    "green": "mido",
    "old": "furu",
    "young": "waka",
    "happy": "ureshi",
    "sad": "kana",
    "quick": "haya",
    "lazy": "daru",
}
# verb stem -> (present, past) target words; the past is the stem followed by the particle PAST.
VERBS = {
    "riko": ("sees", "saw"),
    "tabe": ("eats", "ate"),
    "suki": ("likes", "liked"),
    "miku": ("finds", "found"),
    "toru": ("takes", "took"),
    "tasu": ("helps", "helped"),
    "otte": ("follows", "followed"),
    "yobu": ("calls", "called"),
    "nagame": ("watches", "watched"),
    "shiru": ("knows", "knew"),
}
PAST = "ta"
ADVERBS = {"quickly": "hayaku", "slowly": "yukuri", "often": "yoku", "rarely": "mare", "quietly": "shizu", "gladly": "yoroko"}
TIMES = {"today": "kyo", "yesterday": "kino", "tomorrow": "ashi", "now": "ima"}
NEGATION = ("not", "nai")  # target word, source word (before the verb in the source)


@dataclass(frozen=True)
class SentencePair:
    """One sentence and its translation with the gold (sure) word alignment.

    Attributes:
        source: the source words, without ``</s>``.
        target: the target words, without ``</s>``.
        alignment: sure links as ``(source index, target index)`` pairs, 0-based word indices.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    alignment: frozenset[tuple[int, int]]


@dataclass(frozen=True)
class _Unit:
    """One lexicon entry in a sentence: its source words and target words, all linked to each other."""

    source: tuple[str, ...]
    target: tuple[str, ...]


def _noun_phrase(rng: random.Random) -> tuple[list[_Unit], list[_Unit]]:
    """A noun phrase in source order (det adj* noun) and target order (det noun adj*)."""
    target_det = rng.choice(sorted(DETERMINERS))
    determiner = _Unit(DETERMINERS[target_det], (target_det,))
    target_noun = rng.choice(sorted(NOUNS))
    noun = _Unit(NOUNS[target_noun], target_noun)
    adjectives = [_Unit((ADJECTIVES[word],), (word,)) for word in rng.sample(sorted(ADJECTIVES), rng.choice((0, 0, 1, 1, 2)))]
    return [determiner, *adjectives, noun], [determiner, noun, *adjectives]


def _sample_units(rng: random.Random) -> tuple[list[_Unit], list[_Unit]]:
    """One clause as lexicon entries in source order and in target order."""
    subject_source, subject_target = _noun_phrase(rng)
    time_word = rng.choice(sorted(TIMES)) if rng.random() < 0.3 else None
    has_object = rng.random() < 0.7
    object_source, object_target = _noun_phrase(rng) if has_object else ([], [])
    adverb = rng.choice(sorted(ADVERBS)) if rng.random() < 0.35 else None
    negated = rng.random() < 0.25
    stem = rng.choice(sorted(VERBS))
    past = rng.random() < 0.4
    verb = _Unit((stem, PAST) if past else (stem,), (VERBS[stem][1 if past else 0],))
    time_unit = [_Unit((TIMES[time_word],), (time_word,))] if time_word else []
    adverb_unit = [_Unit((ADVERBS[adverb],), (adverb,))] if adverb else []
    negation_unit = [_Unit((NEGATION[1],), (NEGATION[0],))] if negated else []
    # Source: [time] subject [object] [adverb] [negation] verb [past]   (verb-final)
    source = time_unit + subject_source + object_source + adverb_unit + negation_unit + [verb]
    # Target: verb second: time verb subject ... or subject verb ...
    front = time_unit + [verb] + subject_target if time_word else subject_target + [verb]
    target = front + negation_unit + adverb_unit + object_target
    return source, target


def _flatten(source_units: list[_Unit], target_units: list[_Unit]) -> SentencePair:
    source_index: dict[int, list[int]] = {}
    source: list[str] = []
    for unit in source_units:
        source_index[id(unit)] = list(range(len(source), len(source) + len(unit.source)))
        source.extend(unit.source)
    target: list[str] = []
    links = set()
    for unit in target_units:
        for target_position in range(len(target), len(target) + len(unit.target)):
            links.update((source_position, target_position) for source_position in source_index[id(unit)])
        target.extend(unit.target)
    return SentencePair(tuple(source), tuple(target), frozenset(links))


def generate_pair(rng: random.Random) -> SentencePair:
    """One sentence pair of 4 to 12 source words (and at most 12 target words), drawn with ``rng``."""
    while True:
        pair = _flatten(*_sample_units(rng))
        if MIN_WORDS <= len(pair.source) <= MAX_WORDS and len(pair.target) <= MAX_WORDS:
            return pair


def generate_pairs(count: int, seed: int, exclude: set[tuple[str, ...]] | None = None) -> list[SentencePair]:
    """``count`` sentence pairs, the same for the same seed; source sentences in ``exclude`` are skipped."""
    rng = random.Random(seed)
    pairs: list[SentencePair] = []
    while len(pairs) < count:
        pair = generate_pair(rng)
        if exclude is None or pair.source not in exclude:
            pairs.append(pair)
    return pairs


def held_out_pairs(count: int, seed: int = 1) -> list[SentencePair]:
    """Sentences for evaluation, none of them among the training sentences (training draws from seed 0)."""
    return generate_pairs(count, seed, exclude={pair.source for pair in generate_pairs(TRAIN_SENTENCES, TRAIN_SEED)})


@dataclass(frozen=True)
class Vocabulary:
    """The word-level vocabulary shared by both languages: ``<pad>`` (also the decoder's start token),
    ``</s>``, ``<unk>``, then the source words, then the target words."""

    words: tuple[str, ...]

    @classmethod
    def build(cls) -> Vocabulary:
        source = {word for words in NOUNS.values() for word in words} | {word for words in DETERMINERS.values() for word in words}
        source |= set(ADJECTIVES.values()) | set(VERBS) | {PAST} | set(ADVERBS.values()) | set(TIMES.values()) | {NEGATION[1]}
        target = {word for words in NOUNS for word in words} | set(DETERMINERS) | set(ADJECTIVES) | set(TIMES) | set(ADVERBS)
        target |= {form for forms in VERBS.values() for form in forms} | {NEGATION[0]}
        assert not source & target, source & target
        return cls((PAD, EOS, UNK, *sorted(source), *sorted(target)))

    @property
    def index(self) -> dict[str, int]:
        return {word: position for position, word in enumerate(self.words)}

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        return 1

    def encode(self, words: Sequence[str]) -> list[int]:
        index = self.index
        return [index.get(word, 2) for word in words]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.words[i] for i in ids]


@dataclass
class Batch:
    """Padded tensors for a batch of pairs (right padding).

    Attributes:
        src_ids: (batch, S) source words then ``</s>``, padded with ``<pad>``.
        src_mask: (batch, S) 1 on real tokens.
        tgt_ids: (batch, T) the decoder's input: ``<pad>`` (start) then the target words.
        labels: (batch, T) the target words then ``</s>``; -100 on padding.
    """

    src_ids: Tensor
    src_mask: Tensor
    tgt_ids: Tensor
    labels: Tensor


def make_batch(pairs: Sequence[SentencePair], vocabulary: Vocabulary) -> Batch:
    """Encode and right-pad ``pairs`` (teacher forcing: the decoder reads the gold target)."""
    sources = [vocabulary.encode(pair.source) + [vocabulary.eos_id] for pair in pairs]
    targets = [vocabulary.encode(pair.target) for pair in pairs]
    width_s, width_t = max(map(len, sources)), max(map(len, targets)) + 1
    src_ids = torch.full((len(pairs), width_s), vocabulary.pad_id)
    src_mask = torch.zeros((len(pairs), width_s), dtype=torch.long)
    tgt_ids = torch.full((len(pairs), width_t), vocabulary.pad_id)
    labels = torch.full((len(pairs), width_t), -100)
    for row, (source, target) in enumerate(zip(sources, targets)):
        src_ids[row, : len(source)] = torch.tensor(source)
        src_mask[row, : len(source)] = 1
        tgt_ids[row, 1 : len(target) + 1] = torch.tensor(target, dtype=torch.long)
        labels[row, : len(target) + 1] = torch.tensor(target + [vocabulary.eos_id])
    return Batch(src_ids, src_mask, tgt_ids, labels)


# Model and training ----------------------------------------------------------------------------

TRAIN_SEED = 0
TRAIN_SENTENCES = 40_000
CONFIG = {
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 256,
    "decoder_ffn_dim": 256,
    "max_position_embeddings": 32,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "scale_embedding": True,
    "activation_function": "gelu",
}


def build_model(vocabulary: Vocabulary, seed: int = 0, architecture: str = "bart"):
    """A fresh model from :data:`CONFIG`: ``"bart"`` (``BartForConditionalGeneration``: post-LN, learned
    positions, ``layernorm_embedding``) or ``"marian"`` (``MarianMTModel``: sinusoidal positions); both
    with scaled embeddings shared by encoder, decoder and LM head."""
    import transformers

    config_classes = {"bart": transformers.BartConfig, "marian": transformers.MarianConfig}
    model_classes = {"bart": transformers.BartForConditionalGeneration, "marian": transformers.MarianMTModel}
    if architecture not in config_classes:
        raise ValueError(f"architecture must be one of {sorted(config_classes)}, got {architecture!r}.")
    torch.manual_seed(seed)
    size = {"vocab_size": len(vocabulary.words)}
    if architecture == "marian":
        size["decoder_vocab_size"] = len(vocabulary.words)
    config = config_classes[architecture](
        **size,
        pad_token_id=vocabulary.pad_id,
        eos_token_id=vocabulary.eos_id,
        bos_token_id=vocabulary.eos_id,
        decoder_start_token_id=vocabulary.pad_id,
        forced_eos_token_id=None,
        **CONFIG,
    )
    return model_classes[architecture](config)


def load_model(path: Path | str = MODEL_DIR):
    """The stored model (eval mode, float32, eager attention so attention weights can be returned)."""
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(path, attn_implementation="eager").eval()


@torch.no_grad()
def greedy_translate(
    model, pairs: Sequence[SentencePair], vocabulary: Vocabulary, batch_size: int = 256
) -> list[tuple[str, ...]]:
    """Greedy decoding of each source sentence (up to 2 + the longest allowed target)."""
    outputs: list[tuple[str, ...]] = []
    for start in range(0, len(pairs), batch_size):
        batch = make_batch(pairs[start : start + batch_size], vocabulary)
        decoded = torch.full((len(batch.src_ids), 1), vocabulary.pad_id)
        encoder_outputs = model.get_encoder()(input_ids=batch.src_ids, attention_mask=batch.src_mask)
        for _ in range(MAX_WORDS + 2):
            logits = model(encoder_outputs=encoder_outputs, attention_mask=batch.src_mask, decoder_input_ids=decoded).logits
            decoded = torch.cat([decoded, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        for row in decoded[:, 1:].tolist():
            words = row[: row.index(vocabulary.eos_id)] if vocabulary.eos_id in row else row
            outputs.append(tuple(vocabulary.decode(words)))
    return outputs


def translation_accuracy(model, pairs: Sequence[SentencePair], vocabulary: Vocabulary) -> dict[str, float]:
    """Exact match of greedy translations, and teacher-forced token accuracy (target words and ``</s>``)."""
    translations = greedy_translate(model, pairs, vocabulary)
    exact = sum(hypothesis == pair.target for hypothesis, pair in zip(translations, pairs)) / len(pairs)
    batch = make_batch(pairs, vocabulary)
    with torch.no_grad():
        logits = model(input_ids=batch.src_ids, attention_mask=batch.src_mask, decoder_input_ids=batch.tgt_ids).logits
    real = batch.labels != -100
    token = ((logits.argmax(-1) == batch.labels) & real).sum().item() / real.sum().item()
    return {"exact_match": exact, "token_accuracy": token}


def train(
    output: Path | str = MODEL_DIR,
    steps: int = 2500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = TRAIN_SEED,
    log_every: int = 250,
    command: str = "python benchmarks/synthetic_translation.py",
    architecture: str = "bart",
):
    """Train the model on :data:`TRAIN_SENTENCES` generated pairs and store it with its vocabulary and record.

    Returns:
        The trained model (eval mode).
    """
    vocabulary = Vocabulary.build()
    pairs = generate_pairs(TRAIN_SENTENCES, seed)
    model = build_model(vocabulary, seed, architecture).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = steps // 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))
    )
    rng = random.Random(seed)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        batch = make_batch(rng.sample(pairs, batch_size), vocabulary)
        loss = model(
            input_ids=batch.src_ids, attention_mask=batch.src_mask, decoder_input_ids=batch.tgt_ids, labels=batch.labels
        ).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps}: loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    held_out = held_out_pairs(1000)
    accuracy = translation_accuracy(model, held_out, vocabulary)
    print(
        f"held-out (1000 sentences): exact match {accuracy['exact_match']:.3f}, token accuracy {accuracy['token_accuracy']:.4f}"
    )
    output = Path(output)
    model.save_pretrained(output)
    (output / "vocab.json").write_text(json.dumps(list(vocabulary.words), indent=0) + "\n")
    record = {
        "command": command,
        "architecture": architecture,
        "train_sentences": TRAIN_SENTENCES,
        "train_seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "held_out_sentences": len(held_out),
        "held_out_seed": 1,
        "held_out_exact_match": accuracy["exact_match"],
        "held_out_token_accuracy": round(accuracy["token_accuracy"], 5),
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
    }
    (output / "training_info.json").write_text(json.dumps(record, indent=2) + "\n")
    return model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and store the synthetic-translation model.")
    parser.add_argument("--output", default=str(MODEL_DIR))
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--architecture", choices=("bart", "marian"), default="bart")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(["python benchmarks/synthetic_translation.py", *(sys.argv[1:] if argv is None else argv)])
    train(args.output, steps=args.steps, lr=args.lr, command=command, architecture=args.architecture)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

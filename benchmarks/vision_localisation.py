"""Localisation: do the attributions of a small vision transformer point at the object that decides
its label?

The images are synthetic, so the answer is known: each 32 x 32 image holds clutter (noise and small
blobs of random colours) and one object, a shape of one of four kinds (filled square, hollow
square, plus, diagonal cross) of a random colour at a random place; the label is the kind of the
shape. A ViT-style classifier (``ViTForImageClassification`` from a config: 4 layers, hidden size
64, 4 x 4 patches) is trained on such images from scratch, in a few minutes on two CPU cores.

On held-out images every method scores the 64 patches for the true label, and two measures compare
the scores with the object's pixel mask:

* **pointing game**: the patch with the highest score overlaps the object;
* **positive share inside**: of the positive scores, the share that falls on the object (each
  patch's positive score weighted by the fraction of its pixels inside the object mask).

Methods: DecompX exact (biases decomposed) and fast (bias-free, one frozen forward and one backward
pass), Integrated Gradients and Input x Gradient (Captum, on the pixels, summed over each patch's
pixels and channels; IG from a black image), attention rollout (Abnar and Zuidema, 2020: head-averaged
attention plus identity, row-normalized, multiplied over the layers, read at the class token) and
GradCAM-style attention gradients (the last layer's attention times its gradient, positive part,
averaged over heads, at the class token). A random ranking is given for reference (its expected
values: the share of patches that touch the object, and the object's share of the image).

Usage::

    nice python benchmarks/vision_localisation.py                    # train, evaluate, write results
    python benchmarks/vision_localisation.py --quick --out /tmp/loc   # seconds: a smoke run
    python benchmarks/vision_localisation.py --save-model models/vit-shapes   # also keep the model
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

IMAGE, PATCH, CHANNELS = 32, 4, 3
GRID = IMAGE // PATCH
SHAPES = ("filled square", "hollow square", "plus", "diagonal cross")
SHAPE_SIZE = 9
CLUTTER_BLOBS = 10
TEST_SEED = 10_000  # the held-out images, whatever the training seed
METHODS = (
    "DecompX exact",
    "DecompX fast",
    "Integrated Gradients",
    "Input x Gradient",
    "attention rollout",
    "attention gradients (GradCAM-style)",
)


# ----------------------------------------------------------------------------------------------
# Data


def shape_mask(kind: int, size: int = SHAPE_SIZE) -> Tensor:
    """(size, size) bool: the pixels of a shape of kind ``kind`` (an index into :data:`SHAPES`)."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    middle = size // 2
    if kind == 0:
        mask[1:-1, 1:-1] = True
    elif kind == 1:
        mask[:, :] = True
        mask[2:-2, 2:-2] = False
    elif kind == 2:
        mask[middle - 1 : middle + 1 + 1, :] = True
        mask[:, middle - 1 : middle + 1 + 1] = True
    else:
        index = torch.arange(size)
        for shift in (-1, 0, 1):
            keep = (index + shift >= 0) & (index + shift < size)
            mask[index[keep], (index + shift)[keep]] = True
            mask[index[keep], (size - 1 - index - shift)[keep]] = True
    return mask


@dataclass
class Images:
    """pixels (count, 3, 32, 32); labels (count,); masks (count, 32, 32) bool, the object's pixels."""

    pixels: Tensor
    labels: Tensor
    masks: Tensor


def make_images(count: int, seed: int) -> Images:
    """Clutter, then one shape on top at a random place (not aligned with the patch grid)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = 0.15 * torch.randn(count, CHANNELS, IMAGE, IMAGE, generator=generator)
    labels = torch.randint(0, len(SHAPES), (count,), generator=generator)
    masks = torch.zeros(count, IMAGE, IMAGE, dtype=torch.bool)
    for index in range(count):
        for _ in range(CLUTTER_BLOBS):
            side = int(torch.randint(2, 4, (1,), generator=generator))
            row, col = (int(v) for v in torch.randint(0, IMAGE - side + 1, (2,), generator=generator))
            colour = torch.rand(CHANNELS, 1, 1, generator=generator) * 2 - 1
            pixels[index, :, row : row + side, col : col + side] = colour
        shape = shape_mask(int(labels[index]))
        row, col = (int(v) for v in torch.randint(0, IMAGE - SHAPE_SIZE + 1, (2,), generator=generator))
        colour = (0.6 + 0.4 * torch.rand(CHANNELS, generator=generator)) * torch.where(
            torch.rand(CHANNELS, generator=generator) < 0.5, -1.0, 1.0
        )
        window = pixels[index, :, row : row + SHAPE_SIZE, col : col + SHAPE_SIZE]
        window[:, shape] = colour.view(CHANNELS, 1)
        masks[index, row : row + SHAPE_SIZE, col : col + SHAPE_SIZE] = shape
    return Images(pixels, labels, masks)


def patch_fractions(masks: Tensor) -> Tensor:
    """(count, patches): the fraction of each patch's pixels inside the object, row-major patches."""
    count = masks.shape[0]
    return masks.float().view(count, GRID, PATCH, GRID, PATCH).mean(dim=(2, 4)).reshape(count, GRID * GRID)


# ----------------------------------------------------------------------------------------------
# The model


def build_model(seed: int):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=IMAGE,
        patch_size=PATCH,
        num_channels=CHANNELS,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=len(SHAPES),
        id2label=dict(enumerate(SHAPES)),
        label2id={name: index for index, name in enumerate(SHAPES)},
    )
    config._attn_implementation = "eager"  # attention rollout and attention gradients read the probabilities
    return ViTForImageClassification(config)


def accuracy(model, images: Images, batch: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, images.labels.numel(), batch):
            logits = model(pixel_values=images.pixels[start : start + batch]).logits
            correct += int((logits.argmax(-1) == images.labels[start : start + batch]).sum())
    return correct / images.labels.numel()


def train(model, steps: int, batch: int, seed: int, lr: float = 2e-3, log: Callable[[str], None] = print) -> dict:
    """AdamW with a linear warm-up and cosine decay, on fresh images every step (drawn from ``seed``)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        images = make_images(batch, seed=seed * 1_000_003 + step)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=images.pixels).logits, images.labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)")
    model.eval()
    return {"steps": steps, "batch": batch, "seed": seed, "lr": lr, "seconds": round(time.perf_counter() - started, 1)}


# ----------------------------------------------------------------------------------------------
# The methods: (count, patches) scores for the given labels


def _to_patches(pixel_scores: Tensor) -> Tensor:
    """(count, 3, 32, 32) pixel attributions -> (count, patches), summed over each patch."""
    count = pixel_scores.shape[0]
    return pixel_scores.sum(1).view(count, GRID, PATCH, GRID, PATCH).sum(dim=(2, 4)).reshape(count, GRID * GRID)


def decompx_scores(model, pixels: Tensor, labels: Tensor, *, fast: bool) -> Tensor:
    from captum_decompx import DecompX

    explainer = DecompX(model, include_biases=not fast, algorithm="fast" if fast else "exact")
    return explainer.attribute(pixels, target=labels)[:, 1:]  # the class token is no place in the image


def integrated_gradients_scores(model, pixels: Tensor, labels: Tensor, steps: int = 32) -> Tensor:
    from captum.attr import IntegratedGradients

    method = IntegratedGradients(lambda x: model(pixel_values=x).logits)
    return _to_patches(method.attribute(pixels, target=labels, baselines=torch.zeros_like(pixels), n_steps=steps))


def input_x_gradient_scores(model, pixels: Tensor, labels: Tensor) -> Tensor:
    from captum.attr import InputXGradient

    inputs = pixels.clone().requires_grad_(True)
    return _to_patches(InputXGradient(lambda x: model(pixel_values=x).logits).attribute(inputs, target=labels).detach())


def attention_rollout_scores(model, pixels: Tensor, labels: Tensor) -> Tensor:
    with torch.no_grad():
        attentions = model(pixel_values=pixels, output_attentions=True).attentions
    tokens = attentions[0].shape[-1]
    rollout = torch.eye(tokens).expand(pixels.shape[0], tokens, tokens)
    for layer in attentions:
        mixed = layer.mean(1) + torch.eye(tokens)
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    return rollout[:, 0, 1:]


def attention_gradient_scores(model, pixels: Tensor, labels: Tensor) -> Tensor:
    with torch.enable_grad():
        output = model(pixel_values=pixels, output_attentions=True)
        last = output.attentions[-1]
        logit = output.logits.gather(1, labels.view(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(logit, last)
    return (last.detach() * gradient).clamp(min=0).mean(1)[:, 0, 1:]


def method_calls(ig_steps: int) -> dict[str, Callable[[object, Tensor, Tensor], Tensor]]:
    return {
        "DecompX exact": lambda m, x, y: decompx_scores(m, x, y, fast=False),
        "DecompX fast": lambda m, x, y: decompx_scores(m, x, y, fast=True),
        "Integrated Gradients": lambda m, x, y: integrated_gradients_scores(m, x, y, ig_steps),
        "Input x Gradient": input_x_gradient_scores,
        "attention rollout": attention_rollout_scores,
        "attention gradients (GradCAM-style)": attention_gradient_scores,
    }


# ----------------------------------------------------------------------------------------------
# The measures


def pointing_game(scores: Tensor, fractions: Tensor) -> Tensor:
    """(count,) bool: the highest-scoring patch overlaps the object."""
    return fractions.gather(1, scores.argmax(1, keepdim=True)).squeeze(1) > 0


def positive_share_inside(scores: Tensor, fractions: Tensor) -> Tensor:
    """(count,) the share of the positive scores that falls on the object (0 without a positive score)."""
    positive = scores.clamp(min=0)
    total = positive.sum(1)
    return torch.where(total > 0, (positive * fractions).sum(1) / total.clamp(min=1e-30), torch.zeros_like(total))


def evaluate(model, images: Images, ig_steps: int, batch: int = 16, log: Callable[[str], None] = print) -> dict:
    """Per method: the mean pointing game and positive share inside, and seconds per image."""
    fractions = patch_fractions(images.masks)
    results: dict[str, dict] = {}
    scores_of: dict[str, Tensor] = {}
    for name, call in method_calls(ig_steps).items():
        started = time.perf_counter()
        parts = [
            call(model, images.pixels[s : s + batch], images.labels[s : s + batch])
            for s in range(0, images.labels.numel(), batch)
        ]
        seconds = time.perf_counter() - started
        scores = torch.cat(parts).detach().float()
        scores_of[name] = scores
        results[name] = {
            "pointing_game": float(pointing_game(scores, fractions).float().mean()),
            "positive_share_inside": float(positive_share_inside(scores, fractions).mean()),
            "seconds_per_image": seconds / images.labels.numel(),
        }
        log(f"{name}: pointing {results[name]['pointing_game']:.3f}, share inside {results[name]['positive_share_inside']:.3f}")
    results["random (expected)"] = {
        "pointing_game": float((fractions > 0).float().mean(1).mean()),
        "positive_share_inside": float(fractions.mean(1).mean()),
        "seconds_per_image": 0.0,
    }
    return {"results": results, "scores": scores_of}


# ----------------------------------------------------------------------------------------------
# The report


def plot_examples(images: Images, scores: dict[str, Tensor], path: str, count: int = 4, dpi: int = 100) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(scores)
    figure = Figure(figsize=(1.6 * (2 + len(names)), 1.7 * count), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(count, 2 + len(names), squeeze=False)
    for row in range(count):
        shown = images.pixels[row]
        shown = ((shown - shown.min()) / (shown.max() - shown.min() + 1e-12)).permute(1, 2, 0).numpy()
        axes[row, 0].imshow(shown)
        axes[row, 1].imshow(images.masks[row].numpy(), cmap="gray")
        for column, name in enumerate(names, start=2):
            grid = scores[name][row].view(GRID, GRID)
            limit = float(grid.abs().max()) or 1.0
            axes[row, column].imshow(grid.numpy(), cmap="bwr", vmin=-limit, vmax=limit)
            axes[row, column].contour(
                patch_fractions(images.masks[row : row + 1])[0].view(GRID, GRID).numpy() > 0,
                levels=[0.5],
                colors="k",
                linewidths=0.8,
            )
        if row == 0:
            for column, title in enumerate(["image", "object"] + names):
                axes[0, column].set_title(title.replace(" (GradCAM-style)", "\n(GradCAM-style)"), fontsize=7)
        axes[row, 0].set_ylabel(SHAPES[int(images.labels[row])], fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)


def write_report(out: str, command: str, info: dict, results: dict) -> None:
    rows = [
        f"| {name} | {values['pointing_game']:.3f} | {values['positive_share_inside']:.3f} | {1000 * values['seconds_per_image']:.1f} |"
        for name, values in results.items()
    ]
    text = "\n".join(
        [
            "# Localisation: attributions against the object that decides the label",
            "",
            f"Command: `{command}`  ",
            f"Date: {info['date']}; machine: {info['machine']}; torch {info['torch']}, transformers {info['transformers']}; "
            f"torch threads {info['threads']}; load average before the run {info['load_average']}.",
            "",
            f"Model: ViT, 4 layers, hidden 64, 4 heads, 4 x 4 patches on 32 x 32 images; {info['model_source']}: trained "
            + " then ".join(
                f"{phase['steps']} steps of {phase['batch']} fresh images (data seed {phase['seed']}, lr {phase['lr']:g}, "
                f"{phase['seconds']} s)"
                for phase in info["training"]
            )
            + "; accuracy on the "
            f"{info['test_images']} held-out images: {info['accuracy']:.3f}. Scores for the true label; the patches only "
            "(DecompX's class-token share is no place in the image).",
            "",
            "| method | pointing game | positive share inside | ms per image |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            "Pointing game: the top-scoring patch overlaps the object. Positive share inside: the share of the positive "
            "scores on the object's pixels (each patch weighted by the fraction of its pixels inside the object). "
            "Random (expected): a uniformly random top patch, and scores spread evenly. Times are wall time per image "
            "in batches of 16 on this machine, shared with other work; compare them within this run only.",
            "",
            "## Examples",
            "",
            "Per row: the image, the object's mask, and each method's patch scores for the true label (red towards "
            "it, blue away from it, each map scaled to its own largest magnitude; the object's patches outlined).",
            "",
            "![examples](vision_localisation.png)",
            "",
        ]
    )
    with open(os.path.join(out, "vision_localisation.md"), "w") as handle:
        handle.write(text)


def saved_phases(path: str) -> list[dict]:
    """The training phases recorded with a model saved by ``--save-model``."""
    with open(os.path.join(path, "training_info.json")) as handle:
        saved = json.load(handle)
    training = saved["training"]
    if isinstance(training, dict):  # one phase, saved before phases were recorded
        training = [{"seed": saved.get("seed", 0), "lr": 2e-3, **training}]
    return training


def machine_info() -> dict:
    import transformers

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "load_average": ", ".join(f"{value:.2f}" for value in load),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--batch", type=int, default=64, help="training images per step")
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the model is small: one is fastest on a busy machine)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 steps, 8 test images, 4 IG steps")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--save-model", default=None, help="also save the trained model (save_pretrained) there")
    parser.add_argument("--load-model", default=None, help="evaluate this saved model instead of training one")
    parser.add_argument("--init-model", default=None, help="train this saved model further (its phases are kept)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.test_images, args.ig_steps = 20, 8, 4
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    info = machine_info()
    if args.load_model:
        from transformers import ViTForImageClassification

        model = ViTForImageClassification.from_pretrained(args.load_model, attn_implementation="eager").eval()
        training = saved_phases(args.load_model)
        info["model_source"] = f"loaded from {args.load_model}, trained by this script (--save-model)"
    elif args.init_model:
        from transformers import ViTForImageClassification

        model = ViTForImageClassification.from_pretrained(args.init_model, attn_implementation="eager")
        training = saved_phases(args.init_model) + [train(model, args.steps, args.batch, args.seed, args.lr)]
        info["model_source"] = f"trained further in this run from {args.init_model}"
    else:
        model = build_model(args.seed)
        training = [train(model, args.steps, args.batch, args.seed, args.lr)]
        info["model_source"] = "trained in this run"
    if args.save_model:
        model.save_pretrained(args.save_model)
        with open(os.path.join(args.save_model, "training_info.json"), "w") as handle:
            json.dump({"training": training, "script": "benchmarks/vision_localisation.py"}, handle, indent=2)
    test = make_images(args.test_images, seed=TEST_SEED)
    info.update(training=training, test_images=args.test_images, accuracy=accuracy(model, test))
    print(f"accuracy on {args.test_images} held-out images: {info['accuracy']:.3f}")
    evaluated = evaluate(model, test, args.ig_steps)
    command = "python benchmarks/vision_localisation.py " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    write_report(args.out, command.strip(), info, evaluated["results"])
    with open(os.path.join(args.out, "vision_localisation.json"), "w") as handle:
        json.dump({"command": command.strip(), **info, "results": evaluated["results"]}, handle, indent=2)
    plot_examples(test, evaluated["scores"], os.path.join(args.out, "vision_localisation.png"), count=min(4, args.test_images))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

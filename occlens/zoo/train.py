"""Train the shipped shapes CNN: ``python -m occlens.zoo.train [--seed 0] [--out DIR]``.

Writes ``shapes.safetensors`` (the weights), ``shapes.json`` (metadata: classes, input size,
training seed and time, held-out accuracy) and the sample images under ``samples/``. Every random
choice comes from `--seed` through explicit generators, so a run is repeatable on one machine.
Held-out images come from `HELDOUT_KEY`, a key no training run uses.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._data import CLASSES, ShapesData, shapes_dataset
from ._model import METADATA, WEIGHTS, ShapesNet
from ._samples import SAMPLES_KEY, write_samples

__all__ = ["HELDOUT_KEY", "accuracy", "init_weights", "main", "train"]

HELDOUT_KEY = 1_000_000
"""Key of the held-out images; training data keys stay below it (``seed * 1000 + block``)."""

_BLOCK = 1000  # images generated per key


def init_weights(model: nn.Module, *, key: int) -> nn.Module:
    """Kaiming-normal weights and zero biases drawn from `key`, never from global RNG state.

    >>> import torch
    >>> from occlens.zoo import ShapesNet
    >>> from occlens.zoo.train import init_weights
    >>> with torch.device("meta"):
    ...     net = ShapesNet()
    >>> a = init_weights(net.to_empty(device="cpu"), key=0).features[0].weight.clone()
    >>> bool((a == init_weights(net, key=0).features[0].weight).all())
    True
    """
    rng = torch.Generator().manual_seed(key)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            else:
                nn.init.kaiming_normal_(parameter, nonlinearity="relu", generator=rng)
    return model


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, batch: int = 500) -> float:
    """Fraction of `images` ``[N, 3, H, W]`` whose top logit is the label.

    >>> from occlens import zoo
    >>> from occlens.zoo.train import accuracy
    >>> data = zoo.samples()
    >>> accuracy(zoo.shapes(), data.images, data.labels)
    1.0
    """
    with torch.no_grad():
        right = sum(
            int((model(images[i : i + batch]).argmax(dim=1) == labels[i : i + batch]).sum())
            for i in range(0, len(images), batch)
        )
    return right / max(1, len(images))


def save_trained(
    model: nn.Module, folder: Path, weights: str, metadata: str, *, arch: str, meta: dict
) -> None:
    """Write `model`'s state as safetensors `folder / weights` (tagged with `arch`), and `meta`
    as JSON `folder / metadata`, creating `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / weights, metadata={"format": "pt", "arch": arch})
    (folder / metadata).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def train(
    *, seed: int = 0, images: int = 20_000, epochs: int = 8, batch: int = 64, lr: float = 3e-3
) -> ShapesNet:
    """Train a `ShapesNet` on `images` generated images for `epochs` passes.

    Each batch is randomly flipped and rotated by multiples of 90 degrees, which keeps every
    class. The learning rate follows a one-cycle schedule.
    """
    data = _training_data(seed, images)
    with torch.device("meta"):
        model = ShapesNet()
    model = init_weights(model.to_empty(device="cpu"), key=seed)
    rng = torch.Generator().manual_seed(seed + 1)
    steps = epochs * math.ceil(images / batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(images, generator=rng)
        total = 0.0
        for start in range(0, images, batch):
            index = order[start : start + batch]
            x = _augment(data.images[index], rng)
            loss = F.cross_entropy(model(x), data.labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / images:.4f}", file=sys.stderr)
    return model.eval()


def _training_data(seed: int, images: int) -> ShapesData:
    starts = range(0, images, _BLOCK)
    if not (0 <= seed < 1000 and len(starts) <= 1000):  # keys seed * 1000 + block < HELDOUT_KEY
        raise SystemExit(
            "occlens.zoo.train: use 0 <= seed < 1000 and at most a million images, so that "
            "training keys stay apart and below HELDOUT_KEY"
        )
    blocks = [
        shapes_dataset(min(_BLOCK, images - start), key=seed * 1000 + i)
        for i, start in enumerate(starts)
    ]
    return blocks[0]._replace(
        images=torch.cat([b.images for b in blocks]),
        labels=torch.cat([b.labels for b in blocks]),
    )


def _augment(x: Tensor, rng: torch.Generator) -> Tensor:
    """One random element of the dihedral group of the square, per batch."""
    quarter, flip = (int(v) for v in torch.randint(4, (2,), generator=rng))
    x = torch.rot90(x, quarter, dims=(2, 3))
    return x.flip(3) if flip % 2 else x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m occlens.zoo.train", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=20_000, help="training images")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--heldout", type=int, default=2000, help="held-out images")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: repeatable across machines)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output folder")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        start = time.perf_counter()
        model = train(seed=args.seed, images=args.images, epochs=args.epochs)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    held = shapes_dataset(args.heldout, key=HELDOUT_KEY)
    score = accuracy(model, held.images, held.labels)
    print(f"held-out accuracy {score:.4f} on {args.heldout} images", file=sys.stderr)

    meta = {
        "architecture": "occlens.zoo.ShapesNet",
        "classes": list(CLASSES),
        "input_size": [3, 64, 64],
        "input_range": [0.0, 1.0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seed": args.seed,
        "train_images": args.images,
        "train_epochs": args.epochs,
        "train_seconds": round(seconds, 1),
        "torch_threads": args.threads,
        "torch_version": torch.__version__,
        "heldout_key": HELDOUT_KEY,
        "heldout_images": args.heldout,
        "heldout_accuracy": round(score, 4),
        "samples_key": SAMPLES_KEY,
    }
    save_trained(model, args.out, WEIGHTS, METADATA, arch="ShapesNet", meta=meta)
    write_samples(args.out / "samples")
    print(f"wrote {args.out / WEIGHTS} in {seconds:.0f} s of training", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Ten shipped sample images, two per class, stored as PNG files with their boxes and masks."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ._data import CLASSES, ShapesData, shapes_dataset

__all__ = ["SAMPLES_KEY", "samples", "write_samples"]

SAMPLES_KEY = 3_000_000
"""Key of the images the samples are picked from; no training run uses it."""

PER_CLASS = 2
_INDEX = "samples.json"
_MASKS = "masks.png"


def samples() -> ShapesData:
    """The shipped sample images, read from the PNG files in ``occlens/zoo/samples/``.

    Ten images, ordered ``circle, square, triangle, cross, star`` twice, so ``images[:5]`` holds
    one image per class. They are the first images of each class in
    ``shapes_dataset(100, key=SAMPLES_KEY)``, bit for bit: the dataset's pixels are multiples of
    1/255, which 8-bit PNG stores exactly.

    Shapes: ``images [10, 3, 64, 64]`` float32 in ``[0, 1]``, ``labels [10]``, ``boxes [10, 4]``
    (``y0, x0, y1, x1``, half-open), ``masks [10, 64, 64]``.

    >>> from occlens import zoo
    >>> data = zoo.samples()
    >>> data.images.shape
    torch.Size([10, 3, 64, 64])
    >>> [data.classes[i] for i in data.labels[:5]]
    ['circle', 'square', 'triangle', 'cross', 'star']
    """
    folder = resources.files(__package__) / "samples"
    index = json.loads((folder / _INDEX).read_text(encoding="utf-8"))
    images = []
    for sample in index["samples"]:
        with (folder / sample["file"]).open("rb") as file:
            images.append(_pixels(file))
    with (folder / _MASKS).open("rb") as file:
        strip = torch.from_numpy(np.array(Image.open(file).convert("L")) > 127)
    size = strip.shape[0]
    masks = strip.reshape(size, -1, size).permute(1, 0, 2).contiguous()
    return ShapesData(
        images=torch.stack(images),
        labels=torch.tensor([CLASSES.index(sample["class"]) for sample in index["samples"]]),
        boxes=torch.tensor([sample["box"] for sample in index["samples"]]),
        masks=masks,
        classes=CLASSES,
    )


def pick() -> ShapesData:
    """The sample images regenerated: the first `PER_CLASS` of each class from `SAMPLES_KEY`.

    >>> from occlens import zoo
    >>> from occlens.zoo._samples import pick
    >>> bool((pick().images == zoo.samples().images).all())
    True
    """
    data = shapes_dataset(100, key=SAMPLES_KEY)
    order = [
        int(torch.nonzero(data.labels == label)[rank])
        for rank in range(PER_CLASS)
        for label in range(len(CLASSES))
    ]
    chosen = torch.tensor(order)
    return ShapesData(
        data.images[chosen], data.labels[chosen], data.boxes[chosen], data.masks[chosen], CLASSES
    )


def write_samples(folder: Path) -> None:
    """Write `pick()` as PNG files, a mask strip and ``samples.json`` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = pick()
    files = []
    for i, (image, label) in enumerate(zip(data.images, data.labels.tolist(), strict=True)):
        name = f"{i:02d}_{CLASSES[label]}.png"
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / name, optimize=True)
        files.append(name)
    strip = torch.cat(list(data.masks), dim=1).to(torch.uint8).numpy() * 255
    Image.fromarray(strip).convert("1").save(folder / _MASKS, optimize=True)
    rows = [
        json.dumps({"file": name, "class": CLASSES[label], "box": box})
        for name, label, box in zip(files, data.labels.tolist(), data.boxes.tolist(), strict=True)
    ]
    header = {
        "key": SAMPLES_KEY,
        "box_format": "y0, x0, y1, x1: half-open pixel indices",
        "masks": f"{_MASKS}: the object masks side by side, white = object",
    }
    text = json.dumps(header, indent=1)[:-2] + ',\n "samples": [\n  ' + ",\n  ".join(rows)
    (folder / _INDEX).write_text(text + "\n ]\n}\n", encoding="utf-8")


def _pixels(file) -> torch.Tensor:
    array = np.array(Image.open(file).convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255

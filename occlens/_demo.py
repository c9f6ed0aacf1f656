"""``occlens demo``: explain the shipped sample images with the shipped shapes model.

The panel has one row per sample image: the image with its object's box, the class occlusion map
(Captum-style mean over covering windows), DNNBrain's discrepancy grid, and the occlusion map of
the peak unit of the most active channel at the last convolution, with RF-mapping-style random
noise occluders. The class map's maximum is marked; the pointing game counts the images where it
falls inside the object's box.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import image as im
from . import targets as T
from . import zoo
from ._fills import uniform
from ._layers import layer
from ._occlusion import occlusion

__all__ = ["DemoReport", "run_demo"]

_BOX_COLOUR = (0.1, 0.9, 0.2)
_PEAK_COLOUR = (1.0, 1.0, 1.0)


@dataclass
class DemoReport:
    """What the demo computed and where it wrote it."""

    panel: Path
    maps: Path
    classes: list[str]
    predicted: list[str]
    probability: list[float]
    peak_in_box: list[bool]
    seconds: float
    unit_layer: str
    notes: list[str] = field(default_factory=list)

    @property
    def pointing_game(self) -> float:
        return sum(self.peak_in_box) / len(self.peak_in_box)


def _last_conv(model: nn.Module) -> str:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]


def _marker(heat: Tensor) -> tuple[int, int, int, int]:
    """A 3x3 box around the map's maximum."""
    y, x = divmod(int(heat.argmax()), heat.shape[-1])
    return max(y - 1, 0), max(x - 1, 0), y + 2, x + 2


def _overlay(picture: Tensor, heat: Tensor) -> Tensor:
    """The map over a grey, lightened copy of the image, so that its colours stand out."""
    grey = 0.35 + 0.5 * picture.mean(dim=0, keepdim=True).expand(3, -1, -1)
    return im.overlay(grey, heat, alpha=0.9, weight="magnitude")


def run_demo(out_dir: Path, *, progress: bool | None = None) -> DemoReport:
    """Compute the demo maps for every shipped sample, write the PNG panel and the raw maps."""
    start = time.perf_counter()
    model = zoo.shapes()
    data = zoo.samples()
    images, labels, boxes = data.images, data.labels, data.boxes
    with torch.no_grad():
        probs = model(images).softmax(dim=1)

    heat = occlusion(model, images, labels, progress=progress, **zoo.DEMO_OCCLUSION)
    grid_window = zoo.DEMO_OCCLUSION["window"]
    grid = occlusion(
        model,
        images,
        labels,
        window=grid_window,
        stride=grid_window // 2,
        fill=zoo.DEMO_OCCLUSION.get("fill", 0.0),
        aggregate="grid",
        progress=progress,
    )
    unit_layer = _last_conv(model)
    features = layer(model, unit_layer)
    with torch.no_grad():
        busiest = features(images).amax(dim=(2, 3)).argmax(dim=1)
    unit = occlusion(
        features,
        images,
        T.peak(busiest),
        window=6,
        stride=2,
        fill=uniform(0.0, 1.0),
        key=0,
        progress=progress,
    )

    hits = zoo.pointing_game(heat, boxes).tolist()
    rows, titles = [], []
    names = list(data.classes)
    size = tuple(images.shape[-2:])
    for i in range(len(images)):
        picture = im.draw_box(images[i], tuple(boxes[i].tolist()), _BOX_COLOUR)
        heat_view = im.draw_box(_overlay(images[i], heat[i]), _marker(heat[i]), _PEAK_COLOUR)
        grid_view = _overlay(images[i], im.resize(grid[i], size, mode="nearest"))
        unit_view = _overlay(images[i], unit[i])
        predicted = int(probs[i].argmax())
        rows += [picture, heat_view, grid_view, unit_view]
        titles += [
            f"{names[int(labels[i])]} (box)",
            f"occlusion: {names[predicted]} {float(probs[i, predicted]):.2f}",
            "DNNBrain grid",
            f"unit: channel {int(busiest[i])}",
        ]

    out_dir.mkdir(parents=True, exist_ok=True)
    panel_path = im.save(im.panel(rows, titles, ncols=4, cell=(160, 160)), out_dir / "demo.png")
    maps_path = out_dir / "demo_maps.npz"
    np.savez_compressed(
        maps_path,
        occlusion=heat.numpy(),
        grid=grid.numpy(),
        unit=unit.numpy(),
        labels=labels.numpy(),
        boxes=boxes.numpy(),
    )
    return DemoReport(
        panel=panel_path,
        maps=maps_path,
        classes=[names[int(c)] for c in labels],
        predicted=[names[int(c)] for c in probs.argmax(dim=1)],
        probability=[float(p) for p in probs.gather(1, probs.argmax(1, keepdim=True))[:, 0]],
        peak_in_box=hits,
        seconds=time.perf_counter() - start,
        unit_layer=unit_layer,
    )

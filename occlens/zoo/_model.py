"""The shapes CNN and its weights-only loader."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from .._errors import describe, fail
from ._data import CLASSES

__all__ = ["ShapesNet", "load_metadata", "shapes"]

WEIGHTS = "shapes.safetensors"
METADATA = "shapes.json"
CALL = "zoo.shapes"


class ShapesNet(nn.Module):
    """A small ReLU CNN for `shapes_dataset` images: ``[B, 3, 64, 64]`` in ``[0, 1]`` -> ``[B, K]``.

    Four convolutions with ReLUs (16, 32, 48, 64 channels; the first two with stride 2, a 2x2 max
    pool before the last), a global max pool and a linear classifier; the receptive field of the
    last layer is 36 pixels. No batch norm or dropout: train and eval mode compute the same
    function. Layers: ``features.0`` .. ``features.8``, ``pool``, ``classifier``. Global max pooling
    keeps the evidence local: each logit reads the strongest response anywhere in the image, which
    for this data is the object.

    >>> import torch
    >>> from occlens.zoo import ShapesNet
    >>> with torch.device("meta"):
    ...     net = ShapesNet()
    >>> net(torch.empty(2, 3, 64, 64, device="meta")).shape
    torch.Size([2, 5])
    >>> sum(p.numel() for p in net.parameters())
    47333
    """

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=2, padding=1),  # 64 -> 32
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),  # 32 -> 16
            nn.ReLU(),
            nn.Conv2d(32, 48, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16 -> 8
            nn.Conv2d(48, 64, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(2 * x - 1)  # [0, 1] pixels to [-1, 1]
        return self.classifier(self.pool(x).flatten(1))


def shapes(*, weights: str | os.PathLike[str] | None = None) -> ShapesNet:
    """The shipped shapes CNN, in eval mode, or the same architecture with your `weights`.

    Weights are read with ``safetensors``: tensors only, never pickled objects. `weights` is a
    path to a ``.safetensors`` file with exactly the keys and shapes of
    ``ShapesNet().state_dict()``; anything else raises `OcclensError`. Building the model draws no
    random numbers, so global RNG state is untouched.

    Input ``[B, 3, 64, 64]`` in ``[0, 1]``, output logits ``[B, 5]`` over `CLASSES`.

    >>> from occlens import zoo
    >>> model = zoo.shapes()
    >>> data = zoo.samples()
    >>> model(data.images).argmax(dim=1).tolist() == data.labels.tolist()
    True
    >>> model.training
    False
    """
    if weights is None:
        with resources.as_file(resources.files(__package__) / WEIGHTS) as path:
            state = _read(path, "the shipped weights")
    else:
        if not isinstance(weights, (str, os.PathLike)):
            raise fail(CALL, "weights", f"got {describe(weights)}", "pass a path to a file")
        state = _read(Path(weights), "weights")
    with torch.device("meta"):  # no initialisation: no RNG draws, no wasted work
        model = ShapesNet()
    _check(model, state)
    model.load_state_dict(state, assign=True)
    return model.eval()


def load_metadata() -> dict:
    """The metadata of the shipped weights: classes, training seed and time, held-out accuracy.

    >>> from occlens import zoo
    >>> meta = zoo.load_metadata()
    >>> meta["classes"]
    ['circle', 'square', 'triangle', 'cross', 'star']
    >>> meta["heldout_accuracy"] >= 0.95
    True
    """
    text = (resources.files(__package__) / METADATA).read_text(encoding="utf-8")
    return json.loads(text)


def _read(path: Path, what: str) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise fail(
            CALL,
            "weights",
            f"{what} file {str(path)!r} does not exist or is not a file",
            "pass the path of a .safetensors file written by safetensors.torch.save_file",
        )
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise fail(
            CALL,
            "weights",
            f"{str(path)!r} is not a readable safetensors file ({error})",
            "save the state dict with safetensors.torch.save_file; pickled checkpoints (.pt, "
            ".pth) are never loaded",
        ) from None


def _check(model: ShapesNet, state: dict[str, Tensor]) -> None:
    """Check the keys, shapes and dtypes of `state`; one message lists every problem."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for name in sorted(set(expected) & set(state)):
        want, got = expected[name], state[name]
        if got.shape != want.shape:
            problems.append(f"{name} has shape {list(got.shape)}, expected {list(want.shape)}")
        elif not got.dtype.is_floating_point:
            problems.append(f"{name} has dtype {got.dtype}, expected a floating-point tensor")
        elif not bool(torch.isfinite(got).all()):
            problems.append(f"{name} holds NaN or Inf")
    if problems:
        raise fail(
            CALL,
            "weights",
            "the file does not fit ShapesNet: " + "; ".join(problems),
            "save ShapesNet().state_dict() with safetensors.torch.save_file",
        )
    for name, tensor in state.items():
        state[name] = tensor.to(torch.float32)

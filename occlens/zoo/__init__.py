"""A tiny shapes CNN with real ground truth, for trying attribution methods offline.

* `shapes()`: a trained CNN, ``[B, 3, 64, 64]`` in ``[0, 1]`` -> logits ``[B, 5]``.
* `shapes_dataset(n, key=...)`: procedurally generated images with each object's box and mask.
* `samples()`: ten shipped sample images with their labels, boxes and masks.
* `DEMO_OCCLUSION`: the occlusion settings the demo uses on this model, and `pointing_game` to
  score maps against the boxes.

The model and the data are made for each other: the background clutter carries no information
about the class, so a faithful attribution map should point at the object.

>>> import occlens as ol
>>> from occlens import zoo
>>> model, data = zoo.shapes(), zoo.samples()
>>> heat = ol.occlusion(model, data.images[0], int(data.labels[0]), **zoo.DEMO_OCCLUSION)
>>> bool(zoo.pointing_game(heat, data.boxes[0]))
True
"""

from ._data import CLASSES as CLASSES
from ._data import ShapesData as ShapesData
from ._data import shapes_dataset as shapes_dataset
from ._model import ShapesNet as ShapesNet
from ._model import load_metadata as load_metadata
from ._model import shapes as shapes
from ._pointing import DEMO_OCCLUSION as DEMO_OCCLUSION
from ._pointing import pointing_game as pointing_game
from ._samples import samples as samples

__all__ = [
    "CLASSES",
    "DEMO_OCCLUSION",
    "ShapesData",
    "ShapesNet",
    "load_metadata",
    "pointing_game",
    "samples",
    "shapes",
    "shapes_dataset",
]

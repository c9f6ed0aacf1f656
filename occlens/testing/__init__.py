"""Test helpers: reference architectures, small random CNNs and hypothesis strategies.

* `alexnet`, `vgg16`, `resnet18`: torchvision's architectures with its layer names and parameter
  counts, random weights from a `key` (torchvision and pretrained weights are not needed).
* `tiny_cnn`: a 5k-parameter CNN for examples.
* `images`, `small_cnns`, `targets_for`: hypothesis strategies (they need ``hypothesis``; the
  rest of this module does not). A `SmallCNN` knows the input box each unit of its ``features``
  can see (`SmallCNN.receptive_box`), an independent reference for occlusion and receptive-field
  code.

>>> import torch
>>> import occlens as ol
>>> from hypothesis import given, settings
>>> from occlens import testing
>>> @settings(max_examples=5, deadline=None)
... @given(testing.small_cnns(), testing.images())
... def test_far_occluders_change_nothing(model, x):
...     fmap = ol.layer(model, "features")
...     h, w = model.feature_size(tuple(x.shape[1:]))
...     y0, x0, y1, x1 = model.receptive_box(0, 0, tuple(x.shape[1:]))
...     x2 = x.clone()
...     x2[:, y1:, :] = 7.0
...     x2[:, :, x1:] = 7.0
...     assert torch.equal(fmap(x[None])[0, :, 0, 0], fmap(x2[None])[0, :, 0, 0])
>>> test_far_occluders_change_nothing()
"""

from ._architectures import alexnet as alexnet
from ._architectures import resnet18 as resnet18
from ._architectures import vgg16 as vgg16
from ._smallcnn import SmallCNN as SmallCNN
from ._stages import RELU_SPELLINGS as RELU_SPELLINGS
from ._stages import ConvStage as ConvStage
from ._stages import PoolStage as PoolStage
from ._stages import ResidualStage as ResidualStage
from ._tiny import tiny_cnn as tiny_cnn

__all__ = [
    "RELU_SPELLINGS",
    "ConvStage",
    "PoolStage",
    "ResidualStage",
    "SmallCNN",
    "alexnet",
    "images",
    "resnet18",
    "small_cnns",
    "targets_for",
    "tiny_cnn",
    "vgg16",
]

_STRATEGIES = ("images", "small_cnns", "targets_for")


def __getattr__(name: str):
    # The strategies import hypothesis, a test-time dependency: load them on first use.
    if name in _STRATEGIES:
        try:
            from . import _strategies
        except ImportError as error:
            raise ImportError(
                f"occlens.testing.{name} needs hypothesis; install it with `pip install hypothesis`"
            ) from error
        return getattr(_strategies, name)
    raise AttributeError(f"module 'occlens.testing' has no attribute {name!r}")

"""occlens: attribution maps as pure functions over ``torch.func``.

Given ``(model_fn, image, target)``, occlens returns maps of which pixels or units drive a network's
response. Nothing is mutated: not the model, not its mode, not the inputs.

>>> import torch, occlens as ol
>>> from occlens import targets as T
>>> model = ol.testing.tiny_cnn()  # any nn.Module or function Tensor[B, ...] -> Tensor[B, ...]
>>> ol.occlusion(model, torch.rand(3, 16, 16), 1, window=4, stride=2).shape
torch.Size([16, 16])
"""

from . import fills as fills
from . import maps as maps
from . import reg as reg
from . import targets as targets
from ._activation_maps import upsample_activation as upsample_activation
from ._combine import chain as chain
from ._combine import identity as identity
from ._combine import map_output as map_output
from ._empirical_rf import EmpiricalRF as EmpiricalRF
from ._empirical_rf import empirical_rf as empirical_rf
from ._errors import OcclensError as OcclensError
from ._gradients import input_x_gradient as input_x_gradient
from ._gradients import saliency as saliency
from ._grid import occluder_for_rf as occluder_for_rf
from ._incremental import explain_engine as explain_engine
from ._incremental_approx import approximation_ssim as approximation_ssim
from ._incremental_approx import occlusion_approximate as occlusion_approximate
from ._integrated import integrated_gradients as integrated_gradients
from ._layers import layer as layer
from ._layers import layers as layers
from ._masked import Masked as Masked
from ._masked import masked_image as masked_image
from ._maximize import Maximized as Maximized
from ._maximize import maximize as maximize
from ._minimal import Minimal as Minimal
from ._minimal import minimal_image as minimal_image
from ._occlusion import occlusion as occlusion
from ._receptive import RF as RF
from ._receptive import receptive_field as receptive_field
from ._rewire import deconvnet as deconvnet
from ._rewire import guided as guided
from ._smoothgrad import smoothgrad as smoothgrad
from ._topk import TopK as TopK
from ._topk import top_k as top_k

__version__ = "0.1.0"

__all__ = [
    "RF",
    "EmpiricalRF",
    "Masked",
    "Maximized",
    "Minimal",
    "OcclensError",
    "TopK",
    "approximation_ssim",
    "chain",
    "deconvnet",
    "empirical_rf",
    "explain_engine",
    "fills",
    "guided",
    "identity",
    "input_x_gradient",
    "integrated_gradients",
    "layer",
    "layers",
    "map_output",
    "maps",
    "masked_image",
    "maximize",
    "minimal_image",
    "occluder_for_rf",
    "occlusion",
    "occlusion_approximate",
    "receptive_field",
    "reg",
    "saliency",
    "smoothgrad",
    "targets",
    "top_k",
    "upsample_activation",
]


def __getattr__(name: str):
    # Heavier companions load on first use: `occlens.testing`, `occlens.zoo`, `occlens.image`.
    if name in ("testing", "zoo", "image"):
        import importlib

        return importlib.import_module(f"occlens.{name}")
    raise AttributeError(f"module 'occlens' has no attribute {name!r}")

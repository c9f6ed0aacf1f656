"""Image priors for `occlens.maximize`: penalties, a preconditioner and a gradient filter.

* ``l1(w)``, ``l2(w)``, ``tv(w)``: penalties ``w * value(image)`` subtracted from the score.
* ``blur(sigma, every=k)``: Gaussian blur of each channel every k steps (``precondition=``).
* ``fourier(factor)``: damp the gradient's high frequencies (``gradient_filter=``).

>>> import torch
>>> from occlens import reg
>>> x = torch.tensor([[[1.0, -1.0], [2.0, 0.0]]])
>>> reg.l1(0.1)(x), reg.l2()(x), reg.tv(1.0)(x)
(tensor(0.4000), tensor(2.4495), tensor(6.))
"""

from ._regularizers import Blur as Blur
from ._regularizers import FourierFilter as FourierFilter
from ._regularizers import Regularizer as Regularizer
from ._regularizers import blur as blur
from ._regularizers import fourier as fourier
from ._regularizers import l1 as l1
from ._regularizers import l2 as l2
from ._regularizers import tv as tv

__all__ = ["Blur", "FourierFilter", "Regularizer", "blur", "fourier", "l1", "l2", "tv"]

"""Occluder fills beyond a plain number: random noise and a blurred copy of the image.

>>> import occlens as ol
>>> ol.fills.uniform(-1, 1), ol.fills.blur(5.0)
(Uniform(lo=-1.0, hi=1.0), Blur(sigma=5.0))
"""

from ._fills import Blur as Blur
from ._fills import Uniform as Uniform
from ._fills import blur as blur
from ._fills import uniform as uniform

__all__ = ["Blur", "Uniform", "blur", "uniform"]

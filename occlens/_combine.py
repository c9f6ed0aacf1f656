"""Composition: transforms of attribution functions, and `chain` to fold them.

An `AttributionFn` is ``(model_fn, x, target, *, key=None, **options) -> map``; a `Transform`
maps one to another. ``chain(a, b)(f) == b(a(f))``: transforms are listed in data-flow order,
as in optax. `chain` only composes: it adds nothing and draws nothing, so it is associative and
``chain()`` is the identity. Keys flow through the chain: a stage that draws random numbers
takes them from the key it is called with and hands a key derived from it to the function it
wraps, so no two stages share random numbers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import vmap

from ._errors import describe, fail
from ._types import AttributionFn, Key, Transform

__all__ = ["call_method", "chain", "derive_key", "identity", "map_output"]


def call_method(method: AttributionFn, *args: object, key: Key | None, **options: object) -> Tensor:
    """Call an attribution function, passing `key` only if it takes one."""
    if _takes_key(method):
        return method(*args, key=key, **options)
    return method(*args, **options)


@functools.lru_cache(maxsize=256)
def _takes_key_cached(method: Callable) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "key" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _takes_key(method: Callable) -> bool:
    try:
        return _takes_key_cached(method)
    except TypeError:  # unhashable callables
        return _takes_key_cached.__wrapped__(method)


def _required_positional(fn: Callable) -> int:
    """How many positional arguments `fn` requires (0 where its signature cannot be read)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional and p.default is inspect.Parameter.empty for p in parameters)


def derive_key(generator: torch.Generator) -> int:
    """A fresh seed for the next stage, drawn from this stage's generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def identity() -> Transform:
    """The transform that changes nothing: ``identity()(f) is f``.

    >>> import occlens as ol
    >>> ol.identity()(ol.saliency) is ol.saliency
    True
    """
    return lambda method: method


def chain(*transforms: Transform) -> Transform:
    """Compose transforms in data-flow order: ``chain(a, b)(f) == b(a(f))``.

    ``chain()`` is the identity and ``chain`` is associative.

    >>> import torch, occlens as ol
    >>> from occlens import maps as M
    >>> explain = ol.chain(ol.smoothgrad(n=4, sigma=0.1), ol.map_output(M.abs, M.max_channels))
    >>> model = ol.testing.tiny_cnn()
    >>> explain(ol.saliency)(model, torch.rand(3, 16, 16), 1, key=0).shape
    torch.Size([16, 16])
    """
    for position, transform in enumerate(transforms):
        if not callable(transform) or _required_positional(transform) > 1:
            raise fail(
                "chain",
                f"transforms[{position}]",
                f"got {describe(transform)}, not a transform (a function of one method)",
                "pass transforms such as ol.smoothgrad(...) or ol.map_output(...), not "
                "attribution functions (chain(...)(ol.saliency) applies them)",
            )

    def chained(method: AttributionFn) -> AttributionFn:
        for transform in transforms:
            method = transform(method)
        return method

    return chained


def map_output(*fns: Callable[[Tensor], Tensor]) -> Transform:
    """Lift map functions (`occlens.maps`) into a transform that post-processes every map.

    The functions apply in order, to each sample's map: for a batch they run under ``vmap``
    over the batch, so a function sees one map, ``[C, H, W]`` or ``[H, W]``.

    >>> import torch, occlens as ol
    >>> from occlens import maps as M
    >>> heat = ol.map_output(M.abs, M.sum_channels)(ol.saliency)
    >>> heat(ol.testing.tiny_cnn(), torch.rand(2, 3, 16, 16), 0).shape
    torch.Size([2, 16, 16])
    """
    for position, fn in enumerate(fns):
        if not callable(fn):
            raise fail(
                "map_output", f"fns[{position}]", f"got {describe(fn)}", "pass functions map -> map"
            )

    def apply(m: Tensor) -> Tensor:
        for fn in fns:
            m = fn(m)
        return m

    def transform(method: AttributionFn) -> AttributionFn:
        @functools.wraps(method)
        def mapped(model_fn, x, target, *, key: Key | None = None, **options):
            out = call_method(method, model_fn, x, target, key=key, **options)
            batched = isinstance(x, Tensor) and x.ndim == 4
            return vmap(apply)(out) if batched else apply(out)

        return mapped

    return transform

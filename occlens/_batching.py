"""``vmap`` without torch's notes to its own developers."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch.func import vmap

__all__ = ["quiet_vmap"]


def quiet_vmap(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """`torch.func.vmap` of `fn`, hiding torch's warning about a missing batching rule.

    An op without a batching rule (an adaptive pool on a 1 x 1 map, say) runs through a slower
    per-sample fallback and warns "There is a performance drop ... please file us an issue". The
    result is exact and the user cannot act on the note, so it is not passed on.
    """
    batched = vmap(fn, **options)

    def run(*args: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
            return batched(*args)

    return run

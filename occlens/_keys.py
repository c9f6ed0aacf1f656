"""Explicit randomness: an ``int`` seed or a ``torch.Generator``, never global RNG state."""

from __future__ import annotations

import torch

from ._errors import describe, fail

__all__ = ["generator"]


def generator(key: object, call: str, why: str) -> torch.Generator:
    """A fresh CPU generator for `key`; the caller's generator is copied, never advanced.

    Copying keeps every call pure: the same generator passed twice gives the same result.
    """
    if key is None:
        raise fail(
            call,
            "key",
            f"{why} needs random numbers, and occlens never falls back to global RNG state",
            "pass key=0 (any int seed) or a torch.Generator",
        )
    if isinstance(key, torch.Generator):
        if key.device.type != "cpu":
            raise fail(
                call, "key", f"got a {key.device} generator", "pass a CPU torch.Generator or an int"
            )
        copy = torch.Generator()
        copy.set_state(key.get_state())
        return copy
    if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 2**64:
        raise fail(
            call,
            "key",
            f"got {describe(key)}",
            "pass an int seed in [0, 2**64) or a torch.Generator",
        )
    return torch.Generator().manual_seed(key)

"""Index arithmetic of sliding windows along one axis: output sizes and interval back-projection.

Written from PyTorch's documented formulas, independently of the rest of occlens, so that it can
serve as a reference for occlens's own receptive-field code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._errors import describe, fail

__all__ = ["Window", "back_project", "output_size", "pair"]


@dataclass(frozen=True)
class Window:
    """One sliding window along an axis: a conv or pool with these settings."""

    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    ceil_mode: bool = False

    def output_size(self, n: int) -> int:
        """Outputs for an input of length `n` (0 when none); PyTorch's ``pooling_output_shape``."""
        span = n + 2 * self.padding - self.dilation * (self.kernel - 1) - 1
        if span < 0:
            return 0
        if not self.ceil_mode:
            return span // self.stride + 1
        out = -(-span // self.stride) + 1
        if (out - 1) * self.stride >= n + self.padding:  # the last window must start inside
            out -= 1
        return out

    def back(self, lo: int, hi: int) -> tuple[int, int]:
        """Input indices read by outputs ``lo..hi`` (inclusive), before clipping."""
        start = lo * self.stride - self.padding
        end = hi * self.stride - self.padding + self.dilation * (self.kernel - 1)
        return start, end


def output_size(path: Sequence[Window], n: int) -> int:
    """Length after applying every window of `path` in turn to an axis of length `n`."""
    for window in path:
        n = window.output_size(n) if n > 0 else 0
    return n


def _back_path(
    path: Sequence[Window], lo: int, hi: int, n: int, clip: bool
) -> tuple[int, int] | None:
    lengths = [n]
    for window in path[:-1]:
        lengths.append(window.output_size(lengths[-1]))
    for window, length in zip(reversed(path), reversed(lengths), strict=True):
        lo, hi = window.back(lo, hi)
        if clip:
            lo, hi = max(lo, 0), min(hi, length - 1)
            if lo > hi:
                return None
    return lo, hi


def back_project(
    paths: Sequence[Sequence[Window]], interval: tuple[int, int], n: int, clip: bool
) -> tuple[int, int] | None:
    """Input interval (inclusive) that outputs `interval` of a stage can depend on, or None.

    `paths` are the stage's parallel chains of windows from its input (length `n`) to its
    output; the result is the smallest interval holding what every path reads.

    >>> back_project([[Window(3, 2, 1)]], (0, 1), 8, clip=True)
    (0, 3)
    """
    lo, hi = interval
    found = [r for r in (_back_path(path, lo, hi, n, clip) for path in paths) if r is not None]
    if not found:
        return None
    return min(r[0] for r in found), max(r[1] for r in found)


def pair(size: object, call: str, argument: str) -> tuple[int, int]:
    """``(H, W)`` from an ``int`` or a pair of positive ``int`` s."""
    values = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if (
        not isinstance(values, (tuple, list))
        or len(values) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    ):
        raise fail(call, argument, f"got {describe(size)}", "pass H or (H, W) as positive ints")
    return int(values[0]), int(values[1])

"""Progress for long runs: tqdm when installed (the ``progress`` extra), else a stderr line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress"]

AUTO_THRESHOLD = 4096


@contextmanager
def progress(total: int, description: str, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``. ``enabled=None`` shows progress for long runs on a terminal."""
    if enabled is None:
        enabled = total >= AUTO_THRESHOLD and sys.stderr.isatty()
    if not enabled:
        yield lambda n: None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        with tqdm(total=total, desc=description, unit="eval", leave=False) as bar:
            yield bar.update
        return
    done, last = 0, 0.0

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last > 0.5 or done >= total:
            last = now
            sys.stderr.write(f"\r{description}: {done}/{total}")
            sys.stderr.flush()

    try:
        yield advance
    finally:
        sys.stderr.write("\n")

"""Griffe extension for the API reference: fence docstring doctests as ``pycon`` code blocks.

occlens docstrings hold their examples as bare doctests (``>>> ...`` lines and their output), which
pytest runs with ``--doctest-modules``. Markdown would render ``>>>`` as nested quotes, so this
extension wraps each doctest block (it runs to the next blank line) in a fenced ``pycon`` block
before mkdocstrings renders it. mkdocs.yml loads it through the ``extensions`` option.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """Wrap every run of doctest lines (``>>>`` up to the next blank line) in a pycon fence."""
    out: list[str] = []
    indent: str | None = None  # the indentation of the open block, None outside a block
    for line in text.splitlines():
        stripped = line.lstrip()
        if indent is None and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
        elif indent is not None and not stripped:
            out.append(f"{indent}```")
            indent = None
        out.append(line)
    if indent is not None:
        out.append(f"{indent}```")
    return "\n".join(out)


class FenceDoctests(griffe.Extension):
    """Fence the doctests of every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[str] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.path in seen:
                continue
            seen.add(obj.path)
            if obj.docstring is not None and ">>>" in obj.docstring.value:
                obj.docstring.value = fence_doctests(obj.docstring.value)
            stack.extend(member for member in obj.members.values() if not member.is_alias)

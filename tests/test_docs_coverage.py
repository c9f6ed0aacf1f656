"""Every public name has a docstring with a runnable example.

The public names are those in ``occlens.__all__``, in the ``__all__`` of each public module it
exports (``maps``, ``targets``, ``fills``, ...) and of the companions loaded on first use
(``image``, ``testing``, ``zoo``). Each function, class and module needs a docstring with at least
one ``>>>`` example, written where pytest's ``--doctest-modules`` collects it (inside the occlens
package), so the examples are also run. Constants cannot carry docstrings of their own; their
module documents them.
"""

from __future__ import annotations

import doctest
import inspect
import sys
from pathlib import Path

import pytest

import occlens as ol

PACKAGE = Path(ol.__file__).parent
COMPANIONS = ("image", "testing", "zoo")  # loaded on first use, outside occlens.__all__

# Public names that have no example yet (strict: the test fails once one is added, so that the
# entry can go). Result containers and protocols: each should show how its fields are read.
KNOWN_GAPS: dict[str, str] = {}


def public_modules() -> list[tuple[str, object]]:
    modules = [("occlens", ol)]
    for name in ol.__all__:
        if inspect.ismodule(getattr(ol, name)):
            modules.append((f"occlens.{name}", getattr(ol, name)))
    for name in COMPANIONS:
        modules.append((f"occlens.{name}", getattr(ol, name)))
    return modules


def documented() -> list[tuple[str, object]]:
    """``(qualified name, object)`` of every public module, function and class."""
    found = []
    for prefix, module in public_modules():
        found.append((prefix, module))
        for name in module.__all__:  # type: ignore[attr-defined]
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue  # listed as a module of its own
            if callable(obj):
                found.append((f"{prefix}.{name}", obj))
    return found


def examples(obj: object) -> list[doctest.Example]:
    return doctest.DocTestParser().get_examples(inspect.getdoc(obj) or "")


def cells() -> list[object]:
    return [
        pytest.param(
            obj,
            id=name,
            marks=[pytest.mark.xfail(reason=KNOWN_GAPS[name], strict=True)]
            if name in KNOWN_GAPS
            else [],
        )
        for name, obj in documented()
    ]


@pytest.mark.parametrize("obj", cells())
def test_public_name_has_a_docstring_with_an_example(obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{obj!r} has no docstring"
    assert examples(obj), f"the docstring of {obj!r} has no >>> example"


@pytest.mark.parametrize("obj", [pytest.param(o, id=n) for n, o in documented()])
def test_the_example_is_where_doctests_are_collected(obj):
    """The docstring lives in a file of the occlens package, which --doctest-modules runs."""
    module = obj if inspect.ismodule(obj) else sys.modules[obj.__module__]
    path = Path(inspect.getfile(module)).resolve()
    assert path.is_relative_to(PACKAGE.resolve()), f"{obj!r} is documented in {path}"


def test_doctests_run_as_tests():
    """pytest runs the docstring examples, and warnings are errors there too."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["pytest"]
    options = config["ini_options"]
    assert "--doctest-modules" in options["addopts"].split()
    assert "occlens" in options["testpaths"]
    assert options["filterwarnings"][0] == "error"


def test_the_check_finds_a_missing_example():
    def documented_without_example() -> None:
        """Does nothing."""

    def documented_with_example() -> None:
        """Does nothing.

        >>> documented_with_example()
        """

    assert not examples(documented_without_example)
    assert examples(documented_with_example)

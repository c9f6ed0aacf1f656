"""The documentation: the site builds in strict mode, documents every public name, and its examples run.

The API reference is rendered from the docstrings, whose examples pytest runs as doctests
(``--doctest-modules``); the ``python`` code blocks of the other pages (docs/*.md) run here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import occlens

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
NAMESPACES = ("targets", "fills", "maps", "reg", "image", "zoo", "testing")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"occlens_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _public(module) -> list[str]:
    return [name for name in module.__all__ if not name.startswith("_")]


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_code_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files (tour.md saves a picture)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for block in _python_blocks(page.read_text(encoding="utf-8")):
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), namespace)


def test_the_tour_has_examples_and_draws_its_picture():
    tour = (DOCS / "tour.md").read_text(encoding="utf-8")
    assert len(_python_blocks(tour)) >= 2
    assert "![" in tour and (DOCS / "tour.png").is_file()


def test_every_public_name_has_a_place_in_the_api_reference():
    hooks = _load("_hooks")
    names, modules = hooks.exported()
    assert names == occlens.__all__
    page = hooks.api_page((DOCS / "api" / "occlens.md").read_text(encoding="utf-8"))
    listed = set(hooks.DIRECTIVE.findall(page))
    assert listed == set(occlens.__all__) - modules
    for namespace in (*modules, *NAMESPACES):
        text = (DOCS / "api" / f"{namespace}.md").read_text(encoding="utf-8")
        assert f"::: occlens.{namespace}\n" in text, namespace


def test_doctests_are_fenced_for_the_site():
    fence = _load("_griffe_doctest").fence_doctests
    text = "Intro.\n\n>>> 1 + 1\n2\n\n* item\n\n  >>> f(\n  ...     0)\n  3\nEnd."
    assert fence(text) == (
        "Intro.\n\n```pycon\n>>> 1 + 1\n2\n```\n\n* item\n\n"
        "  ```pycon\n  >>> f(\n  ...     0)\n  3\nEnd.\n  ```"
    )


def test_readme_shows_the_demo_panel_and_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/demo.png)" in readme
    assert (DOCS / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", readme):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]' to build the docs")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr

    home = (site / "index.html").read_text(encoding="utf-8")
    assert "Quickstart" in home and 'src="demo.png"' in home  # the README, links rewritten
    assert (site / "demo.png").is_file() and (site / "tour.png").is_file()

    api = site / "api"
    top = (api / "occlens" / "index.html").read_text(encoding="utf-8")
    modules = {n for n in occlens.__all__ if isinstance(getattr(occlens, n), types.ModuleType)}
    for name in set(occlens.__all__) - modules:
        assert f'id="occlens.{name}"' in top, f"occlens.{name} is missing from the API reference"
    for namespace in NAMESPACES:
        page = (api / namespace / "index.html").read_text(encoding="utf-8")
        module = importlib.import_module(f"occlens.{namespace}")
        for name in _public(module):
            assert re.search(rf'id="occlens\.{namespace}\.(\w+\.)*{name}"', page), (
                f"occlens.{namespace}.{name} is missing from the API reference"
            )
        assert "<blockquote>" not in page  # doctests render as code, not as '>>>' quotes
    assert "<blockquote>" not in top

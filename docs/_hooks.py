"""MkDocs hooks: the home page is README.md, and the API page follows ``occlens.__all__``.

* docs/index.md is a stub whose content is replaced by the README when the site is built, so the
  two never drift apart. The README's links into docs/ (``docs/methods.md``, ``docs/demo.png``)
  are rewritten relative to the site; the strict build fails on any other link that does not
  resolve.
* docs/api/occlens.md groups the top-level names by topic. A name listed there that
  ``occlens.__all__`` does not export is dropped (with its section, if that empties it), and a
  name exported but not listed is added under "More", so every public name is documented.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "occlens" / "__init__.py"
DIRECTIVE = re.compile(r"^::: occlens\.(\w+)\s*$", re.M)


def readme_as_home(readme: str) -> str:
    """The README's markdown, with links into docs/ made relative to the site root."""
    readme = re.sub(r"^<!-- quickstart:(begin|end) -->\n", "", readme, flags=re.M)
    return re.sub(r"\]\(docs/", "](", readme)


def exported() -> tuple[list[str], set[str]]:
    """``occlens.__all__``, and which of its names are submodules, read without importing."""
    tree = ast.parse(PACKAGE.read_text(encoding="utf-8"))
    names: list[str] = []
    modules: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names = list(ast.literal_eval(node.value))
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
            modules.update(alias.asname or alias.name for alias in node.names)
    return names, modules & set(names)


def api_page(markdown: str) -> str:
    """The API page with its ``::: occlens.name`` entries matched to ``occlens.__all__``."""
    names, modules = exported()
    wanted = set(names) - modules
    sections = re.split(r"(?m)^(?=## )", markdown)
    kept = []
    for section in sections:
        listed = DIRECTIVE.findall(section)
        section = DIRECTIVE.sub(lambda m: m.group(0) if m.group(1) in wanted else "", section)
        if listed and not DIRECTIVE.search(section):
            continue  # every entry of this section is gone
        kept.append(re.sub(r"\n{3,}", "\n\n", section))
    listed = set(DIRECTIVE.findall(markdown))
    missing = [name for name in names if name in wanted and name not in listed]
    more = "".join(f"::: occlens.{name}\n\n" for name in missing)
    page = "".join(kept).rstrip() + "\n"
    return page + (f"\n## More\n\n{more}" if missing else "")


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri == "index.md":
        return readme_as_home(README.read_text(encoding="utf-8"))
    if page.file.src_uri == "api/occlens.md":
        return api_page(markdown)
    return markdown

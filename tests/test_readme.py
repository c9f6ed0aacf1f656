"""The README's Python examples run, and its Quickstart is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    assert isinstance(namespace.get("heat"), torch.Tensor)


def test_quickstart_has_two_commands_and_ci_runs_them():
    quickstart = re.search(
        r"<!-- quickstart:begin -->\n```bash\n(.*?)```\n<!-- quickstart:end -->", README, re.S
    )
    assert quickstart
    commands = quickstart.group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("occlens demo") and "pip install" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert (
        "quickstart:begin" in ci
        and 'bash -c "$install_and_demo"' in ci
        and 'bash -c "$run_tests"' in ci
    )

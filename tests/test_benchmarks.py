"""The benchmark scripts run: each one's ``--smoke`` mode, a tiny model end to end.

The benchmarks are not timed tests; this only checks that every script still runs against the
current library and prints its tables, so a change to a private function they use cannot
leave them broken until someone next measures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _smoke(script: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (
            "occlusion.py",
            ["limit: batched forward", "occlens incremental", "captum Occlusion", "x increm."],
        ),
        ("gradients.py", ["captum GuidedBackprop", "agreement with Captum", "IG "]),
        ("train_vgg16.py", ["held-out accuracy by size", "folded vs trained at 224"]),
        ("cost_model.py", ["tiny_cnn 32 w4 s2", "chunk parameter byte", "refit     rms error"]),
    ],
)
def test_the_benchmark_script_runs_and_prints_its_tables(script: str, expected: list[str]):
    pytest.importorskip("captum")
    out = _smoke(script)
    for line in expected:
        assert line in out, f"{script} --smoke printed no {line!r}:\n{out[-3000:]}"

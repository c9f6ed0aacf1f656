"""The ``occlens`` command: the demo writes its panel quickly; bad arguments exit with code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from occlens._cli import main


@pytest.mark.slow
def test_demo_writes_the_panel_and_maps_in_under_a_minute(tmp_path):
    # One thread: under `pytest -n 2` the other worker holds the second core, and two spinning
    # OpenMP threads sharing one core run several times slower than one.
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "occlens", "demo", "--out", str(tmp_path), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seconds = time.perf_counter() - start
    assert seconds < 60, seconds
    panel = tmp_path / "demo.png"
    assert f"wrote {panel}" in done.stdout
    with Image.open(panel) as picture:
        assert picture.size[0] > 4 * 64 and picture.size[1] > 10 * 64
    maps = np.load(tmp_path / "demo_maps.npz")
    assert maps["occlusion"].shape == (10, 64, 64) and np.isfinite(maps["occlusion"]).all()
    assert "pointing game: " in done.stdout


def test_demo_json_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["panel"] == str(tmp_path / "demo.png")
    assert len(summary["samples"]) == 10
    assert summary["pointing_game"] >= 0.9


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["demo", "--bogus"]])
def test_bad_arguments_exit_with_code_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: occlens" in capsys.readouterr().err


def test_demo_rejects_zero_threads_with_code_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads must be 1 or more, got 0" in capsys.readouterr().err

"""Regenerate the pictures of the documentation: ``python docs/_make_pictures.py``.

* docs/demo.png: the first five rows of the panel that ``occlens demo`` writes (one sample image of
  each class), in a 256-colour palette to keep the repository small.
* docs/tour.png: the picture that the code of docs/tour.md draws (the code runs as written).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
ROWS, KEEP, PAD = 10, 5, 4  # rows of the demo panel, rows kept, the panel's padding


def demo_png() -> Path:
    with tempfile.TemporaryDirectory() as folder:
        occlens = Path(sys.executable).with_name("occlens")
        subprocess.run([str(occlens), "demo", "--out", folder, "--no-progress"], check=True)
        with Image.open(Path(folder) / "demo.png") as panel:
            panel = panel.convert("RGB")
    pitch, rest = divmod(panel.height - PAD, ROWS)
    if rest:
        raise SystemExit(f"demo.png is {panel.height} px high, not {ROWS} rows of equal height")
    top = panel.crop((0, 0, panel.width, KEEP * pitch + PAD))
    out = DOCS / "demo.png"
    top.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def tour_png() -> Path:
    text = (DOCS / "tour.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        here = Path.cwd()
        os.chdir(folder)
        try:
            for block in blocks[:2]:  # the five lines and the picture
                exec(compile(block, "docs/tour.md", "exec"), namespace)
            with Image.open("tour.png") as picture:
                picture = picture.convert("RGB")
        finally:
            os.chdir(here)
    out = DOCS / "tour.png"
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


if __name__ == "__main__":
    for path in (demo_png(), tour_png()):
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")

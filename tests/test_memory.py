"""Occlusion memory stays bounded: 53,248 occluder positions in a child process under 2 GB RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, time, torch
    from torch import nn
    import occlens as ol

    def peak_kib():
        # VmHWM belongs to this process's own memory map. ru_maxrss does not: Linux carries it
        # over from the forking parent (a pytest worker that may have held gigabytes) across exec.
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    torch.manual_seed(0)
    # A cheap model: what is measured is the engine. Materialising all occluded images at once
    # would take 13 * 4096 * 3 * 64 * 64 * 4 bytes = 2.6 GB on its own.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()
    images = torch.rand(13, 3, 64, 64)
    baseline = peak_kib()
    start = time.perf_counter()
    heat = ol.occlusion(model, images, torch.arange(13) % 5, window=1, stride=1,
                        fill=ol.fills.uniform(), key=0)
    seconds = time.perf_counter() - start
    peak = peak_kib()
    print(json.dumps({"positions": 13 * 64 * 64, "shape": list(heat.shape),
                      "finite": bool(torch.isfinite(heat).all()), "baseline_kib": baseline,
                      "peak_kib": peak, "seconds": seconds}))
    """
)


@pytest.mark.slow
def test_fifty_thousand_positions_stay_under_two_gigabytes():
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["positions"] >= 50_000
    assert report["shape"] == [13, 64, 64]
    assert report["finite"]
    assert report["peak_kib"] < 2 * 1024 * 1024, report


def test_the_counted_work_of_a_forward_pass_is_its_closed_form():
    """`measure_forward` counts bytes, operators and FLOPs: two per multiply-add of each
    convolution and matrix product, from the shapes alone."""
    import torch
    from torch import nn

    from occlens._memory import measure_forward

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.rand(2, 3, 8, 8)
    output, work = measure_forward(model, x)
    conv = 2 * 4 * (3 * 3 * 3) * (6 * 6) * 2  # out channels, taps, positions, images
    linear = 2 * (4 * 6 * 6) * 5 * 2
    assert work.measured and work.flops == conv + linear
    assert work.bytes >= 2 * (4 * 6 * 6) * 4 + output.nbytes  # the conv's output and the logits
    assert work.ops >= 3  # convolution, relu, addmm (views such as flatten are not counted)
    _, again = measure_forward(model, x)
    assert again == work

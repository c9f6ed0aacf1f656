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


def test_the_counted_flops_equal_torchs_flop_counter_on_the_reference_architectures():
    """The counter applies torch's flop formulas to shapes it takes itself; the totals must be
    `torch.utils.flop_counter.FlopCounterMode`'s, which maps its own wrapper over the arguments
    (convolutions, addmm, grouped and strided convs, batched matrix products)."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    import occlens as ol
    from occlens._memory import measure_forward

    class Attention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.flatten(2).transpose(1, 2)  # [B, HW, C]
            return torch.baddbmm(q.new_zeros(1), q, q.transpose(1, 2)).mean(dim=(1, 2))[:, None]

    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, groups=2, dilation=2), nn.ReLU())
    cases = [
        (ol.testing.tiny_cnn(), torch.rand(2, 3, 32, 32)),
        (ol.testing.resnet18(), torch.rand(1, 3, 64, 64)),
        (ol.testing.alexnet(), torch.rand(1, 3, 64, 64)),
        (grouped, torch.rand(2, 4, 17, 15)),
        (nn.Sequential(nn.Conv2d(3, 5, 3), Attention()), torch.rand(2, 3, 9, 9)),
    ]
    for model, x in cases:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        _, work = measure_forward(model, x)
        assert work.flops == counter.get_total_flops() > 0, type(model).__name__


def test_the_flop_count_falls_back_to_torchs_wrapper_on_arguments_it_does_not_follow():
    import torch

    from occlens._memory import _flops, _Operator, _shapes, _Unusual

    operator = _Operator.of(torch.ops.aten.mm.default)
    a, b = torch.rand(3, 4), torch.rand(4, 5)
    assert _shapes([a, (b, 2)]) == [a.shape, (b.shape, 2)]
    with pytest.raises(_Unusual):
        _shapes({"a": a})
    fast = _flops(operator, (a, b), {}, a @ b)
    slow = _Operator(True, True, operator.flops, None)  # no shape formula: torch's wrapper
    assert fast == _flops(slow, (a, b), {}, a @ b) == 2 * 3 * 4 * 5

"""The clean pass's layer log and what ``engine="auto"`` reads from it (issue 5).

`occlens._incremental_bound` predicts the incremental engine's work without tracing the model, so
that ``"auto"`` can plan a short run only where the plan will end incremental. Its references:
closed forms on one convolution, the traced graph's own geometry and cost model on the reference
architectures and on generated conv nets, and the engines' results.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import occlens as ol
from occlens import _incremental, testing, zoo
from occlens._checks import clean_forward
from occlens._incremental import (
    _MARGIN,
    _SURE,
    _chunk_for,
    _logged_work,
    _ModelSize,
    _prepare,
    _too_short_to_plan,
    _work,
)
from occlens._incremental_bound import LayerLog, patch_work
from occlens._incremental_graph import analyse
from occlens._memory import measure_forward
from occlens._occlusion import LOGGED_OCCLUDERS, _grid, decision_chunk, wants_layer_log
from occlens._targets import as_target


def logged(model, x):
    _, work = measure_forward(model, x, layers=True)
    return work


def intervals(axis) -> list[tuple[int, int]]:
    return list(zip(axis.starts, axis.ends, strict=True))


class _Probe(nn.Module):
    """One operator of each kind the log tells apart, on a square map (a transpose keeps it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(4).eval()
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.average = nn.AvgPool2d(2, 1)
        self.head = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.conv(2 * x - 1)))  # mul, sub, conv, norm, relu
        y = self.pool(y)
        y = torch.cat([y, self.dilated(y)], dim=1)  # a channel concat merges
        y = y + y.view(y.shape)  # the same layout: a pointwise view, then a merge
        y = self.average(y)
        swapped = y.transpose(2, 3) * 1.0  # same shape, other layout: dense from here on
        return self.head(torch.flatten(swapped + y, 1))


def test_the_log_tells_windows_pointwise_ops_merges_and_dense_ops_apart():
    work = logged(_Probe().eval(), torch.rand(2, 3, 16, 16))
    kinds = [layer.kind for layer in work.layers]
    assert kinds == [
        "input", "pointwise", "pointwise",  # 2 * x - 1
        "window", "pointwise", "pointwise",  # conv, batch norm, relu
        "window",  # max pool
        "window", "merge",  # dilated conv, cat
        "pointwise", "merge",  # view of the same layout, add
        "window",  # average pool
        "dense", "dense", "dense",  # transpose, mul, add
        "dense", "dense", "dense",  # flatten (a copy, a view), linear
    ]  # fmt: skip
    windows = [layer.window for layer in work.layers if layer.kind == "window"]
    assert windows == [
        ((3, 2, 1, 1), (3, 2, 1, 1)),  # (kernel, stride, dilation, low padding) per axis
        ((3, 2, 1, 1), (3, 2, 1, 1)),
        ((3, 1, 2, 2), (3, 1, 2, 2)),
        ((2, 1, 1, 0), (2, 1, 1, 0)),
    ]
    assert [layer.size for layer in work.layers[:4]] == [(16, 16)] * 3 + [(8, 8)]
    conv = work.layers[3]
    assert conv.flops == 2 * 3 * 9 * 4 * 8 * 8  # per image, not per batch of 2
    assert conv.numel == 4 * 8 * 8


def test_flips_and_image_dependent_weights_are_dense():
    def flipped(x):
        return F.conv2d(x.flip(3), torch.ones(2, 3, 3, 3)).sum((2, 3))

    def image_kernel(x):
        return F.conv2d(x, x[:1, :, :3, :3].expand(2, 3, 3, 3)).sum((2, 3))

    x = torch.rand(1, 3, 8, 8)
    assert [layer.kind for layer in logged(flipped, x).layers][:3] == ["input", "dense", "dense"]
    kinds = [layer.kind for layer in logged(image_kernel, x).layers]
    assert "window" not in kinds and kinds.count("dense") >= 2


def test_the_log_keeps_no_activation_alive():
    x = torch.rand(1, 3, 8, 8)
    log = LayerLog(x)
    y = torch.relu(x)
    log.record(torch.ops.aten.relu.default, (x,), {}, y, 0.0)
    alive = weakref.ref(y)
    del y
    gc.collect()
    assert alive() is None
    z = torch.zeros(1, 3, 8, 8)  # may take the freed tensor's id: it must not be taken for it
    assert log._layer_of(z) is None and log._layer_of(x) == 0


def test_patch_work_of_one_convolution_has_the_closed_form():
    """Conv 3x3, padding 1 on 16x16, windows 4 at stride 4: every occluder dirties 4 + 2 = 6
    output rows and columns inside the map, 5 at its borders; the largest patch is 6 x 6."""
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.rand(1, 3, 16, 16)
    grid = _grid(x, 4, 4, "fit", "mean", None)
    patch = patch_work(logged(conv, x).layers, intervals(grid.rows), intervals(grid.cols))
    per_unit = 2 * 3 * 9 * 5
    assert patch.flops == 3 * 4 * 4 + per_unit * 6 * 6  # the input patch (1 flop/value) + conv
    assert patch.flops_full == 3 * 16 * 16 + per_unit * 16 * 16
    assert patch.steps == 2
    item, reads, whole = 4, (6 - 1) * 1 + 3, 5 * 16 * 16  # the output map is pasted whole
    assert patch.moved == 2 * item * (3 * 4 * 4 + 5 * 6 * 6 + reads * reads * 3 + whole)
    assert patch.largest == max(3 * 4 * 4, reads * reads * 3, whole)


def _both_estimates(model, x, window, stride):
    """The log's patch work and the cost model's inputs from it and from the traced plan."""
    grid = _grid(x, window, stride, "fit", "mean", None)
    clean, work = measure_forward(model, x, layers=True)
    chunk = decision_chunk(work, x, len(grid) + 1)
    patch = patch_work(work.layers, intervals(grid.rows), intervals(grid.cols))
    size = _ModelSize.of(model)
    logged_work = _logged_work(work, x, grid, chunk, size)  # what auto's gate reads
    g = analyse(model, x)
    goal = as_target(0, "test").resolve(clean).select(0)
    geo = _prepare(g, grid.bounds(), goal, None)
    traced = _work(g, geo, x, _chunk_for(g, geo, x, None), chunk)
    return patch, logged_work, traced


@pytest.mark.parametrize(
    ("name", "side", "window", "stride"),
    [
        ("shapes", 64, 8, 4),
        ("tiny_cnn", 32, 4, 2),
        ("alexnet", 64, 8, 4),
        ("alexnet", 224, 32, 32),
        ("resnet18", 64, 8, 4),
        ("vgg16", 64, 16, 8),
    ],
)
def test_the_log_predicts_the_traced_plan(name, side, window, stride):
    """Where the rules agree the log finds the traced geometry's FLOPs (to the dropout and
    flatten layers the fx graph counts and aten does not see), and its estimate of the
    incremental engine's seconds is within 3% below and 25% above the traced plan's (more
    steps where the plan folds batch norm into the convolution)."""
    model = zoo.shapes() if name == "shapes" else getattr(testing, name)()
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    patch, logged_work, traced = _both_estimates(model, x, window, stride)
    assert patch.flops >= (1 - 1e-4) * traced.flops_patch
    assert patch.steps >= traced.steps - 1
    ratio = logged_work.incremental() / traced.incremental()
    assert 0.97 <= ratio <= 1.25, ratio


@given(
    model=testing.small_cnns(min_input=12, num_classes=3),
    x=testing.images(min_size=12, max_size=24),
    window=st.integers(1, 8),
    stride=st.integers(1, 6),
)
def test_generated_nets_log_at_least_the_traced_flops(model, x, window, stride):
    """On random convs, pools (padding, ceil mode, dilation), batch norms and residual blocks
    the log's interval rules find at least the FLOPs the traced geometry finds, and its
    estimate is never more than 3% below the plan's."""
    model, x = model.double(), x.double()[None]
    window = min(window, *x.shape[2:])
    patch, logged_work, traced = _both_estimates(model, x, window, stride)
    assert patch.flops >= (1 - 1e-9) * traced.flops_patch
    assert logged_work.incremental() >= 0.97 * traced.incremental()


CASES = [  # short runs that the rule "plan where batched takes 20x the planning" ran batched
    ("shapes", 64, 8, 4),  # 225 occluders, 31 ms batched, 13 ms incremental
    ("tiny_cnn", 32, 4, 2),  # 225 occluders, 11 ms batched, 8 ms incremental
]


@pytest.mark.parametrize(("name", "side", "window", "stride"), CASES)
def test_auto_plans_the_short_runs_the_log_shows_it_wins(name, side, window, stride, monkeypatch):
    model = zoo.shapes() if name == "shapes" else testing.tiny_cnn()
    x = torch.rand(3, side, side, generator=torch.Generator().manual_seed(1))
    batch = x[None]
    grid = _grid(batch, window, stride, "fit", "mean", None)
    assert wants_layer_log("auto", batch, grid)
    _, work = clean_forward(model, batch, "test", measure=True, layers=True)
    chunk = decision_chunk(work, batch, len(grid) + 1)
    assert _too_short_to_plan(model, batch, grid, work, chunk) == ""
    with monkeypatch.context() as patched:  # the rule alone, without the layer log
        patched.setattr(_incremental, "_logged_incremental", lambda *args: False)
        assert "too short" in _too_short_to_plan(model, batch, grid, work, chunk)
    plan = ol.explain_engine(model, x, 0, window=window, stride=stride)
    assert plan.engine == "incremental" and plan.cost_incremental < _MARGIN * plan.cost_batched
    options = dict(window=window, stride=stride)
    auto = ol.occlusion(model, x, 0, **options)
    assert torch.equal(auto, ol.occlusion(model, x, 0, engine="incremental", **options))
    batched = ol.occlusion(model, x, 0, engine="batched", **options)
    score = float(
        model(batch)[0, 0].detach().abs()
    )  # deltas carry the float32 rounding of the scores
    assert float((auto - batched).abs().max()) <= 1e-5 * max(float(batched.abs().max()), score)


@pytest.mark.parametrize(
    ("name", "side", "window", "stride"),
    [("shapes", 64, 32, 32), ("shapes", 64, 16, 8), ("tiny_cnn", 32, 16, 16)],
)
def test_auto_still_skips_short_runs_the_plan_would_send_batched(name, side, window, stride):
    model = zoo.shapes() if name == "shapes" else testing.tiny_cnn()
    x = torch.rand(3, side, side, generator=torch.Generator().manual_seed(2))
    plan = ol.explain_engine(model, x, 0, window=window, stride=stride)
    assert plan.engine == "batched" and "too short" in plan.reason


def test_the_log_estimate_implies_the_plan_on_every_reference_case():
    """Whenever the log alone would let auto plan a run, the traced plan chooses incremental:
    planning a short run is never wasted on these."""
    cases = [*CASES, ("shapes", 64, 4, 2), ("shapes", 64, 16, 8), ("shapes", 64, 32, 32)]
    cases += [("tiny_cnn", 32, 16, 16), ("tiny_cnn", 32, 8, 2)]
    for name, side, window, stride in cases:
        model = zoo.shapes() if name == "shapes" else testing.tiny_cnn()
        x = torch.rand(1, 3, side, side)
        _, logged_work, traced = _both_estimates(model, x, window, stride)
        if logged_work.incremental() <= _SURE * _MARGIN * traced.batched():
            assert traced.incremental() <= _MARGIN * traced.batched(), name


def test_chunk_size_and_memory_budget_never_change_the_engine():
    model, x = zoo.shapes(), torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    options = dict(window=8, stride=4)
    plans = {
        ol.explain_engine(model, x, 0, chunk_size=c, memory_budget=b, **options).engine
        for c, b in ((None, None), (1, None), (500, None), (None, 1 << 20))
    }
    assert plans == {"incremental"}
    whole = ol.occlusion(model, x, 0, chunk_size=300, **options)
    for chunk in (2, 7, 64):
        torch.testing.assert_close(
            ol.occlusion(model, x, 0, chunk_size=chunk, **options), whole, rtol=1e-5, atol=1e-6
        )


def test_the_layer_log_is_taken_only_for_auto_from_enough_occluders():
    """The log costs the same on every run; below `LOGGED_OCCLUDERS` occluded images it would
    be a visible share of a batched run of a small model, and is not taken."""
    x = torch.rand(4, 3, 64, 64)
    for window, count, logs in ((8, 1, True), (16, 1, False), (16, 4, True)):
        grid = _grid(x[:count], window, window, "fit", "mean", None)
        assert (count * len(grid) >= LOGGED_OCCLUDERS) is logs
        assert wants_layer_log("auto", x[:count], grid) is logs
        for engine in ("batched", "incremental"):
            assert not wants_layer_log(engine, x[:count], grid)
    model = zoo.shapes()
    for window, logged_layers in ((8, True), (16, False)):  # 64 and 16 occluders
        grid = _grid(x[:1], window, window, "fit", "mean", None)
        _, work = clean_forward(
            model, x[:1], "test", measure=True, layers=wants_layer_log("auto", x[:1], grid)
        )
        assert bool(work.layers) is logged_layers


def test_model_size_reads_what_the_public_module_api_reports():
    """`_ModelSize` reads the modules' own dicts for speed; the public API is the reference,
    on models with bias-less convs (a None parameter), buffers, Linear heads and a None child."""
    holed = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Linear(4, 2))
    holed.register_module("gone", None)
    for model in (holed, zoo.shapes(), testing.resnet18(), testing.alexnet()):
        modules = list(model.modules())
        own = [(*m.parameters(recurse=False), *m.buffers(recurse=False)) for m in modules]
        sizes = [sum(t.nbytes for t in tensors) for tensors in own]
        linear = [type(m) is nn.Linear for m in modules]
        expected = _ModelSize(
            sum(sizes),
            sum(s for s, is_linear in zip(sizes, linear, strict=True) if not is_linear),
            sum(next(m.children(), None) is None for m in modules),
        )
        assert _ModelSize.of(model) == expected

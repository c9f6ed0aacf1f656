"""The incremental and receptive-field-cropped occlusion engines (issue 5): exact vs the batched one.

Every comparison runs in float64, where both engines agree to ~1e-13; the tolerance 1e-9 relative
to the largest delta leaves room for summation order only. Each test also checks that the engine
it meant to test really ran (no silent fallback), from the debug log.
"""

from __future__ import annotations

import logging
import time
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from _state import ModelState, assert_untouched, tensor_state
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import occlens as ol
from occlens import targets as T
from occlens import testing

FALLBACK = "falls back"


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9) -> bool:
    """Equal to `rtol` of the largest delta, or to float64 rounding of the scores (1e-12)."""
    return float((a - b).abs().max()) <= rtol * float(b.abs().max()) + 1e-12


@pytest.fixture
def debug_log(caplog):
    caplog.set_level(logging.DEBUG, logger="occlens")
    return caplog


def fell_back(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]


def both(model, x, target, **options) -> tuple[torch.Tensor, torch.Tensor]:
    batched = ol.occlusion(model, x, target, engine="batched", **options)
    incremental = ol.occlusion(model, x, target, engine="incremental", **options)
    return batched, incremental


@cache
def reference(name: str) -> nn.Module:
    return getattr(testing, name)(num_classes=7, key=1).double()


def image(seed: int, shape, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- reference architectures


@pytest.mark.parametrize(
    ("name", "size", "window", "stride"),
    [("alexnet", 72, 12, 10), ("resnet18", 56, 9, 8), ("vgg16", 40, 10, 10)],
)
def test_reference_architectures_equal_the_batched_engine(debug_log, name, size, window, stride):
    model, x = reference(name), image(0, (3, size, size))
    batched, incremental = both(
        model, x, 3, window=window, stride=stride, edge="cover", aggregate="grid"
    )
    assert not fell_back(debug_log)
    assert close(incremental, batched)
    assert batched.abs().max() > 0


def test_unit_targets_at_alexnet_conv3_and_conv5_are_cropped_and_exact(debug_log):
    model, x = reference("alexnet"), image(1, (3, 128, 128))
    for layer, unit in (("features.6", (5, 5, 6)), ("features.10", (7, 0, 2))):
        conv = ol.layer(model, layer)
        options = dict(window=10, stride=15, edge="cover", aggregate="grid", fill="mean")
        batched, incremental = both(conv, x, T.unit(*unit), **options)
        assert close(incremental, batched)
        y0, x0, y1, x1 = ol.receptive_field(model, layer, 128).region(*unit[1:])
        plan = ol.explain_engine(conv, x, T.unit(*unit), **options)
        assert plan.live < plan.positions  # occluders outside the field are never run
        starts = range(0, 128, 15)
        rows = [i for i, r in enumerate(starts) if r >= y1 or min(r + 10, 128) <= y0]
        cols = [j for j, c in enumerate(starts) if c >= x1 or min(c + 10, 128) <= x0]
        assert torch.all(incremental[rows] == 0) and torch.all(incremental[:, cols] == 0)
    assert not fell_back(debug_log)


# ---------------------------------------------------------------- generated nets


FILLS = st.sampled_from(["zero", "number", "channel", "mean", "blur", "noise"])


def _fill(name: str):
    return {
        "zero": 0.0,
        "number": 0.3,
        "channel": torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64),
        "mean": "mean",
        "blur": ol.fills.blur(1.0),
        "noise": ol.fills.uniform(-2, 2),
    }[name]


@given(
    model=testing.small_cnns(min_input=8, num_classes=4),
    x=testing.images(min_size=8, max_size=18),
    data=st.data(),
)
def test_generated_nets_equal_the_batched_engine(model, x, data):
    model, x = model.double(), x.double()
    height, width = x.shape[1:]
    fill = data.draw(FILLS)
    low = 2 if fill == "noise" else 1  # the batched engine warns on 1x1 noise windows (vmap)
    window = (data.draw(st.integers(low, height)), data.draw(st.integers(low, width)))
    stride = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)))
    options = dict(
        window=window,
        stride=stride,
        edge=data.draw(st.sampled_from(["fit", "cover"])),
        aggregate=data.draw(st.sampled_from(["mean", "sum", "grid", "center"])),
        fill=_fill(fill),
        absolute=data.draw(st.booleans()),
        chunk_size=data.draw(st.sampled_from([None, 1, 3, 16])),
        key=data.draw(st.integers(0, 5)),
    )
    if data.draw(st.booleans()):
        y0, x0 = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
        y1, x1 = data.draw(st.integers(y0 + 1, height)), data.draw(st.integers(x0 + 1, width))
        options["box"] = (y0, x0, y1, x1)
    target = data.draw(st.sampled_from([0, T.prob(1), T.logit(3)]))
    try:
        batched = ol.occlusion(model, x, target, engine="batched", **options)
    except ol.OcclensError:  # a box too small for the window
        with pytest.raises(ol.OcclensError):
            ol.occlusion(model, x, target, engine="incremental", **options)
        return
    incremental = ol.occlusion(model, x, target, engine="incremental", **options)
    assert close(incremental, batched), (model, options, incremental - batched)


@given(
    model=testing.small_cnns(min_input=8, num_classes=4),
    x=testing.images(min_size=8, max_size=24),
    window=st.integers(1, 8),
    stride=st.integers(1, 4),
    chunk=st.integers(1, 40),
)
def test_chunks_cover_the_live_occluders_once_with_patches_fitted_to_them(
    model, x, window, stride, chunk
):
    """Every live occluder runs once; a chunk's patches hold each of its dirty boxes and are no
    larger than the grid-wide patches; `fitted_sizes` predicts what `select` gives."""
    from occlens._incremental import _prepare
    from occlens._incremental_graph import analyse
    from occlens._occlusion import _grid
    from occlens._targets import as_target

    window = min(window, *x.shape[1:])
    image = x[None].double()
    g = analyse(model.double(), image)
    grid = _grid(image, window, stride, "fit", "grid", None)
    geo = _prepare(g, grid.bounds(), as_target(0, "test"), None)
    chunks = geo.chunks(chunk)
    assert all(0 < len(c) <= chunk for c in chunks)
    assert torch.equal(torch.cat(chunks).sort().values, geo.live.nonzero()[:, 0])
    ordered = geo.chunks(chunk, in_order=True)
    assert torch.equal(torch.cat(ordered), geo.live.nonzero()[:, 0])
    fitted = geo.fitted_sizes(chunks)
    for k, index in enumerate(chunks):
        part = geo.select(index)
        for node, box in geo.boxes.items():
            h, w = part.size[node]
            assert (h, w) == (int(fitted[node][0][k]), int(fitted[node][1][k]))
            assert h <= geo.size[node][0] and w <= geo.size[node][1]
            y0, y1, x0, x1 = geo.needed[node]
            oy, ox = part.oy[node], part.ox[node]
            assert bool(((oy >= y0) & (oy + h <= y1) & (ox >= x0) & (ox + w <= x1)).all())
            b = box.select(index)
            dirty = (b.y0 < b.y1) & (b.x0 < b.x1)
            holds = (b.y0 >= oy) & (b.y1 <= oy + h) & (b.x0 >= ox) & (b.x1 <= ox + w)
            assert bool((holds | ~dirty).all())


@given(
    model=testing.small_cnns(min_input=10),
    x=testing.images(min_size=10, max_size=20),
    data=st.data(),
)
def test_generated_unit_targets_are_cropped_exactly(model, x, data):
    """Cropping to the unit's field equals the batched engine; occluders outside it give 0."""
    model, x = model.double(), x.double()
    size = tuple(x.shape[1:])
    fh, fw = model.feature_size(size)
    y, xx = data.draw(st.integers(0, fh - 1)), data.draw(st.integers(0, fw - 1))
    features = ol.layer(model, "features")
    channel = data.draw(st.integers(0, model.features(x[None]).shape[1] - 1))
    target = data.draw(st.sampled_from([T.unit(channel, y, xx), T.peak(channel)]))
    window = (data.draw(st.integers(1, size[0])), data.draw(st.integers(1, size[1])))
    stride = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    options = dict(
        window=window,
        stride=stride,
        edge=data.draw(st.sampled_from(["fit", "cover"])),
        fill=data.draw(st.sampled_from([0.0, "mean", ol.fills.uniform(-3, 3)])),
        key=1,
        aggregate="grid",
    )
    batched, incremental = both(features, x, target, **options)
    assert close(incremental, batched)
    if isinstance(target, type(T.unit(0, 0, 0))):
        y0, x0, y1, x1 = model.receptive_box(y, xx, size)
        grid = ol._grid.Grid  # noqa: F841 - positions come from the map's shape
        rows = _positions(size[0], window[0], stride[0], options["edge"])
        cols = _positions(size[1], window[1], stride[1], options["edge"])
        for i, (top, bottom) in enumerate(rows):
            for j, (left, right) in enumerate(cols):
                if not (top < y1 and bottom > y0 and left < x1 and right > x0):
                    assert incremental[i, j] == 0


def _positions(size: int, window: int, stride: int, edge: str) -> list[tuple[int, int]]:
    if edge == "fit":
        return [(s, s + window) for s in range(0, size - window + 1, stride)]
    count = -(-max(size - window, 0) // stride) + 1
    return [(k * stride, min(k * stride + window, size)) for k in range(count) if k * stride < size]


def test_batches_with_per_image_targets(debug_log):
    model = testing.small_cnns  # noqa: F841 - documents where the nets come from
    net = testing.SmallCNN(
        [
            testing.ConvStage(5, 3, padding=1),
            testing.PoolStage("max", 2, 2),
            testing.ResidualStage(5, relu=("F.relu", "Tensor.relu_")),
        ],
        num_classes=4,
        key=3,
    ).double()
    xs = image(2, (3, 3, 14, 12))
    labels = torch.tensor([0, 3, 1])
    batched, incremental = both(
        net, xs, labels, window=4, stride=2, fill=ol.fills.uniform(), key=4, edge="cover"
    )
    assert incremental.shape == (3, 14, 12)
    assert close(incremental, batched)
    assert not fell_back(debug_log)


# ---------------------------------------------------------------- graphs beyond Sequential


class Branchy(nn.Module):
    """Functional convs, in-place ops, a concat, an avg pool with ceil_mode, a gate, LRN."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(6, 3, 3, 3, generator=gen) * 0.4)
        self.b1 = nn.Parameter(torch.randn(6, generator=gen) * 0.1)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(6, 4, 5, stride=2, padding=2, groups=2)
        self.pool = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.lrn = nn.LocalResponseNorm(3)
        self.bn = nn.BatchNorm2d(8)
        self.same = nn.Conv2d(8, 8, 4, padding="same", bias=False)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2, generator=gen)
            self.bn.running_var.uniform_(0.5, 2.0, generator=gen)
        self.eval()

    def forward(self, x):
        y = F.conv2d(x, self.w1, self.b1, padding=1)
        y = F.relu(y, inplace=True)
        a = self.pool(self.conv2(y))
        b = self.pool(self.conv3(y))
        b.mul_(0.5)
        z = torch.cat([a, b], dim=1)
        z = self.lrn(self.bn(z)) + 0.1
        z = z * torch.sigmoid(z.mean((2, 3), keepdim=True))  # a global gate: dense from here
        z = self.same(z)
        z += 1.0
        return self.fc(z.amax((2, 3)))


def test_branches_functional_convs_and_in_place_ops(debug_log):
    model, x = Branchy().double(), image(3, (3, 21, 19))
    before = ModelState.of(model)
    batched, incremental = both(model, x, 2, window=(5, 4), stride=(3, 2), edge="cover")
    assert close(incremental, batched)
    assert not fell_back(debug_log)
    assert_untouched(model, before)


# ---------------------------------------------------------------- fallbacks


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent: fx cannot trace it
            y = -y
        return self.fc(y.mean((2, 3)))


def _bn_net(train: bool) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )
    net(torch.rand(2, 3, 8, 8))
    return net.double().train(train)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("function", "not an nn.Module"),
        ("untraceable", "cannot trace"),
        ("fill function", "fill function"),
        ("hooked layer", "forward hook"),
        ("train-mode batch norm", "training mode"),
    ],
)
def test_fallbacks_give_the_batched_result_and_say_why(debug_log, case, reason):
    x = image(4, (3, 8, 8))
    model: object = _bn_net(False)
    options: dict = dict(window=3, stride=2)
    if case == "function":
        net = _bn_net(False)
        model = lambda t: net(t)  # noqa: E731
    elif case == "untraceable":
        model = Branching().double().eval()
    elif case == "fill function":
        options["fill"] = lambda img, mask, gen: torch.where(mask, 0.5, img)
    elif case == "hooked layer":
        from occlens._layers import HookedLayer

        model = HookedLayer(_bn_net(False), "1")
    else:
        model = _bn_net(True)
    target = T.channel(0) if case == "hooked layer" else 1
    if case == "train-mode batch norm":
        with pytest.raises(ol.OcclensError, match="training mode"):  # refused at the boundary
            ol.occlusion(model, x, target, engine="incremental", **options)
        with pytest.raises(ol.OcclensError, match="training mode"):
            ol.explain_engine(model, x, target, **options)
        return
    batched, incremental = both(model, x, target, **options)
    assert torch.equal(batched, incremental)
    messages = fell_back(debug_log)
    assert messages and any(reason in m for m in messages), messages
    plan = ol.explain_engine(model, x, target, **options)
    assert plan.engine == "batched" and reason in plan.reason


# ---------------------------------------------------------------- auto


def test_auto_picks_an_exact_engine_and_says_which(debug_log):
    small = testing.tiny_cnn().double()
    x = image(5, (3, 16, 16))
    plan = ol.explain_engine(small, x, 1, window=4, stride=2)
    assert plan.engine in ("batched", "incremental")
    auto = ol.occlusion(small, x, 1, window=4, stride=2)
    batched = ol.occlusion(small, x, 1, window=4, stride=2, engine="batched")
    assert close(auto, batched)
    resnet, big = reference("resnet18"), image(6, (3, 224, 224))
    plan = ol.explain_engine(resnet, big, 0, window=16, stride=8)
    assert plan.engine == "incremental", plan
    assert plan.flops_incremental < plan.flops_full
    with pytest.raises(ol.OcclensError, match="engine"):
        ol.occlusion(small, x, 1, window=4, engine="fast")
    for argument, value in (("chunk_size", 0), ("memory_budget", -1), ("memory_budget", 1.5)):
        with pytest.raises(ol.OcclensError, match=rf"explain_engine\({argument}\)"):
            ol.explain_engine(small, x, 1, window=4, **{argument: value})


def test_auto_does_not_plan_runs_too_short_to_pay_for_it(debug_log):
    model, x = testing.tiny_cnn().double(), image(9, (3, 16, 16))
    plan = ol.explain_engine(model, x, 1, window=8, stride=8)  # 4 occluders: microseconds batched
    assert plan.engine == "batched" and "too short to pay for planning" in plan.reason
    auto = ol.occlusion(model, x, 1, window=8, stride=8)
    assert torch.equal(auto, ol.occlusion(model, x, 1, window=8, stride=8, engine="batched"))
    assert any("too short" in r.getMessage() for r in debug_log.records)
    assert not any("falls back" in r.getMessage() for r in debug_log.records)


class _CheckedHead(nn.Module):
    """A conv net whose dense head inverts its logits, which fails on all-zero logits:
    planning's zero stand-in for the dense linear layer makes it fail, and planning must then
    analyse it for real."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(torch.flatten(self.features(x), 1))
        return torch.linalg.inv(torch.diag_embed(logits)).diagonal(dim1=-2, dim2=-1)


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "resnet18", "checked head"])
def test_planning_with_deferred_dense_layers_decides_as_the_full_analysis(name):
    """Planning skips the dense linear layers (zero stand-ins): the same plan as a full
    analysis, and after `complete_dense` the same clean values, bit for bit."""
    from occlens._incremental import plan
    from occlens._incremental_graph import analyse, complete_dense
    from occlens._occlusion import _grid
    from occlens._targets import as_target

    model = _CheckedHead().double().eval() if name == "checked head" else reference(name)
    side = 16 if name == "checked head" else 64
    x = image(11, (1, 3, side, side))
    grid = _grid(x, 8, 8, "fit", "mean", None)
    goal = as_target(1, "test").resolve(model(x))
    full = analyse(model, x)
    deferred_plan, g = plan(model, x, goal, grid)
    assert deferred_plan == plan(model, x, goal, grid, graph=full)[0]
    assert g.deferred == (name != "checked head")  # the head's stand-in failed: analysed for real
    complete_dense(g)
    assert not g.deferred
    clean = {node.name: value for node, value in g.clean.items()}
    for node, value in full.clean.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(clean[node.name], value), node.name
    if name == "checked head":
        batched = ol.occlusion(model, x[0], 1, window=4, stride=2, engine="batched")
        assert close(ol.occlusion(model, x[0], 1, window=4, stride=2, engine="auto"), batched)


class _Slow(nn.Module):
    """`model` behind a forward that sleeps: the same numbers, many times slower."""

    def __init__(self, model: nn.Module, seconds: float) -> None:
        super().__init__()
        self.model, self.seconds = model, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.model(x)


@pytest.mark.parametrize(("window", "stride"), [(8, 8), (2, 1)])
def test_auto_decides_from_counted_work_not_from_timings(window, stride):
    """A model that sleeps in its forward (as a loaded machine would make it slow) gets the same
    engine and the same bits: the choice rests on FLOPs and operators, not seconds."""
    model, x = testing.tiny_cnn().double(), image(9, (3, 16, 16))
    slow = _Slow(model, 0.05)
    fast_plan = ol.explain_engine(model, x, 1, window=window, stride=stride)
    slow_plan = ol.explain_engine(slow, x, 1, window=window, stride=stride)
    assert fast_plan.engine == slow_plan.engine
    assert fast_plan.reason.startswith("the batched run") == slow_plan.reason.startswith(
        "the batched run"
    )
    runs = [ol.occlusion(m, x, 1, window=window, stride=stride) for m in (model, slow, model)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_model_and_input_are_untouched(debug_log):
    model = reference("resnet18")
    x = image(7, (3, 40, 40)).requires_grad_()
    before, x_before = ModelState.of(model), tensor_state(x)
    ol.occlusion(model, x, 1, window=8, stride=8, engine="incremental")
    ol.occlusion(ol.layer(model, "layer1"), x, T.peak(3), window=8, stride=8, engine="incremental")
    assert_untouched(model, before)
    assert tensor_state(x) == x_before
    assert not fell_back(debug_log)


# ---------------------------------------------------------------- approximate mode


def test_approximate_mode_is_exact_at_tau_one_and_reports_ssim():
    from occlens._incremental_approx import ssim

    model, x = reference("resnet18"), image(8, (3, 40, 40))
    options = dict(window=8, stride=6, edge="cover")
    exact = ol.occlusion(model, x, 2, engine="batched", **options)
    assert close(ol.occlusion_approximate(model, x, 2, **options), exact)
    rough = ol.occlusion_approximate(model, x, 2, tau=0.4, drill=(2, 0.3), **options)
    assert rough.shape == exact.shape and not close(rough, exact)
    assert ssim(exact, exact) == 1.0 and -1 <= ssim(rough, exact) < 1
    report = ol.approximation_ssim(model, x[None], 2, tau=0.4, drill=(2, 0.3), **options)
    assert len(report.ssim) == 1 and abs(report.ssim[0] - ssim(rough, exact)) < 1e-9
    assert report.seconds_exact > 0 and report.seconds_approximate > 0
    for bad in (dict(tau=0.0), dict(tau=1.5), dict(drill=(0, 0.5)), dict(drill=(2, 2.0))):
        with pytest.raises(ol.OcclensError):
            ol.occlusion_approximate(model, x, 2, **options, **bad)
    with pytest.raises(ol.OcclensError, match="incremental engine cannot run"):
        ol.occlusion_approximate(lambda t: model(t), x, 2, **options)


def test_approximate_mode_on_a_batch_equals_each_image_alone():
    """Rows after the first reuse the first row's trace; each must still see its own image."""
    model, xs = reference("resnet18"), image(9, (3, 3, 40, 40))
    options = dict(window=8, stride=6, edge="cover", tau=0.5, drill=(2, 0.3))
    together = ol.occlusion_approximate(model, xs, torch.tensor([2, 0, 5]), **options)
    for row, target in enumerate([2, 0, 5]):
        alone = ol.occlusion_approximate(model, xs[row], target, **options)
        torch.testing.assert_close(together[row], alone, rtol=0, atol=1e-12)
    exact = ol.occlusion(model, xs, 1, engine="batched", window=8, stride=6, edge="cover")
    assert close(ol.occlusion_approximate(model, xs, 1, window=8, stride=6, edge="cover"), exact)

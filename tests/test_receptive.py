"""receptive_field(): published tables, the gradient's support, SmallCNN boxes, occlusion, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _reference import captum_positions, fitting_positions
from _state import ModelState, assert_untouched
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import occlens as ol
from occlens import targets as T
from occlens import testing
from occlens._receptive import RF, receptive_field


@pytest.fixture(scope="module")
def alexnet() -> nn.Module:
    return testing.alexnet(num_classes=10, key=1)


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    return testing.vgg16(num_classes=10, key=2)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return testing.resnet18(num_classes=10, key=3)


def build(factory, seed: int = 0):
    """`factory()` with PyTorch's default init drawn from `seed`; the global RNG is left alone."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory()


def summary(rf: RF) -> tuple:
    """(size, jump, start, feature_size) of a square field."""
    assert rf.size[0] == rf.size[1] and rf.jump[0] == rf.jump[1] and rf.start[0] == rf.start[1]
    return rf.size[0], rf.jump[0], rf.start[0], rf.feature_size


# DNNBrain's TheoreticalReceptiveField table for AlexNet, VGG16's conv5_3 and ResNet18's stages.
TABLE = [
    ("alexnet", "features.0", 11, 4, 3.5, (55, 55)),  # conv1
    ("alexnet", "features.2", 19, 8, 7.5, (27, 27)),  # pool1
    ("alexnet", "features.3", 51, 8, 7.5, (27, 27)),  # conv2
    ("alexnet", "features.6", 99, 16, 15.5, (13, 13)),  # conv3
    ("alexnet", "features.8", 131, 16, 15.5, (13, 13)),  # conv4
    ("alexnet", "features.10", 163, 16, 15.5, (13, 13)),  # conv5
    ("alexnet", "features.12", 195, 32, 31.5, (6, 6)),  # pool5
    ("alexnet", "avgpool", 195, 32, 31.5, (6, 6)),  # 6x6 -> 6x6: one pixel windows
    ("vgg16", "features.28", 196, 16, 8.0, (14, 14)),  # conv5_3
    ("vgg16", "features.30", 212, 32, 16.0, (7, 7)),  # pool5
    ("resnet18", "maxpool", 11, 4, 0.5, (56, 56)),
    ("resnet18", "layer1", 43, 4, 0.5, (56, 56)),
    ("resnet18", "layer2", 99, 8, 0.5, (28, 28)),
    ("resnet18", "layer2.0.downsample", 43, 8, 0.5, (28, 28)),  # the shortcut alone
    ("resnet18", "layer3", 211, 16, 0.5, (14, 14)),
    ("resnet18", "layer4", 435, 32, 0.5, (7, 7)),
    ("resnet18", "layer4.1.conv2", 435, 32, 0.5, (7, 7)),
]


@pytest.mark.parametrize(("arch", "name", "size", "jump", "start", "feature"), TABLE)
def test_published_tables(request, arch, name, size, jump, start, feature):
    model = request.getfixturevalue(arch)
    before = ModelState.of(model)
    rf = receptive_field(model, name, 224)
    assert summary(rf) == (size, jump, start, feature)
    assert rf.input_size == (224, 224)
    assert_untouched(model, before)


@pytest.mark.parametrize(
    ("arch", "name", "size"),
    [
        ("alexnet", "features.12", (227, 230)),
        ("alexnet", "features.5", (100, 67)),
        ("vgg16", "features.30", (71, 64)),
        ("resnet18", "layer4", (193, 225)),
        ("resnet18", "maxpool", (31, 32)),
    ],
)
def test_feature_size_is_the_real_one(request, arch, name, size):
    model = request.getfixturevalue(arch)
    activation = ol.layer(model, name)(torch.zeros(1, 3, *size))
    assert receptive_field(model, name, size).feature_size == tuple(activation.shape[-2:])


@pytest.mark.parametrize(
    ("arch", "name", "size"),
    [
        ("alexnet", "features.0", 224),
        ("alexnet", "features.3", 224),
        ("alexnet", "features.6", 224),
        ("alexnet", "features.10", 224),
        ("alexnet", "features.12", 288),
        ("resnet18", "layer1", 224),
        ("resnet18", "layer2.0.downsample", 96),
        ("resnet18", "layer2", 224),
        pytest.param("resnet18", "layer4", 480, marks=pytest.mark.slow),
        pytest.param("vgg16", "features.28", 224, marks=pytest.mark.slow),
    ],
)
def test_gradient_support_equals_the_analytic_field(request, arch, name, size):
    """The analytic field is the footprint of d unit / d input for interior units."""
    model = request.getfixturevalue(arch)
    before = ModelState.of(model)
    analytic = receptive_field(model, name, size)
    assert receptive_field(model, name, size, method="gradient") == analytic
    assert_untouched(model, before)


def test_layers_after_a_global_pool_see_the_whole_image(resnet18):
    """avgpool keeps the back-projected field; fc, past the flatten, has jump 0."""
    pool = receptive_field(resnet18, "avgpool", 224)
    assert (pool.size, pool.jump, pool.feature_size) == ((627, 627), (224, 224), (1, 1))
    assert pool.region(0, 0) == (0, 0, 224, 224)
    fc = receptive_field(resnet18, "fc", (3, 224, 224))
    assert fc == RF(224, 0, 112.0, 1, 224)
    assert receptive_field(resnet18, "fc", 224, method="gradient") == fc


class Functional(nn.Module):
    """Functional forms, a two-branch concat, in-place ReLU, 'same'/reflect/asymmetric padding."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(6, 3, 3, 3, generator=gen) / 4)
        self.narrow = nn.Conv2d(6, 4, 1)
        self.wide = nn.Conv2d(6, 4, 5, padding=2)
        self.same = nn.Conv2d(8, 8, 4, padding="same")  # pads 1 before, 2 after
        self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.weight, None, 1, 1))
        x = F.max_pool2d(x, 2)
        x = torch.cat([self.narrow(x), self.wide(x)], dim=1)
        x.relu_()
        x = F.pad(self.same(x), (1, 0, 2, 0))
        x = F.avg_pool2d(self.reflect(x), 3, 2, ceil_mode=True)
        x = x[:, :6] * 2.0 + 1.0
        return torch.relu(x).mean((2, 3))


FUNCTIONAL = [
    # name, size, jump, start (rows, cols); each line's first pixel is start - size / 2
    ("conv2d", (3, 3), (1, 1), (0.5, 0.5)),
    ("max_pool2d", (4, 4), (2, 2), (1.0, 1.0)),
    ("narrow", (4, 4), (2, 2), (1.0, 1.0)),
    ("cat", (12, 12), (2, 2), (1.0, 1.0)),  # the wide branch holds the narrow one
    ("same", (18, 18), (2, 2), (2.0, 2.0)),  # the even kernel is padded by 1 in front
    ("pad", (18, 18), (2, 2), (-2.0, 0.0)),  # 2 rows and 1 column in front
    ("reflect", (22, 22), (2, 2), (-2.0, 0.0)),
    ("avg_pool2d", (26, 26), (4, 4), (0.0, 2.0)),
    ("add", (26, 26), (4, 4), (0.0, 2.0)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(("name", "size", "jump", "start"), FUNCTIONAL)
def test_functional_forms_branches_and_padding(name, size, jump, start):
    model = build(Functional).double()
    before = ModelState.of(model)
    rf = receptive_field(model, name, (3, 61, 58))
    assert (rf.size, rf.jump, rf.start) == (size, jump, start)
    activation = ol.layer(model, name)(torch.zeros(1, 3, 61, 58, dtype=torch.float64))
    assert rf.feature_size == tuple(activation.shape[-2:])
    assert receptive_field(model, name, (61, 58), method="gradient") == rf
    assert_untouched(model, before)


class Shifted(nn.Module):
    """Two branches whose fields overlap without nesting, united by an in-place add."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3)
        self.b = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        a = F.pad(self.a(x), (0, 2, 0, 2))  # unit i sees [i, i + 3)
        b = self.b(F.pad(x, (2, 0, 2, 0)))  # unit i sees [i - 2, i + 1)
        a = a * 3.0
        a.add_(b)  # the result is ignored: later readers of `a` see b's field too
        return a * 2.0  # "mul_1"


@pytest.mark.parametrize(
    ("name", "size", "start"), [("a", 3, 1.5), ("b", 3, -0.5), ("mul", 3, 1.5), ("mul_1", 5, 0.5)]
)
def test_branches_unite_to_the_smallest_interval_holding_both(name, size, start):
    model = build(Shifted)
    rf = receptive_field(model, name, (3, 17, 16))
    assert (rf.size, rf.jump, rf.start, rf.feature_size) == (
        (size, size),
        (1, 1),
        (start, start),
        (15, 14) if name == "a" else (17, 16),
    )
    assert receptive_field(model, name, (17, 16), method="gradient") == rf


def test_ceil_mode_changes_only_the_feature_size():
    floor = nn.Sequential(nn.Conv2d(3, 2, 3), nn.MaxPool2d(3, 2))
    ceil = nn.Sequential(nn.Conv2d(3, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True))
    a, b = receptive_field(floor, "1", 20), receptive_field(ceil, "1", 20)
    assert (a.size, a.jump, a.start) == (b.size, b.jump, b.start) == ((5, 5), (2, 2), (2.5, 2.5))
    assert (a.feature_size, b.feature_size) == ((8, 8), (9, 9))
    assert b.feature_size == tuple(ceil(torch.zeros(1, 3, 20, 20)).shape[-2:])
    assert b.region(8, 8) == (16, 16, 20, 20)  # the last window hangs over the edge


class Squeeze(nn.Module):
    """Squeeze-and-excitation: a gate from a global mean scales every unit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))


def test_a_global_gate_makes_every_unit_see_the_whole_image():
    model = build(Squeeze)
    rf = receptive_field(model, "mul", (12, 10))
    assert rf == RF((12, 10), 0, (6.0, 5.0), (12, 10), (12, 10))
    assert rf.region(0, 0) == rf.region(11, 9) == (0, 0, 12, 10)
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ol.layer(model, "mul")(x)[0, :, 0, 0].sum().backward()
    assert x.grad[0, :, 6:, 5:].abs().sum() > 0  # the far quarter reaches unit (0, 0)
    with pytest.raises(ol.OcclensError, match="reach the border"):
        receptive_field(model, "mul", (12, 10), method="gradient")


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        if bool(x.detach().sum() > -1e30):  # data-dependent: torch.fx cannot trace this
            x = self.conv(x)
        return self.pool(torch.relu(x))


def test_the_gradient_method_works_where_fx_cannot_trace():
    model = build(Untraceable)
    before = ModelState.of(model)
    with pytest.raises(ol.OcclensError, match=r"cannot be traced with torch.fx.*method='gradient'"):
        receptive_field(model, "pool", 40)
    rf = receptive_field(model, "pool", 40, method="gradient")
    twin = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    assert rf == receptive_field(twin, "2", 40) == RF(7, 4, 2.5, 9, 40)
    assert_untouched(model, before)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_the_model_is_untouched_in_train_mode_with_hooks_and_frozen_weights():
    model = build(Functional)
    model.narrow.weight.requires_grad_(False)
    model.wide.register_forward_hook(lambda *args: None)
    model.train()
    before = ModelState.of(model)
    receptive_field(model, "avg_pool2d", 40)  # runs nothing, so train mode is fine
    assert receptive_field(model, "avg_pool2d", 40, method="gradient").size == (26, 26)
    assert_untouched(model, before)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_same_key_same_answer_and_generators_are_not_advanced():
    model = build(Functional)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    a = receptive_field(model, "cat", 30, method="gradient", key=gen)
    assert torch.equal(gen.get_state(), state)
    assert a == receptive_field(model, "cat", 30, method="gradient", key=7)


# --- the RF value ----------------------------------------------------------------------------


def test_region_and_center_follow_the_pixel_convention():
    rf = RF(size=(5, 4), jump=(2, 3), start=(1.5, 1.0), feature_size=(4, 5), input_size=(9, 14))
    assert rf.center(0, 0) == (1.5, 1.0)
    assert rf.region(0, 0, clip=False) == (-1, -1, 4, 3)
    assert rf.region(0, 0) == (0, 0, 4, 3)
    assert rf.region(3, 4) == (5, 11, 9, 14)  # clipped at the bottom and right
    assert rf.region(3, 4, clip=False) == (5, 11, 10, 15)
    outside = RF(size=1, jump=4, start=0.5, feature_size=4, input_size=10)
    assert outside.region(3, 3) == (0, 0, 0, 0)  # pixel 12 lies outside the image
    assert RF(3, 1, 1.5, 2, 5) == RF((3, 3), (1, 1), (1.5, 1.5), (2, 2), (5, 5))


# --- properties on generated CNNs ----------------------------------------------------------


@given(
    model=testing.small_cnns(min_input=10),
    height=st.integers(10, 22),
    width=st.integers(10, 22),
)
def test_region_is_the_back_projected_box(model, height, width):
    """Unclipped: SmallCNN's back-projection exactly. Clipped: exact at the top and left, and
    at most a superset at the bottom and right, where an inner layer's padding can be read."""
    size = (height, width)
    rf = receptive_field(model, "features", size)
    assert rf.feature_size == model.feature_size(size)
    for y in range(rf.feature_size[0]):
        for x in range(rf.feature_size[1]):
            free = model.receptive_box(y, x, size, clip=False)
            assert rf.region(y, x, clip=False) == free
            ours, theirs = rf.region(y, x), model.receptive_box(y, x, size)
            assert ours[:2] == theirs[:2] and ours[2] >= theirs[2] and ours[3] >= theirs[3]
            if free[2] <= height and free[3] <= width:
                assert ours == theirs


@given(
    model=testing.small_cnns(min_input=10),
    x=testing.images(min_size=10, max_size=20),
    data=st.data(),
)
def test_no_gradient_outside_the_region(model, x, data):
    rf = receptive_field(model, "features", tuple(x.shape[1:]))
    y = data.draw(st.integers(0, rf.feature_size[0] - 1))
    xx = data.draw(st.integers(0, rf.feature_size[1] - 1))
    x = x.clone().requires_grad_(True)
    out = ol.layer(model, "features")(x[None])
    out[0, data.draw(st.integers(0, out.shape[1] - 1)), y, xx].backward()
    y0, x0, y1, x1 = rf.region(y, xx)
    outside = torch.ones(x.shape[1:], dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.all(x.grad[:, outside] == 0)


@given(
    model=testing.small_cnns(min_input=10),
    x=testing.images(min_size=10, max_size=20),
    data=st.data(),
)
def test_occluders_outside_the_region_change_nothing(model, x, data):
    size = tuple(x.shape[1:])
    rf = receptive_field(model, "features", size)
    y = data.draw(st.integers(0, rf.feature_size[0] - 1))
    xx = data.draw(st.integers(0, rf.feature_size[1] - 1))
    target = T.unit(data.draw(st.integers(0, model.features.out_channels - 1)), y, xx)
    window = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)))
    stride = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    edge = data.draw(st.sampled_from(["fit", "cover"]))
    fill = data.draw(st.sampled_from([0.0, "mean", ol.fills.uniform(-3, 3)]))
    conv = ol.layer(model, "features")
    options = dict(window=window, stride=stride, edge=edge, fill=fill, key=3, aggregate="grid")
    grid = ol.occlusion(conv, x, target, **options)
    y0, x0, y1, x1 = rf.region(y, xx)
    positions = captum_positions if edge == "cover" else fitting_positions
    rows, cols = positions(size[0], window[0], stride[0]), positions(size[1], window[1], stride[1])
    for i, (top, bottom) in enumerate(rows):
        for j, (left, right) in enumerate(cols):
            if not (top < y1 and bottom > y0 and left < x1 and right > x0):
                assert grid[i, j] == 0
    if y1 + window[0] <= size[0]:  # a box below the region: every occluder misses it
        below = ol.occlusion(conv, x, target, box=(y1, 0, *size), **options)
        assert torch.all(below == 0)


@given(model=testing.small_cnns(min_input=12, max_channels=4), size=st.integers(12, 24))
def test_the_gradient_never_finds_more_than_the_analytic_field(model, size):
    """Dead paths can hide pixels from the gradient, never add them."""
    analytic = receptive_field(model, "features", size)
    size = (model.in_channels, size, size)
    try:
        measured, problem = receptive_field(model, "features", size, method="gradient"), ""
    except ol.OcclensError as error:
        measured, problem = None, str(error)
    if measured is None:  # fields too large for the image, or units dead on both images
        assert any(w in problem for w in ("border", "one unit", "is zero", "same shape"))
        return
    assert measured.feature_size == analytic.feature_size
    a = ((analytic.feature_size[0] - 1) // 2, (analytic.feature_size[1] - 1) // 2)
    inner, outer = measured.region(*a, clip=False), analytic.region(*a, clip=False)
    assert outer[0] <= inner[0] and outer[1] <= inner[1]
    assert inner[2] <= outer[2] and inner[3] <= outer[3]


# --- errors -----------------------------------------------------------------------------------


class Upsampling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.conv(self.up(x))


class Interpolating(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0))


class Mismatched(nn.Module):
    """Two branches with 8 units each, moving by 2 and by 4 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1, stride=2)
        self.b = nn.Conv2d(3, 2, 1, stride=4)

    def forward(self, x):
        return self.a(x) + self.b(F.pad(x, (0, 16, 0, 16)))


class Cropping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv(x)[:, :, 1:, 1:]


class Stacking(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([y, y], dim=3)


def seq(*modules: nn.Module) -> nn.Module:
    return nn.Sequential(*modules)


ANALYTIC_ERRORS = [
    # model, layer, input_size, what the message says after "receptive_field"
    (lambda: seq(nn.Conv2d(3, 2, 3)), "conv", 16, r"\(layer='conv'\): Sequential has no layer"),
    (lambda: seq(nn.Conv2d(3, 2, 3)), 0, 16, r"\(layer\): got 0; pass the layer name"),
    (lambda: seq(nn.Conv2d(3, 2, 3)), "0", 0, r"\(input_size\): got 0; pass the input's H"),
    (lambda: seq(nn.Conv2d(3, 2, 3)), "0", (16,), r"\(input_size\): got \(16,\)"),
    (lambda: seq(nn.Conv2d(3, 2, 3)), "0", (3, 16, 16, 1), r"\(input_size\)"),
    (lambda: seq(nn.Conv2d(3, 2, 3)), "0", (16.0, 16), r"\(input_size\)"),
    (lambda: seq(nn.Conv2d(3, 2, 3)), "0", True, r"\(input_size\): got True"),
    (lambda: seq(nn.Conv2d(3, 2, 3)), "0", "16", r"\(input_size\)"),
    (Upsampling, "conv", 16, r"\(layer='conv'\): .* know Upsample at 'up'; use method='gradient'"),
    (Interpolating, "conv", 16, r"does not know interpolate at 'interpolate'; use method="),
    (lambda: seq(nn.ConvTranspose2d(3, 2, 3), nn.ReLU()), "1", 16, r"ConvTranspose2d at '0'"),
    (
        lambda: seq(nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular")),
        "0",
        16,
        r"\(layer='0'\): Conv2d at '0' pads with padding_mode='circular'",
    ),
    (
        lambda: seq(nn.Conv2d(3, 2, 3, stride=2, padding=1, padding_mode="reflect")),
        "0",
        16,
        r"padding_mode='reflect'",
    ),
    (lambda: seq(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)), "1", 16, r"GroupNorm at '1' normalises"),
    (Mismatched, "add", 16, r"add at 'add' combines maps whose units move by 2 and 4 pixels"),
    (lambda: seq(nn.Conv2d(3, 2, 11, stride=4)), "0", 10, r"input of 10x10 is too small"),
    (
        lambda: seq(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.ReLU()),
        "2",
        8,
        r"Flatten at '1' flattens a map whose units see different parts",
    ),
    (
        lambda: seq(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(4)),
        "1",
        8,
        r"pools 6 units into 4, with windows of unequal sizes",
    ),
    (Cropping, "getitem", 8, r"indexes a map with"),
    (Stacking, "cat", 8, r"concatenates along a spatial dim"),
    (lambda: seq(nn.Conv2d(3, 2, 3), nn.Linear(6, 4)), "1", 8, r"Linear at '1' is applied to"),
    (lambda: seq(nn.Conv2d(3, 2, 3)), "0", 16, None),  # method="exact", below
]


@pytest.mark.parametrize(("factory", "name", "size", "match"), ANALYTIC_ERRORS)
def test_analytic_errors(factory, name, size, match):
    model = build(factory)
    before = ModelState.of(model)
    if match is None:
        match, options = r"\(method\): got 'exact'", {"method": "exact"}
    else:
        options = {}
    with pytest.raises(ol.OcclensError, match=r"^receptive_field.*" + match):
        receptive_field(model, name, size, **options)
    assert_untouched(model, before)


def test_a_model_must_be_a_module():
    with pytest.raises(ol.OcclensError, match=r"receptive_field\(model\): needs an nn.Module"):
        receptive_field(lambda x: x, "0", 16)


def bn_net() -> nn.Module:
    return seq(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU()).eval()


GRADIENT_ERRORS = [
    (lambda: bn_net().train(), "2", 16, {}, r"\(model\): BatchNorm2d at '1' is in training mode"),
    (bn_net, "2", 16, {"key": -1}, r"\(key\): got -1"),
    (bn_net, "2", 16, {"key": None}, r"\(key\): drawing the gradient method's probe images needs"),
    (bn_net, "2", (4, 16, 16), {}, r"\(input_size\): the model raised RuntimeError"),
    (lambda: seq(nn.Conv2d(3, 2, 9)), "0", 10, {}, r"central units see \[0, 9\) and \[1, 10\)"),
    (lambda: seq(nn.Conv2d(3, 2, 3), nn.AvgPool2d(14)), "1", 16, {}, r"one unit along the rows"),
    (
        lambda: seq(nn.Conv2d(3, 2, 3), nn.Flatten()),
        "1",
        8,
        {},
        r"output Tensor\[72\] float64 has no spatial axes",
    ),
    (lambda: seq(nn.Conv2d(3, 2, 3)), "1", 8, {}, r"no layer '1'"),
    (lambda: seq(nn.ReLU()), "0", 8, {}, r"cannot tell how many channels"),
]


@pytest.mark.parametrize(("factory", "name", "size", "options", "match"), GRADIENT_ERRORS)
def test_gradient_errors(factory, name, size, options, match):
    model = build(factory)
    before = ModelState.of(model)
    with pytest.raises(ol.OcclensError, match=match):
        receptive_field(model, name, size, method="gradient", **options)
    assert_untouched(model, before)


@pytest.mark.parametrize(
    ("y", "x", "match"),
    [
        (13, 0, r"RF.region\(y\): got 13 for a feature map of 13x13 units; use an int in 0..12"),
        (0, -1, r"RF.region\(x\): got -1"),
        (1.0, 0, r"RF.region\(y\): got 1.0"),
        (0, True, r"RF.region\(x\): got True"),
    ],
)
def test_region_errors(alexnet, y, x, match):
    rf = receptive_field(alexnet, "features.6", 224)
    with pytest.raises(ol.OcclensError, match=match):
        rf.region(y, x)
    with pytest.raises(ol.OcclensError, match=match.replace("region", "center")):
        rf.center(y, x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, r"RF\(size\): got 0"),
        ({"jump": -1}, r"RF\(jump\): got -1"),
        ({"start": 1.0}, r"RF\(start\): start=\(1.0, 1.0\) with size=\(3, 3\) puts"),
        ({"feature_size": (2, 2, 2)}, r"RF\(feature_size\)"),
        ({"input_size": "224"}, r"RF\(input_size\)"),
    ],
)
def test_rf_errors(kwargs, match):
    values = dict(size=3, jump=1, start=1.5, feature_size=4, input_size=8) | kwargs
    with pytest.raises(ol.OcclensError, match=match):
        RF(**values)

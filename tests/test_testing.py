"""occlens.testing: reference architectures, tiny_cnn, SmallCNN and the hypothesis strategies.

The receptive boxes of `SmallCNN` are checked against `torch.autograd`: no input pixel outside a
unit's box may have a nonzero gradient, and in a copy of the network made linear and positive
(positive weights and inputs, average instead of max pools) the gradient support must fill the box
exactly whenever no clipping happened.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, event, find, given, settings
from hypothesis import strategies as st
from torch import fx, nn

import occlens as ol
from occlens import testing

FAST = settings(max_examples=25, deadline=None)
ORACLE = settings(max_examples=200, deadline=None)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def alexnet() -> nn.Module:
    return testing.alexnet()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return testing.resnet18()


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    return testing.vgg16()


# -- reference architectures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count", "entries"),
    [("alexnet", 61_100_840, 16), ("vgg16", 138_357_544, 32), ("resnet18", 11_689_512, 122)],
)
def test_parameter_counts_match_torchvision(request, name, count, entries):
    model = request.getfixturevalue(name)
    assert n_params(model) == count
    assert len(model.state_dict()) == entries
    assert not any(m.training for m in model.modules())


def test_alexnet_layers(alexnet):
    names = ol.layers(alexnet)
    convs = {"features.0": (64, 11, 4), "features.3": (192, 5, 1), "features.6": (384, 3, 1)}
    convs |= {"features.8": (256, 3, 1), "features.10": (256, 3, 1)}
    for name, (out, kernel, stride) in convs.items():
        conv = alexnet.get_submodule(name)
        assert name in names
        assert (conv.out_channels, conv.kernel_size[0], conv.stride[0]) == (out, kernel, stride)
    for name in ("features.2", "features.5", "features.12"):
        assert isinstance(alexnet.get_submodule(name), nn.MaxPool2d)
    relus = [alexnet.get_submodule(f"features.{i}") for i in (1, 4, 7, 9, 11)]
    assert all(isinstance(r, nn.ReLU) and r.inplace for r in relus)
    fcs = [alexnet.get_submodule(f"classifier.{i}") for i in (1, 4, 6)]
    assert [(fc.in_features, fc.out_features) for fc in fcs] == [
        (9216, 4096),
        (4096, 4096),
        (4096, 1000),
    ]
    assert {"avgpool", "classifier.6", "flatten"} <= set(names)


def test_vgg16_layers(vgg16):
    names = ol.layers(vgg16)
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    pools = [4, 9, 16, 23, 30]
    assert len(vgg16.features) == 31
    for i, module in enumerate(vgg16.features):
        assert f"features.{i}" in names
        kind = nn.Conv2d if i in convs else nn.MaxPool2d if i in pools else nn.ReLU
        assert isinstance(module, kind)
    assert [vgg16.classifier[i].out_features for i in (0, 3, 6)] == [4096, 4096, 1000]
    assert "classifier.6" in names


def test_resnet18_layers(resnet18):
    names = set(ol.layers(resnet18))
    assert {"conv1", "bn1", "relu", "maxpool", "avgpool", "fc"} <= names
    for stage in (1, 2, 3, 4):
        for block in (0, 1):
            parts = ("conv1", "bn1", "relu", "conv2", "bn2")
            assert {f"layer{stage}.{block}.{p}" for p in parts} <= names
        has_downsample = {f"layer{stage}.0.downsample.{i}" for i in (0, 1)} <= names
        assert has_downsample == (stage > 1)
    assert resnet18.get_submodule("layer4.1.conv2").out_channels == 512
    # Each BasicBlock calls its one ReLU module twice, as torchvision's does.
    graph = fx.symbolic_trace(resnet18).graph
    calls = [n.target for n in graph.nodes if n.op == "call_module"]
    assert calls.count("layer4.1.relu") == 2
    assert calls.count("relu") == 1


def test_output_shapes_at_224(alexnet, resnet18, vgg16):
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = (x - 0.45) / 0.25
    with torch.no_grad():
        for model in (alexnet, resnet18):
            out = model(x)
            assert out.shape == (2, 1000)
            assert out.isfinite().all()
            assert out.std() > 1e-3
            assert not torch.equal(out[0], out[1])
        assert ol.layer(alexnet, "features")(x).shape == (2, 256, 6, 6)
        assert ol.layer(resnet18, "layer4")(x).shape == (2, 512, 7, 7)
        out = vgg16(x[:1])  # the one VGG16 forward at full size (~0.5 s)
        assert out.shape == (1, 1000)
        assert out.isfinite().all()
        assert out.std() > 1e-3


@pytest.mark.parametrize("factory", [testing.alexnet, testing.resnet18, testing.tiny_cnn])
def test_key_determines_weights_and_global_rng_is_untouched(factory):
    state = torch.get_rng_state()
    first, again, other = factory(key=3), factory(key=3), factory(key=4)
    rng = torch.Generator().manual_seed(3)
    rng_state = rng.get_state()
    from_generator = factory(key=rng)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(rng.get_state(), rng_state)  # the caller's generator is not advanced
    a, b, c, d = (m.state_dict() for m in (first, again, other, from_generator))
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], d[k]) for k in a)
    weights = [k for k in a if a[k].ndim >= 2]  # conv and linear weights
    assert all(not torch.equal(a[k], c[k]) for k in weights)


def test_num_classes(resnet18):
    model = testing.resnet18(num_classes=7)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 7)
    assert n_params(model) == n_params(resnet18) - 993 * 513
    assert testing.alexnet(num_classes=5).get_submodule("classifier.6").out_features == 5


@pytest.mark.parametrize("factory", [testing.alexnet, testing.vgg16, testing.resnet18])
@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"key": None}, "key"),
        ({"key": "seed"}, "key"),
    ],
)
def test_architecture_errors(factory, kwargs, argument):
    with pytest.raises(ol.OcclensError, match=rf"^{factory.__name__}\({argument}\)"):
        factory(**kwargs)


@pytest.mark.parametrize("factory", [testing.alexnet, testing.resnet18, testing.tiny_cnn])
def test_architectures_trace_with_fx(factory):
    model = factory(key=1)
    traced = fx.symbolic_trace(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_hypothesis_is_only_needed_for_the_strategies():
    code = """
import sys
sys.modules["hypothesis"] = None  # as if it were not installed
import torch
from occlens import testing
assert testing.tiny_cnn()(torch.rand(1, 3, 8, 8)).shape == (1, 3)
try:
    from occlens.testing import images
except ImportError as error:
    assert "pip install hypothesis" in str(error)
else:
    raise SystemExit("imported images without hypothesis")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# -- tiny_cnn ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 8), (8, 13), (31, 9)])
def test_tiny_cnn_shapes(size):
    model = testing.tiny_cnn()
    x = torch.rand(2, 3, *size)
    assert model(x).shape == (2, 3)
    assert ol.layer(model, "features")(x).shape == (2, 16, size[0] // 2, size[1] // 2)
    assert n_params(model) == 4803
    assert not model.training
    steps = [n.target for n in fx.symbolic_trace(model).graph.nodes if n.op == "call_function"]
    assert F.relu in steps
    assert torch.relu in steps


# -- images and targets_for -------------------------------------------------------------------


@FAST
@given(testing.images(channels=2, min_size=3, max_size=5))
def test_images_single(x):
    assert x.dtype == torch.float32
    assert x.shape[0] == 2
    assert 3 <= x.shape[1] <= 5
    assert 3 <= x.shape[2] <= 5
    assert x.isfinite().all()
    assert x.abs().max() <= 3


@FAST
@given(
    testing.images(batch=st.integers(1, 3), min_size=8, max_size=8),
    testing.images(batch=2, channels=1),
)
def test_images_batched(x, y):
    assert x.ndim == 4
    assert 1 <= x.shape[0] <= 3
    assert x.shape[1:] == (3, 8, 8)
    assert y.shape[:2] == (2, 1)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"channels": 0}, "channels"),
        ({"min_size": 9, "max_size": 8}, "max_size"),
        ({"batch": 0}, "batch"),
        ({"min_size": True}, "min_size"),
    ],
)
def test_images_errors(kwargs, argument):
    with pytest.raises(ol.OcclensError, match=rf"^images\({argument}\)"):
        testing.images(**kwargs)


@FAST
@given(st.data())
def test_strategies_leave_global_rng_alone(data):
    state = torch.get_rng_state()
    data.draw(testing.images(batch=2))
    data.draw(testing.small_cnns())
    assert torch.equal(torch.get_rng_state(), state)


@FAST
@given(st.data(), st.sampled_from([(2, 5), (1, 3), (3, 4, 2, 3), (1, 1, 1, 1)]))
def test_targets_for(data, shape):
    output = torch.randn(shape)
    target = data.draw(testing.targets_for(shape))
    target.check(output, "test")
    assert target(output).shape == (shape[0],)
    assert target.resolve(output)(output).shape == (shape[0],)


@FAST
@given(st.data())
def test_targets_for_shorthand(data):
    output = torch.randn(3, 4)
    target = data.draw(testing.targets_for(output.shape, shorthand=True))
    heat = ol.occlusion(lambda x: x.flatten(1)[:, :4], torch.rand(3, 1, 2, 2), target, window=1)
    assert heat.shape == (3, 2, 2)


@pytest.mark.parametrize("shape", [(2,), (2, 3, 4), (0, 3), "2, 3", (2, 3.0)])
def test_targets_for_errors(shape):
    with pytest.raises(ol.OcclensError, match=r"^targets_for\(output_shape\)"):
        testing.targets_for(shape)


# -- SmallCNN and small_cnns ------------------------------------------------------------------


@pytest.mark.parametrize("spelling", testing.RELU_SPELLINGS)
def test_every_spelling_is_a_relu(spelling):
    model = testing.SmallCNN([testing.ConvStage(3, relu=spelling)], key=2)
    x = torch.randn(2, 3, 6, 6)
    conv = model.features.get_submodule("0")
    with torch.no_grad():
        assert torch.equal(model.features(x), torch.relu(conv(x)))
        assert torch.equal(ol.layer(model, "features")(x), torch.relu(conv(x)))


@pytest.mark.parametrize("relu", ["shared", ("Tensor.relu_", "F.relu(inplace=True)")])
@pytest.mark.parametrize("inplace_add", [True, False])
def test_residual_block(relu, inplace_add):
    stage = testing.ResidualStage(3, relu=relu, inplace_add=inplace_add)
    model = testing.SmallCNN([stage], key=0)
    block = model.features.get_submodule("0")
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        expected = torch.relu(block.conv2(torch.relu(block.conv1(x))) + x)
        assert torch.allclose(model.features(x), expected)
    calls = [n.target for n in fx.symbolic_trace(model).graph.nodes if n.op == "call_module"]
    assert calls.count("features.0.relu") == (2 if relu == "shared" else 0)


def test_layer_keeps_unused_in_place_relu():
    model = testing.SmallCNN([testing.ConvStage(3, relu="Tensor.relu_")], key=0)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(ol.layer(model, "fc")(x), model(x))


@FAST
@given(st.data(), testing.small_cnns(min_input=8, num_classes=4))
def test_small_cnns_run(data, model):
    x = data.draw(testing.images(min_size=8, max_size=20, batch=2))
    assert not model.training
    assert model.min_input <= 8
    with torch.no_grad():
        out = model(x)
        fmap = ol.layer(model, "features")(x)
        smallest = model.features(torch.rand(1, 3, 8, 8))
    assert out.shape == (2, 4)
    assert out.isfinite().all()
    assert fmap.shape == (2, model.features.out_channels, *model.feature_size(tuple(x.shape[2:])))
    assert torch.equal(fmap, model.features(x))
    assert smallest.shape[2:] == model.feature_size(8)
    if any(not isinstance(s, testing.PoolStage) for s in model.stages):
        assert (fmap >= 0).all()
    rebuilt = testing.SmallCNN(model.stages, num_classes=4, key=model.key)
    assert all(
        torch.equal(a, b)
        for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values(), strict=True)
    )


@settings(max_examples=15, deadline=None)
@given(testing.small_cnns(min_input=6), testing.images(min_size=6, max_size=9))
def test_small_cnns_run_under_vmap(model, x):
    heat = ol.occlusion(model, x, 0, window=3, stride=2)
    assert heat.shape == x.shape[1:]
    assert heat.isfinite().all()


@FAST
@given(testing.small_cnns(relus=("F.relu", "torch.relu_"), residual=False, pools=False))
def test_small_cnns_options(model):
    assert all(isinstance(s, testing.ConvStage) for s in model.stages)
    assert {s.relu for s in model.stages} <= {"F.relu", "torch.relu_"}
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def spells(model: testing.SmallCNN, spelling: str) -> bool:
    relus = [s.relu for s in model.stages if not isinstance(s, testing.PoolStage)]
    return any(r == spelling or (isinstance(r, tuple) and spelling in r) for r in relus)


FEATURES = {
    **{f"relu {s}": lambda m, s=s: spells(m, s) for s in testing.RELU_SPELLINGS},
    "ceil_mode pool": lambda m: any(getattr(s, "ceil_mode", False) for s in m.stages),
    "avg pool": lambda m: any(getattr(s, "kind", "") == "avg" for s in m.stages),
    "dilated conv": lambda m: any(
        isinstance(s, testing.ConvStage) and s.dilation == 2 for s in m.stages
    ),
    "identity shortcut": lambda m: any(
        isinstance(s, testing.ResidualStage) and not s.projection for s in m.stages
    ),
    "projection shortcut": lambda m: any(
        isinstance(s, testing.ResidualStage) and s.projection for s in m.stages
    ),
    "batch norm": lambda m: any(isinstance(x, nn.BatchNorm2d) for x in m.modules()),
    "in-place add": lambda m: any(getattr(s, "inplace_add", False) for s in m.stages),
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_small_cnns_reach_every_feature(feature):
    search = settings(max_examples=300, database=None, phases=[Phase.generate], deadline=None)
    find(testing.small_cnns(), FEATURES[feature], settings=search)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [({"relus": ("relu",)}, "relus"), ({"relus": ()}, "relus"), ({"min_input": 0}, "min_input")],
)
def test_small_cnns_errors(kwargs, argument):
    with pytest.raises(ol.OcclensError, match=rf"^small_cnns\({argument}\)"):
        testing.small_cnns(**kwargs)


@pytest.mark.parametrize(
    "stages",
    [
        [],
        [testing.ConvStage(3, relu="ReLU")],
        [testing.ConvStage(0)],
        [testing.ResidualStage(4)],  # 3 -> 4 channels needs a projection
        [testing.ResidualStage(3, kernel=2)],
        [testing.ResidualStage(3, relu=("shared", "F.relu"))],
        [testing.PoolStage("max", kernel=2, padding=2)],
        [testing.PoolStage("min")],
        ["conv"],
    ],
)
def test_small_cnn_errors(stages):
    with pytest.raises(ol.OcclensError, match=r"^SmallCNN\(stages\)"):
        testing.SmallCNN(stages)


def test_receptive_box_errors():
    model = testing.SmallCNN([testing.ConvStage(2, kernel=5)])
    assert model.min_input == 5
    with pytest.raises(ol.OcclensError, match=r"^receptive_box\(size\): an input of 4x9"):
        model.receptive_box(0, 0, (4, 9))
    with pytest.raises(ol.OcclensError, match=r"^receptive_box\(x\)"):
        model.receptive_box(0, 5, (5, 9))
    with pytest.raises(ol.OcclensError, match=r"^feature_size\(size\)"):
        model.feature_size((5, 0))


def test_receptive_box_matches_published_tables():
    """Geometry-only copies of the reference networks give the published receptive fields."""
    alex = [testing.ConvStage(1, 11, 4, 2), testing.PoolStage("max", 3, 2)]
    alex += [testing.ConvStage(1, 5, 1, 2), testing.PoolStage("max", 3, 2)]
    alex += [testing.ConvStage(1, 3, 1, 1)] * 3 + [testing.PoolStage("max", 3, 2)]
    vgg: list = []
    for n in (2, 2, 3, 3, 3):
        vgg += [testing.ConvStage(1, 3, 1, 1)] * n + [testing.PoolStage("max", 2, 2)]
    res = [testing.ConvStage(1, 7, 2, 3), testing.PoolStage("max", 3, 2, 1)]
    res += [testing.ResidualStage(1)] * 2
    res += [testing.ResidualStage(1, stride=2, projection=True), testing.ResidualStage(1)] * 3
    cases = [(alex[:-1], 163), (alex, 195), (vgg[:-1], 196), (vgg, 212), (res, 435)]
    for stages, size in cases:
        model = testing.SmallCNN(stages, in_channels=1)
        h, w = model.feature_size(224)
        y0, x0, y1, x1 = model.receptive_box(h // 2, w // 2, 224, clip=False)
        assert y1 - y0 == x1 - x0 == size
        assert model.receptive_box(h // 2, w // 2, 224) == (
            max(y0, 0),
            max(x0, 0),
            min(y1, 224),
            min(x1, 224),
        )


def units(model: testing.SmallCNN, size: tuple[int, int], extra: tuple[int, int]):
    """Corners, centre and one drawn unit of the feature map."""
    h, w = model.feature_size(size)
    picked = {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)}
    picked.add((extra[0] % h, extra[1] % w))
    return sorted(picked)


def gradient_support(model: nn.Module, x: torch.Tensor, y: int, x_: int) -> torch.Tensor:
    """Pixels with a nonzero gradient of unit (y, x_) of ``features``, summed over channels."""
    image = x.detach().clone().requires_grad_(True)
    score = model.features(image[None])[0, :, y, x_].sum()
    (grad,) = torch.autograd.grad(score, image)
    return grad.abs().sum(dim=0) != 0


def outside(box: tuple[int, int, int, int], shape: tuple[int, int]) -> torch.Tensor:
    mask = torch.ones(shape, dtype=torch.bool)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = False
    return mask


@ORACLE
@given(testing.small_cnns(), testing.images(), st.tuples(st.integers(0, 99), st.integers(0, 99)))
def test_receptive_box_holds_the_gradient_support(model, x, extra):
    size = tuple(x.shape[1:])
    for y, x_ in units(model, size, extra):
        box = model.receptive_box(y, x_, size)
        support = gradient_support(model, x, y, x_)
        assert not (support & outside(box, size)).any(), (y, x_, box)


def positive_linear_copy(model: nn.Module) -> nn.Module:
    """The same geometry with positive weights, biases and BN maps, and average pools only.

    Every activation is then positive, each ReLU passes its gradient, and every input pixel a
    unit reads gets a positive gradient.
    """
    model = copy.deepcopy(model).double()
    with torch.no_grad():
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.MaxPool2d):
                    pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding)
                    pool.ceil_mode = child.ceil_mode
                    setattr(module, name, pool)
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                module.weight.abs_().add_(0.05)
                if module.bias is not None:
                    module.bias.abs_().add_(0.05)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
    return model


@ORACLE
@given(testing.small_cnns(), testing.images(), st.tuples(st.integers(0, 99), st.integers(0, 99)))
def test_receptive_box_is_tight_without_clipping(model, x, extra):
    size = tuple(x.shape[1:])
    positive = positive_linear_copy(model)
    image = x.double().abs() + 0.5
    for y, x_ in units(model, size, extra):
        box = model.receptive_box(y, x_, size)
        support = gradient_support(positive, image, y, x_)
        assert not (support & outside(box, size)).any()
        y0, x0, y1, x1 = model.receptive_box(y, x_, size, clip=False)
        unclipped = y0 >= 0 and x0 >= 0 and y1 <= size[0] and x1 <= size[1]
        event(f"unclipped box: {unclipped}")
        if unclipped:  # then nothing was clipped at any stage either
            assert (y0, x0, y1, x1) == box
            rows = support.any(dim=1).nonzero()
            cols = support.any(dim=0).nonzero()
            assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == box

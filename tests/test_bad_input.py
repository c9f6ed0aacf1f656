"""Bad input to occlusion() gets an OcclensError naming the call and the argument, never a deep
torch error, and leaves the model untouched."""

from __future__ import annotations

import pytest
import torch
from _state import ModelState, assert_untouched
from torch import nn

import occlens as ol
from occlens import targets as T


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()


X = torch.rand(3, 10, 12)
OK = dict(window=3, stride=2)


def call(model=None, x=X, target=1, **options):
    kwargs = {**OK, **options}
    return ol.occlusion(classifier() if model is None else model, x, target, **kwargs)


CASES = [
    (
        "window larger",
        dict(window=(11, 3)),
        r"occlusion\(window\): the window \(11, 3\) is larger than the image",
    ),
    ("window zero", dict(window=0), r"occlusion\(window\).*at least 1"),
    ("window negative", dict(window=(3, -2)), r"occlusion\(window\).*at least 1"),
    ("window float", dict(window=2.5), r"occlusion\(window\): got 2.5"),
    ("window triple", dict(window=(1, 2, 3)), r"occlusion\(window\).*\(height, width\)"),
    ("stride zero", dict(stride=0), r"occlusion\(stride\).*at least 1"),
    ("stride negative", dict(stride=(-1, 1)), r"occlusion\(stride\).*at least 1"),
    ("edge", dict(edge="valid"), r"occlusion\(edge\): got 'valid'; use one of 'fit', 'cover'"),
    ("aggregate", dict(aggregate="max"), r"occlusion\(aggregate\): got 'max'"),
    ("box outside", dict(box=(0, 0, 11, 5)), r"occlusion\(box\).*outside the image \(H=10, W=12\)"),
    ("box empty", dict(box=(4, 4, 4, 8)), r"occlusion\(box\).*empty"),
    ("box negative", dict(box=(-1, 0, 5, 5)), r"occlusion\(box\)"),
    ("box shape", dict(box=(1, 2, 3)), r"occlusion\(box\).*four ints"),
    (
        "box too small for fit",
        dict(window=4, box=(8, 0, 10, 12)),
        r"occlusion\(window\): no window",
    ),
    ("fill shape", dict(fill=torch.zeros(4)), r"occlusion\(fill\): a fill tensor of shape \[4\]"),
    ("fill image shape", dict(fill=torch.zeros(3, 9, 12)), r"occlusion\(fill\).*\[3, 9, 12\]"),
    ("fill nan", dict(fill=float("nan")), r"occlusion\(fill\): got nan"),
    ("fill string", dict(fill="black"), r"occlusion\(fill\): unknown fill 'black'"),
    ("fill bool", dict(fill=True), r"occlusion\(fill\): got the bool"),
    ("fill object", dict(fill=object()), r"occlusion\(fill\): cannot use"),
    (
        "uniform without key",
        dict(fill=ol.fills.uniform()),
        r"occlusion\(key\).*needs random numbers",
    ),
    ("key negative", dict(key=-3), r"occlusion\(key\): got -3"),
    ("key string", dict(key="seed"), r"occlusion\(key\): got 'seed'"),
    ("chunk zero", dict(chunk_size=0), r"occlusion\(chunk_size\): got 0"),
    ("chunk float", dict(chunk_size=2.0), r"occlusion\(chunk_size\): got 2.0"),
    ("budget negative", dict(memory_budget=-1), r"occlusion\(memory_budget\)"),
    (
        "target out of range",
        dict(target=5),
        r"occlusion\(target\): Logit\(index=5\): class out of range.*0\.\.4",
    ),
    ("target negative", dict(target=-1), r"occlusion\(target\).*class out of range"),
    ("target float tensor", dict(target=torch.tensor([0.5])), r"occlusion\(target\): cannot use"),
    ("target string", dict(target="cat"), r"occlusion\(target\): cannot use 'cat'"),
    (
        "target length",
        dict(x=torch.rand(2, 3, 10, 12), target=torch.tensor([1, 2, 3])),
        r"per-sample class of shape \[3\] but the batch holds 2",
    ),
    (
        "unit on logits",
        dict(target=T.unit(0, 1, 1)),
        r"occlusion\(target\).*needs a model output of shape \[B, C, H, W\]",
    ),
    (
        "custom target shape",
        dict(target=lambda out: out),
        r"occlusion\(target\): the target function returned",
    ),
    (
        "rank 2",
        dict(x=torch.rand(10, 12)),
        r"occlusion\(x\): expected an image \[C, H, W\].*add or remove the batch",
    ),
    ("rank 5", dict(x=torch.rand(1, 1, 3, 10, 12)), r"occlusion\(x\): expected an image"),
    ("not a tensor", dict(x=[[1.0]]), r"occlusion\(x\): expected an image tensor"),
    ("empty", dict(x=torch.rand(3, 0, 12)), r"occlusion\(x\): the input is empty"),
    (
        "int image",
        dict(x=torch.zeros(3, 10, 12, dtype=torch.uint8)),
        r"occlusion\(x\): expected a floating-point image.*x.float\(\) / 255",
    ),
    ("half on cpu", dict(x=X.half()), r"occlusion\(x\).*float16 on the CPU"),
    (
        "nan",
        dict(x=X.clone().index_fill_(1, torch.tensor([2]), float("nan"))),
        r"occlusion\(x\): .* holds 36 NaN/Inf",
    ),
    (
        "inf",
        dict(x=X.clone().index_fill_(2, torch.tensor([0]), float("inf"))),
        r"occlusion\(x\): .* holds 30 NaN/Inf",
    ),
    (
        "float64 vs float32 model",
        dict(x=X.double()),
        r"occlusion\(x\): the input is Tensor\[1, 3, 10, 12\] float64 but the model's parameters are float32",
    ),
    (
        "wrong channels",
        dict(x=torch.rand(4, 10, 12)),
        r"occlusion\(model_fn\): the model raised RuntimeError on the input Tensor\[1, 4, 10, 12\]",
    ),
]


@pytest.mark.parametrize(("options", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_occlens_error(options, match):
    model = classifier()
    before = ModelState.of(model)
    with pytest.raises(ol.OcclensError, match=match):
        call(model, **options)
    assert_untouched(model, before)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("not callable", r"occlusion\(model_fn\): expected a callable model"),
        (lambda x: x.sum(), r"occlusion\(model_fn\): the model maps a batch .* which has no batch"),
        (lambda x: x[0, 0, 0], r"has no batch dimension"),
        (lambda x: (x, x), r"occlusion\(model_fn\): the model returned a tuple, not a tensor"),
        (lambda x: {"logits": x}, r"returned a dict.*lambda x: model\(x\)\['logits'\]"),
        (lambda x: x.argmax(1), r"occlusion\(model_fn\): the model returned .* int64"),
    ],
)
def test_bad_models(model, match):
    with pytest.raises(ol.OcclensError, match=match):
        ol.occlusion(model, X, 0, window=3)


@pytest.mark.parametrize("layer", [nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Dropout2d(0.1)])
def test_train_mode_batchnorm_or_dropout_is_refused_and_mode_kept(layer):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.Flatten(1), nn.LazyLinear(2))
    model(torch.rand(1, 3, 10, 12))
    model.train()
    before = ModelState.of(model)
    with pytest.raises(
        ol.OcclensError, match=r"occlusion\(model_fn\): .* is in training mode.*model.eval\(\)"
    ):
        ol.occlusion(model, X, 0, window=3)
    assert_untouched(model, before)
    assert model.training


def test_train_mode_without_mode_dependent_layers_is_fine():
    model = classifier().train()
    heat = ol.occlusion(model, X, 0, window=3)
    assert heat.shape == (10, 12) and model.training


def test_unknown_layer_name():
    with pytest.raises(ol.OcclensError, match=r"layer\(name='conv9'\).*close matches"):
        ol.layer(classifier(), "conv9")


def test_uniform_and_blur_arguments():
    with pytest.raises(ol.OcclensError, match=r"fills.uniform\(lo, hi\): got lo=1.0, hi=0.0"):
        ol.fills.uniform(1, 0)
    with pytest.raises(ol.OcclensError, match=r"fills.blur\(sigma\): got -1.0"):
        ol.fills.blur(-1)
    with pytest.raises(ol.OcclensError, match=r"occluder_for_rf\(rf_size\): got 0"):
        ol.occluder_for_rf(0)


def test_a_fill_function_returning_the_wrong_shape():
    with pytest.raises(
        ol.OcclensError, match=r"occlusion\(fill\): the fill function returned Tensor\[3, 2, 2\]"
    ):
        call(fill=lambda img, mask, gen: img[:, :2, :2])


def test_flags_must_be_booleans():
    with pytest.raises(ol.OcclensError, match=r"occlusion\(absolute\): got 'yes'"):
        call(absolute="yes")
    with pytest.raises(ol.OcclensError, match=r"occlusion\(progress\): got 1"):
        call(progress=1)

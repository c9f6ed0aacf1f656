"""Bad input to the gradient family and the combinator: an OcclensError naming the call and the
argument, never a deep torch error, and the model left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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


def smooth_net(activation: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 3), activation, nn.Flatten(), nn.Linear(160, 2)).eval()


CASES = [
    ("saliency class too big", lambda m: ol.saliency(m, X, 5), r"saliency\(target\).*0\.\.4"),
    ("saliency class negative", lambda m: ol.saliency(m, X, -1), r"saliency\(target\).*0\.\.4"),
    (
        "saliency rank 2",
        lambda m: ol.saliency(m, X[0], 0),
        r"saliency\(x\): expected an image \[C, H, W\].*Tensor\[10, 12\]",
    ),
    ("saliency rank 5", lambda m: ol.saliency(m, X[None, None], 0), r"saliency\(x\).*\[1, 1, 3"),
    ("saliency nan", lambda m: ol.saliency(m, X * float("nan"), 0), r"saliency\(x\).*NaN/Inf"),
    (
        "saliency uint8",
        lambda m: ol.saliency(m, (X * 255).to(torch.uint8), 0),
        r"saliency\(x\).*floating-point.*uint8",
    ),
    ("saliency half", lambda m: ol.saliency(m, X.half(), 0), r"saliency\(x\).*float16"),
    (
        "saliency per-image targets",
        lambda m: ol.saliency(m, X.expand(2, 3, 10, 12), torch.tensor([0, 1, 2])),
        r"saliency\(target\).*shape \[3\] but the batch holds 2",
    ),
    (
        "saliency unknown layer",
        lambda m: ol.saliency(m, X, 0, at="conv9"),
        r"saliency\(at='conv9'\): Sequential has no layer",
    ),
    (
        "saliency layer of a function",
        lambda m: ol.saliency(lambda x: m(x), X, 0, at="0"),
        r"saliency\(at\).*needs the model as an nn.Module",
    ),
    ("saliency not callable", lambda m: ol.saliency("m", X, 0), r"saliency\(model_fn\)"),
    (
        "saliency unit on logits",
        lambda m: ol.saliency(m, X, T.unit(0, 1, 1)),
        r"saliency\(target\).*\[B, C, H, W\]",
    ),
    (
        "saliency tuple output",
        lambda m: ol.saliency(lambda x: (m(x), m(x)), X, 0),
        r"saliency\(model_fn\): the model returned a tuple",
    ),
    (
        "input_x_gradient nan",
        lambda m: ol.input_x_gradient(m, X * float("inf"), 0),
        r"input_x_gradient\(x\).*NaN/Inf",
    ),
    ("guided not callable", lambda m: ol.guided(3), r"guided\(model_fn\).*got 3"),
    ("deconvnet not callable", lambda m: ol.deconvnet(None), r"deconvnet\(model_fn\)"),
    ("guided smooth option", lambda m: ol.guided(m, smooth="relu"), r"guided\(smooth\).*'gate'"),
    (
        "guided through SiLU",
        lambda m: ol.saliency(ol.guided(smooth_net(nn.SiLU())), X, 0),
        r"guided\(model_fn\).*silu, a smooth activation",
    ),
    (
        "deconvnet through F.gelu",
        lambda m: ol.saliency(ol.deconvnet(lambda x: F.gelu(m(x))), X, 0),
        r"deconvnet\(model_fn\).*gelu",
    ),
    (
        "integrated_gradients steps 0",
        lambda m: ol.integrated_gradients(m, X, 0, steps=0),
        r"integrated_gradients\(steps\): got 0",
    ),
    (
        "integrated_gradients steps float",
        lambda m: ol.integrated_gradients(m, X, 0, steps=2.5),
        r"integrated_gradients\(steps\): got 2.5",
    ),
    (
        "integrated_gradients method",
        lambda m: ol.integrated_gradients(m, X, 0, method="simpson"),
        r"integrated_gradients\(method\): got 'simpson'",
    ),
    (
        "integrated_gradients trapezoid of 1",
        lambda m: ol.integrated_gradients(m, X, 0, steps=1, method="riemann_trapezoid"),
        r"integrated_gradients\(steps\): the trapezoid rule needs at least 2",
    ),
    (
        "integrated_gradients baseline shape",
        lambda m: ol.integrated_gradients(m, X, 0, baseline=torch.zeros(3, 9, 12)),
        r"integrated_gradients\(baseline\).*\[3, 9, 12\]",
    ),
    (
        "integrated_gradients random baseline",
        lambda m: ol.integrated_gradients(m, X, 0, baseline=ol.fills.uniform()),
        r"integrated_gradients\(baseline\): a random baseline",
    ),
    (
        "integrated_gradients nan baseline",
        lambda m: ol.integrated_gradients(m, X, 0, baseline=float("nan")),
        r"integrated_gradients\(baseline\): got nan",
    ),
    (
        "integrated_gradients chunk_size",
        lambda m: ol.integrated_gradients(m, X, 0, chunk_size=0),
        r"integrated_gradients\(chunk_size\): got 0",
    ),
    (
        "integrated_gradients memory_budget",
        lambda m: ol.integrated_gradients(m, X, 0, memory_budget=-5),
        r"integrated_gradients\(memory_budget\): got -5",
    ),
    ("smoothgrad n 0", lambda m: ol.smoothgrad(n=0), r"smoothgrad\(n\): got 0"),
    ("smoothgrad n float", lambda m: ol.smoothgrad(n=2.0), r"smoothgrad\(n\): got 2.0"),
    ("smoothgrad sigma < 0", lambda m: ol.smoothgrad(sigma=-0.1), r"smoothgrad\(sigma\): got -0.1"),
    ("smoothgrad sigma inf", lambda m: ol.smoothgrad(sigma=float("inf")), r"smoothgrad\(sigma\)"),
    (
        "smoothgrad kind",
        lambda m: ol.smoothgrad(kind="median"),
        r"smoothgrad\(kind\): got 'median'",
    ),
    ("smoothgrad chunk_size", lambda m: ol.smoothgrad(chunk_size=0), r"smoothgrad\(chunk_size\)"),
    (
        "smoothgrad without key",
        lambda m: ol.smoothgrad(n=2)(ol.saliency)(m, X, 0),
        r"smoothgrad\(key\).*pass key=0",
    ),
    (
        "smoothgrad string key",
        lambda m: ol.smoothgrad(n=2)(ol.saliency)(m, X, 0, key="seed"),
        r"smoothgrad\(key\): got 'seed'",
    ),
    (
        "smoothgrad rank",
        lambda m: ol.smoothgrad(n=2)(ol.saliency)(m, X[0], 0, key=0),
        r"smoothgrad\(x\).*Tensor\[10, 12\]",
    ),
    (
        "smoothgrad inner target",
        lambda m: ol.smoothgrad(n=2)(ol.saliency)(m, X, 7, key=0),
        r"\(target\).*0\.\.4",
    ),
    ("chain of a number", lambda m: ol.chain(3), r"chain\(transforms\[0\]\): got 3"),
    (
        "chain of a method",
        lambda m: ol.chain(ol.smoothgrad(n=2), ol.saliency),
        r"chain\(transforms\[1\]\): got the function saliency, not a transform",
    ),
    (
        "map_output of a string",
        lambda m: ol.map_output(ol.maps.abs, "abs"),
        r"map_output\(fns\[1\]\)",
    ),
]


@pytest.mark.parametrize(("case", "make", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_occlens_error_naming_the_argument(case, make, match):
    model = classifier()
    before = ModelState.of(model)
    with pytest.raises(ol.OcclensError, match=match):
        make(model)
    assert_untouched(model, before)
    assert torch._C._len_torch_function_stack() == 0


def test_there_are_at_least_forty_cases():
    assert len({case for case, _, _ in CASES}) >= 40

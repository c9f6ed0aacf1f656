"""Small test networks that spell their rectifiers in every way, and hand-written references.

`Spelled(spelling)` runs conv -> rectifier -> conv -> rectifier -> pool -> linear, with both
rectifiers written in `spelling`. `Spelled(spelling, rule=...)` is the reference: the same
weights and layers, but each rectifier is an explicit autograd.Function carrying the rule,
written here from the papers' definitions, independently of occlens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Guided(torch.autograd.Function):
    """ReLU; backward: (x > 0) * max(g, 0) (Springenberg et al. 2015)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0) * (g > 0)


class _Deconv(torch.autograd.Function):
    """ReLU; backward: max(g, 0) whatever the input (Zeiler & Fergus 2014)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g * (g > 0)


RULES = {"vanilla": torch.relu, "guided": _Guided.apply, "deconvnet": _Deconv.apply}

SPELLINGS = (
    "nn.ReLU",
    "nn.ReLU(inplace)",
    "shared nn.ReLU(inplace)",
    "F.relu",
    "F.relu(inplace)",
    "torch.relu",
    "torch.relu_",
    "Tensor.relu",
    "Tensor.relu_ (result ignored)",
)


class Spelled(nn.Module):
    def __init__(self, spelling: str, rule: str | None = None, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
        self.spelling, self.rule = spelling, rule
        self.relu_a = nn.ReLU(inplace="inplace" in spelling)
        self.relu_b = nn.ReLU(inplace="inplace" in spelling)

    def act(self, x: torch.Tensor, site: str) -> torch.Tensor:
        if self.rule is not None:
            return RULES[self.rule](x)
        s = self.spelling
        if s.startswith("shared"):
            return self.relu_a(x)
        if s.startswith("nn.ReLU"):
            return (self.relu_a if site == "a" else self.relu_b)(x)
        if s == "F.relu":
            return F.relu(x)
        if s == "F.relu(inplace)":
            return F.relu(x, inplace=True)
        if s == "torch.relu":
            return torch.relu(x)
        if s == "torch.relu_":
            return torch.relu_(x)
        if s == "Tensor.relu":
            return x.relu()
        x.relu_()
        return x

    def forward(self, x):
        x = self.act(self.conv1(x), "a")
        x = self.act(self.conv2(x), "b")
        x = F.adaptive_avg_pool2d(x, 4)
        return self.fc(torch.flatten(x, 1))


class DenseNetTail(nn.Module):
    """DenseNet's forward: features, then a functional ``F.relu(inplace=True)`` before pooling."""

    def __init__(self, rule: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6))
        self.classifier = nn.Linear(6, 4)
        self.rule = rule

    def forward(self, x):
        features = self.features(x)
        out = RULES[self.rule](features) if self.rule else F.relu(features, inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(out)


def reference_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain torch.autograd: d sum_b out[b, target[b]] / dx."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    score = out.gather(1, target.view(-1, 1)).sum()
    (gradient,) = torch.autograd.grad(score, x)
    return gradient

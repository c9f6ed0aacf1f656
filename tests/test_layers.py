"""layer() / layers(): fx truncation, the scoped-hook fallback, names and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _state import ModelState, assert_untouched
from torch import nn

import occlens as ol
from occlens._layers import HookedLayer


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)  # shared: called twice

    def forward(self, x):
        out = self.relu(self.conv(x))
        return self.relu(out + x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Block()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.stem(x), inplace=True)
        x = self.block(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Untraceable(Net):
    def forward(self, x):
        if float(x.sum()) > -1e30:  # data-dependent branch: torch.fx cannot trace this
            x = self.stem(x)
        x = self.block(F.relu(x))
        return self.head(x.mean(dim=(2, 3)))


def eager_activation(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """Reference: the output of submodule `name` in a plain forward, copied before later ops."""
    grabbed = []
    handle = model.get_submodule(name).register_forward_hook(
        lambda m, i, o: grabbed.append(o.clone())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return grabbed[0]


@pytest.mark.parametrize("name", ["stem", "block", "block.conv", "head"])
def test_layer_equals_the_eager_activation(name):
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ours = ol.layer(model, name)(x)
    torch.testing.assert_close(ours, eager_activation(model, name, x), rtol=0, atol=0)


def test_inplace_relu_after_the_layer_does_not_overwrite_it():
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        stem = ol.layer(model, "stem")(x)
        assert (stem < 0).any(), "the stem output must keep its negative values"
        torch.testing.assert_close(stem, model.stem(x))


def test_graph_node_names_reach_functional_ops_and_second_calls():
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    names = ol.layers(model)
    assert names[:5] == ["stem", "block", "block.conv", "block.relu", "head"]
    assert "add" in names and "relu" in names and "block_relu_1" in names
    with torch.no_grad():
        added = ol.layer(model, "add")(x)
        stem = F.relu(model.stem(x))
        reference = F.relu(model.block.conv(stem)) + stem
    torch.testing.assert_close(added, reference)


def test_untraceable_model_falls_back_to_a_scoped_hook():
    model, x = Untraceable().eval(), torch.randn(2, 3, 8, 8)
    before = ModelState.of(model)
    conv = ol.layer(model, "block.conv")
    assert isinstance(conv, HookedLayer)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), eager_activation(model, "block.conv", x))
    heat = ol.occlusion(conv, x[0], ol.targets.unit(0, 3, 3), window=2)
    assert heat.shape == (8, 8)
    assert_untouched(model, before)


def test_hook_is_removed_when_the_model_raises():
    class Exploding(Untraceable):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Exploding().eval()
    before = ModelState.of(model)
    with pytest.raises(RuntimeError, match="boom"):
        ol.layer(model, "stem")(torch.randn(1, 3, 8, 8))
    with pytest.raises(ol.OcclensError, match=r"occlusion\(model_fn\): the model raised"):
        ol.occlusion(ol.layer(model, "stem"), torch.randn(3, 8, 8), 0, window=2)
    assert_untouched(model, before)


def test_unknown_names_list_close_matches():
    with pytest.raises(
        ol.OcclensError, match=r"layer\(name='blok.conv'\).*close matches: 'block.conv'"
    ):
        ol.layer(Net(), "blok.conv")


def test_layer_needs_a_module_and_a_used_layer():
    with pytest.raises(ol.OcclensError, match=r"layer\(model\): needs an nn.Module"):
        ol.layer(lambda x: x, "stem")

    class Unused(Net):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Conv2d(4, 4, 1)

    with pytest.raises(ol.OcclensError, match="'spare' is not called"):
        ol.layer(Unused(), "spare")


def test_truncation_shares_parameters_and_changes_nothing():
    model = Net().eval()
    before = ModelState.of(model)
    truncated = ol.layer(model, "block")
    assert truncated.get_submodule("stem").weight is model.stem.weight
    assert_untouched(model, before)


class InPlaceSpellings(nn.Module):
    """In-place ops whose results nobody reads: truncation must keep them all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        a = self.conv(x)
        a.relu_()
        b = self.conv(x)
        F.relu(b, inplace=True)
        c = self.conv(x)
        torch.relu_(c)
        d = self.conv(x)
        self.act(d)
        return self.head(a + b + c + d)


def test_in_place_ops_with_unused_results_survive_truncation():
    model, x = InPlaceSpellings().eval(), torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(ol.layer(model, "head")(x), model(x), rtol=0, atol=0)
        assert (ol.layer(model, "add_2")(x) >= 0).all()

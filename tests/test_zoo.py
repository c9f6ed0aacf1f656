"""occlens.zoo: the shapes dataset, the shipped CNN and its loader, the samples, the pointing game."""

from __future__ import annotations

import builtins
import json
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import occlens as ol
from occlens import zoo
from occlens.zoo import train as zoo_train

ACCURACY_KEY = 4_000_000  # fresh images: training keys stay below zoo.train.HELDOUT_KEY
POINTING_KEY = 5_000_000  # not used for training, nor when the demo settings were chosen
ACCURACY_THRESHOLD = 0.95


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return zoo.shapes()


def same(a: zoo.ShapesData, b: zoo.ShapesData) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a[:4], b[:4], strict=True)) and a[4] == b[4]


# -- dataset -------------------------------------------------------------------------------------


def test_same_key_same_data_different_key_different_data():
    a = zoo.shapes_dataset(32, key=7)
    assert same(a, zoo.shapes_dataset(32, key=7))
    assert same(a, zoo.shapes_dataset(32, key=torch.Generator().manual_seed(7)))
    b = zoo.shapes_dataset(32, key=8)
    assert not torch.equal(a.images, b.images)
    assert not torch.equal(a.boxes, b.boxes)


def test_generator_key_is_copied_not_advanced():
    rng = torch.Generator().manual_seed(3)
    before = rng.get_state()
    zoo.shapes_dataset(4, key=rng)
    assert torch.equal(rng.get_state(), before)


def test_shapes_dtypes_and_ranges():
    data = zoo.shapes_dataset(200, key=1)
    assert data.images.shape == (200, 3, 64, 64)
    assert data.images.dtype == torch.float32
    assert data.labels.shape == (200,) and data.labels.dtype == torch.int64
    assert data.boxes.shape == (200, 4) and data.boxes.dtype == torch.int64
    assert data.masks.shape == (200, 64, 64) and data.masks.dtype == torch.bool
    assert data.classes == zoo.CLASSES == ("circle", "square", "triangle", "cross", "star")
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    # Multiples of 1/255: the images survive 8-bit PNG exactly.
    assert torch.equal((data.images * 255).round() / 255, data.images)
    assert set(data.labels.tolist()) == set(range(len(zoo.CLASSES)))
    assert data.images.std(dim=(2, 3)).min() > 0.02  # cluttered, never flat


def test_other_sizes():
    data = zoo.shapes_dataset(5, key=0, size=48)
    assert data.images.shape == (5, 3, 48, 48) and data.masks.shape == (5, 48, 48)
    assert zoo.shapes_dataset(0, key=0).images.shape == (0, 3, 64, 64)


def test_boxes_are_the_tight_bounds_of_the_object_masks():
    data = zoo.shapes_dataset(300, key=2)
    for mask, (y0, x0, y1, x1) in zip(data.masks, data.boxes.tolist(), strict=True):
        assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
        inside = torch.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not bool((mask & ~inside).any()), "object pixels outside the box"
        # Tight: every edge row and column of the box holds object pixels.
        assert mask[y0].any() and mask[y1 - 1].any()
        assert mask[:, x0].any() and mask[:, x1 - 1].any()


def test_objects_have_a_sensible_size():
    data = zoo.shapes_dataset(300, key=3)
    sides = torch.stack([data.boxes[:, 2] - data.boxes[:, 0], data.boxes[:, 3] - data.boxes[:, 1]])
    assert int(sides.min()) >= 10 and int(sides.max()) <= 40
    area = data.masks.flatten(1).sum(dim=1)
    assert int(area.min()) >= 60


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n": -1, "key": 0}, "n"),
        ({"n": 2.0, "key": 0}, "n"),
        ({"n": 2, "key": None}, "key"),
        ({"n": 2, "key": "seed"}, "key"),
        ({"n": 2, "key": 0, "size": 16}, "size"),
    ],
)
def test_dataset_rejects_bad_arguments(kwargs, argument):
    n = kwargs.pop("n")
    with pytest.raises(ol.OcclensError, match=rf"zoo\.shapes_dataset\({argument}\)"):
        zoo.shapes_dataset(n, **kwargs)


# -- the shipped model ---------------------------------------------------------------------------


def test_model_is_a_small_eval_mode_relu_cnn(model):
    assert isinstance(model, zoo.ShapesNet)
    assert not any(m.training for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < 100_000
    kinds = {type(m) for m in model.modules()}
    assert not any(issubclass(k, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for k in kinds)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert {"features.0", "features.8", "classifier"} <= set(ol.layers(model))


def test_model_is_fx_traceable(model):
    traced = torch.fx.symbolic_trace(model)
    x = zoo.shapes_dataset(4, key=0).images
    assert torch.equal(traced(x), model(x))


def test_shipped_accuracy_on_fresh_images(model):
    data = zoo.shapes_dataset(500, key=ACCURACY_KEY)
    assert zoo_train.accuracy(model, data.images, data.labels) >= ACCURACY_THRESHOLD


def test_metadata_describes_the_shipped_weights():
    meta = zoo.load_metadata()
    assert meta["classes"] == list(zoo.CLASSES)
    assert meta["input_size"] == [3, 64, 64]
    assert meta["heldout_accuracy"] >= ACCURACY_THRESHOLD
    assert meta["heldout_images"] >= 1000
    assert meta["heldout_key"] == zoo_train.HELDOUT_KEY
    assert meta["train_seconds"] < 300
    assert meta["parameters"] == sum(p.numel() for p in zoo.shapes().parameters())


def test_loading_leaves_global_rng_untouched():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    py_state = random.getstate()
    zoo.shapes()
    zoo.shapes_dataset(8, key=0)
    zoo.samples()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()
    assert random.getstate() == py_state


def test_each_load_is_a_fresh_model(model):
    other = zoo.shapes()
    assert other is not model
    with torch.no_grad():
        other.classifier.bias.add_(1.0)
    assert not torch.equal(zoo.shapes().classifier.bias, other.classifier.bias)


# -- user weights --------------------------------------------------------------------------------


def test_user_weights_load_through_the_same_code(model, tmp_path):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.bias"] += torch.arange(5.0)
    path = tmp_path / "mine.safetensors"
    save_file(state, str(path))
    for weights in (path, str(path)):
        mine = zoo.shapes(weights=weights)
        assert not mine.training
        for name, tensor in mine.state_dict().items():
            assert torch.equal(tensor, state[name])


def test_float64_weights_are_cast_to_float32(model, tmp_path):
    path = tmp_path / "double.safetensors"
    save_file({k: v.double() for k, v in model.state_dict().items()}, str(path))
    mine = zoo.shapes(weights=path)
    assert all(p.dtype == torch.float32 for p in mine.parameters())


class _Payload:
    """Unpickling this would set a flag: a stand-in for arbitrary code in a malicious pickle."""

    def __reduce__(self):
        return (exec, ("import builtins; builtins._occlens_zoo_pwned = True",))


def test_a_pickle_renamed_safetensors_is_rejected_without_unpickling(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"features.0.weight": _Payload()}))
    with pytest.raises(ol.OcclensError, match=r"zoo\.shapes\(weights\).*not a readable"):
        zoo.shapes(weights=path)
    assert not hasattr(builtins, "_occlens_zoo_pwned")
    torch_file = tmp_path / "checkpoint.safetensors"
    torch.save(zoo.shapes().state_dict(), torch_file)
    with pytest.raises(ol.OcclensError, match="pickled checkpoints"):
        zoo.shapes(weights=torch_file)


def test_truncated_and_empty_files_are_rejected(model, tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(model.state_dict(), str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path in (cut, empty):
        with pytest.raises(ol.OcclensError, match="not a readable safetensors"):
            zoo.shapes(weights=path)


def test_missing_file_and_bad_argument(tmp_path):
    with pytest.raises(ol.OcclensError, match="does not exist"):
        zoo.shapes(weights=tmp_path / "nope.safetensors")
    with pytest.raises(ol.OcclensError, match="does not exist"):
        zoo.shapes(weights=tmp_path)  # a folder
    with pytest.raises(ol.OcclensError, match=r"zoo\.shapes\(weights\)"):
        zoo.shapes(weights={"classifier.bias": torch.zeros(5)})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("classifier.bias"), r"missing keys \['classifier.bias'\]"),
        (lambda s: s.update(extra=torch.zeros(1)), r"unexpected keys \['extra'\]"),
        (
            lambda s: s.update({"classifier.weight": torch.zeros(3, 64)}),
            r"classifier.weight has shape \[3, 64\], expected \[5, 64\]",
        ),
        (
            lambda s: s.update({"features.0.bias": torch.zeros(16, dtype=torch.int64)}),
            "features.0.bias has dtype torch.int64",
        ),
        (
            lambda s: s.update({"classifier.bias": torch.full((5,), float("nan"))}),
            "classifier.bias holds NaN",
        ),
    ],
)
def test_weights_that_do_not_fit_are_rejected(model, tmp_path, edit, message):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    edit(state)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ol.OcclensError, match=message):
        zoo.shapes(weights=path)


# -- samples -------------------------------------------------------------------------------------


def test_samples_match_their_generator_bit_for_bit():
    from occlens.zoo._samples import pick

    shipped, regenerated = zoo.samples(), pick()
    assert same(shipped, regenerated)
    assert shipped.images.shape == (10, 3, 64, 64)
    assert shipped.labels.tolist() == [0, 1, 2, 3, 4] * 2


def test_samples_index_file_lists_the_shipped_files():
    from importlib import resources

    folder = resources.files("occlens.zoo") / "samples"
    index = json.loads((folder / "samples.json").read_text(encoding="utf-8"))
    data = zoo.samples()
    for sample, label, box in zip(index["samples"], data.labels, data.boxes, strict=True):
        assert (folder / sample["file"]).is_file()
        assert sample["class"] == zoo.CLASSES[label]
        assert sample["box"] == box.tolist()


def test_the_model_gets_every_sample_right(model):
    data = zoo.samples()
    with torch.no_grad():
        assert model(data.images).argmax(dim=1).tolist() == data.labels.tolist()


# -- pointing game -------------------------------------------------------------------------------


def test_pointing_game_on_fresh_images(model):
    data = zoo.shapes_dataset(50, key=POINTING_KEY)
    heat = ol.occlusion(model, data.images, data.labels, **zoo.DEMO_OCCLUSION)
    assert heat.shape == (50, 64, 64)
    hits = zoo.pointing_game(heat, data.boxes)
    assert float(hits.float().mean()) >= 0.9, f"{int(hits.sum())}/50 maxima inside the box"


def test_pointing_game_rule():
    heat = torch.zeros(3, 6, 6)
    heat[0, 1, 1] = 1.0  # inside (1, 1, 3, 3)
    heat[1, 3, 3] = 1.0  # just outside: the box is half-open
    heat[2] = 1.0  # all tied: the first pixel counts
    boxes = torch.tensor([[1, 1, 3, 3], [1, 1, 3, 3], [0, 0, 1, 1]])
    assert zoo.pointing_game(heat, boxes).tolist() == [True, False, True]
    assert zoo.pointing_game(heat[0], boxes[0]).item() is True


def test_pointing_game_rejects_bad_input():
    with pytest.raises(ol.OcclensError, match="heat"):
        zoo.pointing_game(torch.zeros(6), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ol.OcclensError, match="boxes"):
        zoo.pointing_game(torch.zeros(2, 6, 6), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ol.OcclensError, match="boxes"):
        zoo.pointing_game(torch.zeros(6, 6), [0, 0, 1, 1])


# -- training script -----------------------------------------------------------------------------


def test_training_is_deterministic_and_leaves_global_rng_alone(tmp_path, capsys):
    state = torch.get_rng_state()
    a = zoo_train.train(seed=3, images=96, epochs=1, batch=32)
    b = zoo_train.train(seed=3, images=96, epochs=1, batch=32)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    c = zoo_train.train(seed=4, images=96, epochs=1, batch=32)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_training_script_writes_loadable_weights(tmp_path, capsys):
    threads = torch.get_num_threads()
    zoo_train.main(["--images", "64", "--epochs", "1", "--heldout", "32", "--out", str(tmp_path)])
    model = zoo.shapes(weights=tmp_path / "shapes.safetensors")
    meta = json.loads((tmp_path / "shapes.json").read_text(encoding="utf-8"))
    assert meta["heldout_images"] == 32 and meta["train_seed"] == 0
    assert model(zoo.samples().images).shape == (10, 5)
    assert (tmp_path / "samples" / "samples.json").is_file()
    assert "held-out accuracy" in capsys.readouterr().err
    assert torch.get_num_threads() == threads


def test_training_refuses_seeds_whose_keys_would_reach_the_heldout_key():
    with pytest.raises(SystemExit, match="seed < 1000"):
        zoo_train.train(seed=1000, images=8, epochs=1)

"""``occlens explain``: the CLI's maps equal the Python API's; bad input exits 2 with one line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import occlens as ol
from occlens import image as oi
from occlens import targets as T
from occlens import zoo
from occlens._cli import main

SAMPLES = Path(zoo.__file__).parent / "samples"
CIRCLE = SAMPLES / "00_circle.png"
CROSS = SAMPLES / "03_cross.png"
MODEL = "occlens.zoo:shapes"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def explain_json(tmp_path: Path, capsys, *extra: str, images=(CIRCLE,)) -> dict:
    argv = ["explain", MODEL, *map(str, images), "--out", str(tmp_path), "--json", "--no-progress"]
    code, out, err = run([*argv, *extra], capsys)
    assert code == 0, err
    return json.loads(out)


def exact(raw: np.ndarray, reference: torch.Tensor) -> None:
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(raw, reference.detach().numpy())


# --- the acceptance: the CLI reproduces the Python API ------------------------------------------


def test_explain_reproduces_the_python_api_for_every_method(tmp_path, capsys):
    summary = explain_json(
        tmp_path, capsys, "--method", "all", "--window", "10", "--stride", "4", "--n", "8"
    )
    model = zoo.shapes()
    x = oi.load(CIRCLE)
    c = int(model(x[None]).argmax())
    assert summary["images"][0]["predicted"] == c == 0
    raw = np.load(tmp_path / "00_circle.npz")
    assert sorted(raw.files) == sorted(
        [
            "input",
            "occlusion",
            "saliency",
            "guided",
            "deconvnet",
            "smoothgrad",
            "integrated_gradients",
            "input_x_gradient",
        ]
    )
    exact(raw["input"], x)
    exact(
        raw["occlusion"],
        ol.occlusion(model, x, c, window=10, stride=4, fill="mean", edge="cover"),
    )
    exact(raw["saliency"], ol.saliency(model, x, c))
    exact(raw["guided"], ol.saliency(ol.guided(model), x, c))
    exact(raw["deconvnet"], ol.saliency(ol.deconvnet(model), x, c))
    exact(raw["smoothgrad"], ol.smoothgrad(n=8, sigma=0.15)(ol.saliency)(model, x, c, key=0))
    exact(raw["integrated_gradients"], ol.integrated_gradients(model, x, c, steps=50))
    exact(raw["input_x_gradient"], ol.input_x_gradient(model, x, c))
    # The summary describes what was written.
    image = summary["images"][0]
    assert image["maps"]["occlusion"]["shape"] == [64, 64]
    assert image["maps"]["saliency"]["shape"] == [3, 64, 64]
    assert image["raw"] == [str(tmp_path / "00_circle.npz")]
    assert summary["panels"] == [str(tmp_path / "explain.png")]
    with Image.open(tmp_path / "explain.png") as panel:
        assert panel.width > 8 * 192 and panel.height > 192


def test_explain_class_target_options_and_normalisation(tmp_path, capsys):
    explain_json(
        tmp_path,
        capsys,
        "--target",
        "2",
        "-m",
        "occlusion,smoothgrad",
        "integrated-gradients",
        "--window",
        "8x6",
        "--fill",
        "uniform:0:1",
        "--edge",
        "fit",
        "--aggregate",
        "grid",
        "--key",
        "3",
        "--n",
        "4",
        "--sigma",
        "0.3",
        "--smooth-kind",
        "square",
        "--steps",
        "7",
        "--baseline",
        "0.5,0.5,0.5",
        "--mean",
        "0.5",
        "--std",
        "0.25",
        "--raw",
        "both",
    )
    model = zoo.shapes()
    mean, std = torch.tensor([0.5]).view(-1, 1, 1), torch.tensor([0.25]).view(-1, 1, 1)

    def normalized(t):
        return model((t - mean) / std)

    x = oi.load(CIRCLE)
    raw = np.load(tmp_path / "00_circle.npz")
    heat = ol.occlusion(
        normalized,
        x,
        2,
        window=(8, 6),
        stride=(4, 3),
        fill=ol.fills.uniform(0, 1),
        edge="fit",
        aggregate="grid",
        key=3,
    )
    assert heat.shape == (15, 20)
    exact(raw["occlusion"], heat)
    smooth = ol.smoothgrad(n=4, sigma=0.3, kind="square")(ol.saliency)
    exact(raw["smoothgrad"], smooth(normalized, x, 2, key=3))
    baseline = torch.tensor([0.5, 0.5, 0.5])
    exact(
        raw["integrated_gradients"],
        ol.integrated_gradients(normalized, x, 2, baseline=baseline, steps=7),
    )
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "00_circle.safetensors")
    assert torch.equal(tensors["occlusion"], heat)


def test_explain_layer_targets_match_the_api_and_draw_the_rf(tmp_path, capsys):
    summary = explain_json(tmp_path, capsys, "--target", "features.5:7:6:9", "-m", "saliency")
    model = zoo.shapes()
    x = oi.load(CIRCLE)
    raw = np.load(tmp_path / "00_circle.npz")
    exact(raw["saliency"], ol.saliency(ol.layer(model, "features.5"), x, T.unit(7, 6, 9)))
    image = summary["images"][0]
    rf = ol.receptive_field(model, "features.5", 64)
    assert image["rf_box"] == list(rf.region(6, 9, clip=False))
    assert image["predicted"] is None and image["target"] == "features.5:7:6:9"

    summary = explain_json(tmp_path, capsys, "--target", "features.8:3:peak", "-m", "occlusion")
    heat = ol.occlusion(
        ol.layer(model, "features.8"), x, T.peak(3), window=8, stride=4, fill="mean", edge="cover"
    )
    exact(np.load(tmp_path / "00_circle.npz")["occlusion"], heat)
    assert summary["images"][0]["score"] == pytest.approx(
        float(ol.layer(model, "features.8")(x[None])[0, 3].max().detach())
    )


def test_explain_folders_shared_scale_and_unique_names(tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "b").mkdir(parents=True)
    for path in (CIRCLE, CROSS):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "b" / CIRCLE.name).write_bytes(CIRCLE.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    summary = explain_json(
        out,
        capsys,
        "-m",
        "saliency",
        "--scale",
        "shared",
        "--rows",
        "2",
        images=(folder, folder / "b" / CIRCLE.name),
    )
    assert [Path(i["path"]).name for i in summary["images"]] == [
        "00_circle.png",
        "03_cross.png",
        "00_circle.png",
    ]
    assert sorted(p.name for p in out.glob("*.npz")) == [
        "00_circle-2.npz",
        "00_circle.npz",
        "03_cross.npz",
    ]
    assert summary["panels"] == [str(out / "explain-1.png"), str(out / "explain-2.png")]
    a, b = np.load(out / "00_circle.npz"), np.load(out / "00_circle-2.npz")
    np.testing.assert_array_equal(a["saliency"], b["saliency"])


def test_explain_weights_files_load_tensors_only(tmp_path, capsys):
    state = {k: v * 0.5 for k, v in zoo.shapes().state_dict().items()}
    reference = zoo.ShapesNet()
    reference.load_state_dict(state)
    x = oi.load(CIRCLE)
    expected = ol.saliency(reference.eval(), x, 1)
    from safetensors.torch import save_file

    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        out = tmp_path / f"out-{name}"
        weights = str(tmp_path / name)
        explain_json(out, capsys, "--weights", weights, "-m", "saliency", "--target", "1")
        exact(np.load(out / "00_circle.npz")["saliency"], expected)


class RunsCode:
    """Unpickling this would call ``os.makedirs(marker)``: code, not tensors."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_explain_refuses_weights_that_hold_pickled_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"features.0.weight": torch.zeros(1), "payload": RunsCode(marker)}, evil)
    code, out, err = run(
        ["explain", MODEL, str(CIRCLE), "--weights", str(evil), "--out", str(tmp_path)], capsys
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "holds pickled Python code" in err and "never unpickles" in err and "makedirs" in err
    assert not marker.exists()
    # A whole pickled model is refused the same way.
    torch.save(zoo.shapes(), tmp_path / "model.pt")
    code, _, err = run(
        ["explain", MODEL, str(CIRCLE), "--weights", str(tmp_path / "model.pt")], capsys
    )
    assert code == 2 and "ShapesNet" in err and "pickled Python code" in err


def test_explain_refusal_in_a_subprocess_has_no_traceback(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"payload": RunsCode(marker)}, evil)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [sys.executable, "-m", "occlens", "explain", MODEL, str(CIRCLE), "--weights", str(evil)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("occlens: error: occlens explain(--weights)")
    assert not marker.exists()


# --- bad arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([MODEL, "missing.png"], "no such file or folder: 'missing.png'"),
        (["missing_model.pt", str(CIRCLE)], "no such file: 'missing_model.pt'"),
        (
            ["no_such_package_xyz.models:net", str(CIRCLE)],
            "cannot import 'no_such_package_xyz.models'",
        ),
        (["occlens.zoo:shapez", str(CIRCLE)], "has no attribute 'shapez' (close matches: 'shapes'"),
        (["occlens.zoo", str(CIRCLE)], "neither a model file nor 'package.module:factory'"),
        ([MODEL, str(CIRCLE), "--target", "7"], "out of range"),
        ([MODEL, str(CIRCLE), "--target", "-1"], "out of range"),
        ([MODEL, str(CIRCLE), "--target", "features.99:0"], "has no layer 'features.99'"),
        ([MODEL, str(CIRCLE), "--target", "features.8:64"], "channel out of range"),
        ([MODEL, str(CIRCLE), "--target", "features.8:0:8:0"], "y out of range"),
        ([MODEL, str(CIRCLE), "--target", "features.8:x"], "cannot read 'features.8:x'"),
        ([MODEL, str(CIRCLE), "-m", "gradcam"], "unknown method 'gradcam'"),
        ([MODEL, str(CIRCLE), "--window", "0"], "--window"),
        ([MODEL, str(CIRCLE), "--window", "65", "-m", "occlusion"], "larger than the image"),
        ([MODEL, str(CIRCLE), "--fill", "purple"], "--fill"),
        ([MODEL, str(CIRCLE), "--resize", "1"], "the model failed on"),
        ([MODEL, str(CIRCLE), "--crop", "80"], "larger than"),
        ([MODEL, str(CIRCLE), "--device", "tpu:9"], "--device"),
        ([MODEL, str(CIRCLE), "--scale", "loud"], "--scale"),
        ([MODEL, str(CIRCLE), "--mean", "0.5", "--normalize", "imagenet"], "pick one"),
        ([MODEL, str(CIRCLE), "--mean", "0.5,0.5"], "2 values for the 3 channels"),
        ([MODEL, str(CIRCLE), "--std", "1,0,1"], "every std must be > 0"),
        ([MODEL], "no image given"),
        ([MODEL, str(CIRCLE), "--baseline", "uniform:0:1"], "a uniform baseline is random"),
        ([MODEL, str(CIRCLE), "--n", "0"], "--n"),
        ([MODEL, str(CIRCLE), "--alpha", "2"], "--alpha"),
        ([MODEL, str(CIRCLE), "--model-kwargs", "[1]"], "--model-kwargs"),
        ([MODEL, str(CIRCLE), "--model-kwargs", '{"depth": 3}'], "unexpected keyword argument"),
        ([MODEL, str(CIRCLE), "--weights", "nope.safetensors"], "no such file: 'nope.safetensors'"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_code_2(argv, message, tmp_path, capsys):
    code, out, err = run(["explain", *argv, "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("occlens: error: "), err
    assert message in err, err


def test_bad_files_as_weights_or_models(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    base = ["explain", MODEL, str(CIRCLE), "--out", str(tmp_path)]
    code, _, err = run([*base, "--weights", str(junk)], capsys)
    assert code == 2 and "cannot read" in err and err.count("\n") == 1
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "small.pt")
    code, _, err = run([*base, "--weights", str(tmp_path / "small.pt")], capsys)
    assert code == 2 and "do not fit ShapesNet" in err and "missing key" in err
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    code, _, err = run([*base, "--weights", str(tmp_path / "list.pt")], capsys)
    assert code == 2 and "not a state dict" in err
    code, _, err = run(["explain", str(junk), str(CIRCLE)], capsys)
    assert code == 2 and "not a TorchScript archive" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["explain", MODEL, str(empty)], capsys)
    assert code == 2 and "holds no image files" in err


# --- model files --------------------------------------------------------------------------------


def test_torchscript_model_files(tmp_path, capsys):
    with warnings.catch_warnings():  # torch.jit.script is deprecated in recent torch
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(zoo.shapes())
        path = tmp_path / "shapes.ts"
        torch.jit.save(scripted, str(path))
    code, out, err = run(
        ["explain", str(path), str(CIRCLE), "-m", "saliency", "--out", str(tmp_path), "--json"],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["model_kind"] == "torchscript"
    x = oi.load(CIRCLE)
    exact(np.load(tmp_path / "00_circle.npz")["saliency"], ol.saliency(scripted, x, 0))
    for extra, message in (
        (["-m", "guided"], "TorchScript model runs its ReLUs outside Python"),
        (["--target", "features.3:0"], "layer targets"),
    ):
        code, _, err = run(
            ["explain", str(path), str(CIRCLE), *extra, "--out", str(tmp_path)], capsys
        )
        assert code == 2 and message in err and err.count("\n") == 1


def test_exported_program_files(tmp_path, capsys):
    model = zoo.shapes()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(model, (torch.rand(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    path = tmp_path / "shapes.pt2"
    torch.export.save(program, path)
    code, out, err = run(
        [
            *("explain", str(path), str(CIRCLE), "-m", "occlusion"),
            *("--window", "16", "--stride", "16", "--out", str(tmp_path), "--json"),
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["model_kind"] == "exported"
    x = oi.load(CIRCLE)
    heat = ol.occlusion(model, x, 0, window=16, stride=16, fill="mean", edge="cover")
    np.testing.assert_allclose(
        np.load(tmp_path / "00_circle.npz")["occlusion"], heat.numpy(), rtol=1e-5, atol=1e-4
    )
    # Guided backprop reroutes the exported graph's aten.relu calls: same map as the eager model.
    guided_out = tmp_path / "guided"
    code, _, err = run(
        [
            *("explain", str(path), str(CIRCLE), "-m", "guided", "--target", "0"),
            *("--out", str(guided_out)),
        ],
        capsys,
    )
    assert code == 0, err
    expected = ol.saliency(ol.guided(model), x, 0)
    assert not torch.allclose(expected, ol.saliency(model, x, 0))
    np.testing.assert_allclose(
        np.load(guided_out / "00_circle.npz")["guided"], expected.numpy(), rtol=1e-5, atol=1e-6
    )
    # torch.export.load itself falls back to full unpickling for some members; occlens does not.
    marker = tmp_path / "ran"
    payload = io.BytesIO()
    torch.save({"inputs": RunsCode(marker)}, payload)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(evil, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data/sample_inputs/model.pt"):
                data = payload.getvalue()
            target.writestr(item, data)
    code, _, err = run(["explain", str(evil), str(CIRCLE), "--out", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "holds pickled Python code" in err
    assert not marker.exists()
    # A program exported for batches of one fails inside the model: exit 1, one line, a hint.
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, 3, 64, 64),)), static)
    argv = ["explain", str(static), str(CIRCLE), "-m", "saliency", "integrated-gradients"]
    code, _, err = run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "integrated-gradients failed on" in err and "dynamic_shapes" in err
    with pytest.raises(AssertionError, match="Guard failed"):
        main([*argv, "--out", str(tmp_path), "--traceback"])


# --- help and text output -----------------------------------------------------------------------


def test_help_reads_like_documentation(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for phrase in (
        "package.module:factory",
        "weights_only=True",
        "examples:",
        "occlens explain occlens.zoo:shapes",
        "integrated-gradients",
        "LAYER:C:Y:X",
        "--normalize",
        "exit with code 2",
    ):
        assert phrase in text, phrase


def test_text_summary(tmp_path, capsys):
    code, out, err = run(
        [
            "explain",
            MODEL,
            str(CROSS),
            "-m",
            "saliency",
            "--out",
            str(tmp_path),
            "--grid",
            "--raw",
            "none",
        ],
        capsys,
    )
    assert code == 0, err
    assert "03_cross.png: class 3 (predicted)" in out
    assert not list(tmp_path.glob("*.npz"))  # --raw none
    assert f"wrote {tmp_path / 'explain.png'}" in out


def test_grayscale_models_and_methods_before_images(tmp_path, capsys):
    gray = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(3)
    )
    with torch.no_grad():
        gray(torch.zeros(1, 1, 64, 64))  # materialise the lazy layer
    sys.modules["_occlens_gray_net"] = type(sys)("_occlens_gray_net")
    sys.modules["_occlens_gray_net"].net = gray
    try:
        argv = ["explain", "_occlens_gray_net:net", "-m", "saliency", str(CIRCLE), "--grayscale"]
        code, out, err = run([*argv, "--out", str(tmp_path), "--json", "--target", "1"], capsys)
    finally:
        del sys.modules["_occlens_gray_net"]
    assert code == 0, err
    assert json.loads(out)["images"][0]["input_shape"] == [1, 64, 64]
    x = oi.load(CIRCLE)
    luma = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    exact(np.load(tmp_path / "00_circle.npz")["saliency"], ol.saliency(gray, luma, 1))
    with Image.open(CIRCLE) as picture:  # the same luma as PIL's, within rounding
        pil = torch.from_numpy(np.asarray(picture.convert("L"), dtype=np.float32) / 255)
    assert (pil - luma[0]).abs().max() <= 1 / 255 + 1e-6


def test_the_json_python_calls_reproduce_the_raw_maps(tmp_path, capsys):
    """Each map's "python" entry, evaluated as written, gives that map bit for bit."""
    summary = explain_json(
        tmp_path,
        capsys,
        *("--target", "2", "-m", "occlusion", "smoothgrad", "integrated-gradients", "guided"),
        *("--window", "12", "--stride", "6", "--n", "4", "--steps", "8", "--key", "3"),
    )
    (entry,) = summary["images"]
    raw = np.load(entry["raw"][0])
    scope = {"ol": ol, "model": zoo.shapes(), "x": oi.load(CIRCLE), "target": 2}
    for name, info in entry["maps"].items():
        assert "=," not in info["python"] and "=)" not in info["python"], info["python"]
        reproduced = eval(info["python"], scope)
        np.testing.assert_array_equal(raw[name], reproduced.numpy(), err_msg=info["python"])

"""Train a VGG16 on the generated shapes task, for the approximate-occlusion benchmark.

    python benchmarks/train_vgg16.py             # writes benchmarks/weights/vgg16_shapes.*
    python benchmarks/train_vgg16.py --steps 600 150 40 --out DIR
    python benchmarks/train_vgg16.py --smoke     # seconds: checks the script runs

No trained VGG16 can be downloaded on the machine occlens is built on, and Krypton's
approximations (projective-field thresholding, adaptive drill-down) are only meaningful on the
smooth, object-centred maps of a trained network: a random-weight VGG16 gives high-frequency maps
that no approximation keeps. This script makes one that this 2-core CPU can afford.

The result is exactly ``occlens.testing.vgg16(num_classes=5)`` (torchvision's VGG16 without batch
norm) with trained weights, loadable with ``load_state_dict`` or
``occlens explain --model occlens.testing:vgg16 --weights FILE``. It is trained as follows:

* The trunk carries batch norm after every convolution while it trains (VGG16 without it
  does not leave chance level in the steps a CPU affords), and the norms are folded into the
  convolutions at the end: ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + c``
  per output channel, exact in eval mode.
* The head is VGG16's (4096, 4096, classes, with dropout), but its first layer reads the
  channel means of the last pool instead of the 512 x 7 x 7 map: the same function as VGG16's
  ``Linear(25088, 4096)`` with each channel's 49 weights equal (``w / 49``), which is how it is
  written out. That makes the trunk resolution-free, so it trains at small sizes first, where a
  step is cheap, and then at the benchmark's 224 px (`--sizes`, `--steps`, `--batches`).
* The trunk learns from hints (FitNets, Romero et al. 2015) as well as labels: a 1 x 1
  convolution maps its third pool's output onto the features of the shipped `zoo.shapes()` net
  (run on the image resized to its 64 px), and their squared error joins the cross-entropy.
  With labels alone, VGG16 sat at chance for the first 800 steps (and a quarter-width copy for
  1500): on this cluttered data a network must find the object before the labels say anything,
  which the hints short-cut. The hint head is dropped afterwards; the teacher's features only
  steer training, and the VGG16's own maps come from its own weights.
* Before folding, the norms' running statistics are re-estimated at the last size on
  `--calibrate` fresh images, since activation statistics change with the image size.

Every random choice comes from `--seed` through explicit generators. Held-out accuracy at every
size is measured on images from keys no training step uses, and written to the JSON beside the
weights with the training time and settings. The weights file is about 540 MB, so it is not
committed: ``benchmarks/weights/`` is ignored by git.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import occlens as ol
from occlens.zoo import CLASSES, shapes_dataset
from occlens.zoo.train import accuracy, save_trained

HERE = Path(__file__).parent
DEFAULT_OUT = HERE / "weights"
WEIGHTS, METADATA = "vgg16_shapes.safetensors", "vgg16_shapes.json"
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
HELDOUT_KEY = 2_000_000  # training keys are seed * 10_000 + step, far below
HINT_AT = 24  # features[:24] ends with the third pool (stride 8, 256 channels)
HINT_CHANNELS = 64  # the teacher's last convolution (stride 8)
TEACHER_SIZE = 64


class TrainingVGG16(nn.Module):
    """VGG16 with batch norm after each convolution and a channel-mean head (see the module
    docstring); `to_vgg16` turns it into the plain architecture."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.BatchNorm2d(int(v))]
                layers.append(nn.ReLU(inplace=True))
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 4096),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(4096, classes),
        )

        self.hint = nn.Conv2d(256, HINT_CHANNELS, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))

    def with_hint(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the hint head's reading of the third pool's output."""
        middle = self.features[:HINT_AT](x)
        logits = self.classifier(self.features[HINT_AT:](middle).mean(dim=(2, 3)))
        return logits, self.hint(middle)


def init_weights(model: nn.Module, rng: torch.Generator) -> None:
    """torchvision's VGG init (Kaiming-normal fan_out convs, N(0, 0.01) linears, zero biases)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_out", nonlinearity="relu", generator=rng
                )
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01, generator=rng)
                nn.init.zeros_(module.bias)


def to_vgg16(model: TrainingVGG16) -> nn.Module:
    """The plain VGG16 computing what `model` computes in eval mode at 224 px (7 x 7 last pool)."""
    vgg = ol.testing.vgg16(num_classes=model.classifier[-1].out_features)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    targets = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for conv, norm, target in zip(convs, norms, targets, strict=True):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            target.weight.copy_(conv.weight * scale[:, None, None, None])
            target.bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)
        first = model.classifier[0]
        spread = first.weight[:, :, None].expand(-1, -1, 49) / 49  # flatten is channel-major
        vgg.classifier[0].weight.copy_(spread.reshape(first.out_features, -1))
        vgg.classifier[0].bias.copy_(first.bias)
        for index in (3, 6):
            vgg.classifier[index].load_state_dict(model.classifier[index].state_dict())
    return vgg.eval()


def augment(x: Tensor, rng: torch.Generator) -> Tensor:
    """One random element of the dihedral group of the square per batch (keeps every class)."""
    quarter, flip = (int(v) for v in torch.randint(4, (2,), generator=rng))
    x = torch.rot90(x, quarter, dims=(2, 3))
    return x.flip(3) if flip % 2 else x


def teacher_features(teacher: nn.Module, x: Tensor, size: int) -> Tensor:
    """The teacher's last feature map for `x` resized to its 64 px, resized to `size` / 8."""
    small = F.interpolate(x, size=TEACHER_SIZE, mode="area") if x.shape[-1] != TEACHER_SIZE else x
    with torch.no_grad():
        features = teacher.features(2 * small - 1)  # ShapesNet's own input scaling
    side = size // 8
    if features.shape[-1] != side:
        features = F.interpolate(features, size=side, mode="bilinear", align_corners=False)
    return features


def train_stage(
    model: TrainingVGG16,
    teacher: nn.Module,
    size: int,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    stage: int,
    log_every: int,
) -> float:
    """`steps` AdamW steps on fresh images of side `size`, one-cycle learning rate; seconds."""
    rng = torch.Generator().manual_seed(seed * 10_000 + 1000 * stage)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    pool = max(batch * 8, 256)  # images generated at a time, each used about 8 times
    model.train()
    start, recent = time.perf_counter(), []
    data = shapes_dataset(pool, key=seed * 10_000 + 1000 * stage, size=size)
    for step in range(steps):
        if step and step % (pool // batch) == 0:
            key = seed * 10_000 + 1000 * stage + step // (pool // batch)
            data = shapes_dataset(pool, key=key, size=size)
        index = torch.randint(pool, (batch,), generator=rng)
        x = augment(data.images[index], rng)
        logits, hint = model.with_hint(x)
        loss = F.cross_entropy(logits, data.labels[index])
        hint_loss = F.mse_loss(hint, teacher_features(teacher, x, size))
        optimiser.zero_grad(set_to_none=True)
        (loss + hint_loss).backward()
        optimiser.step()
        schedule.step()
        recent.append(
            (
                float(loss.detach()),
                float(hint_loss.detach()),
                float((logits.detach().argmax(1) == data.labels[index]).float().mean()),
            )
        )
        if (step + 1) % log_every == 0 or step + 1 == steps:
            ce, hl, acc = (sum(v) / len(recent) for v in zip(*recent, strict=True))
            print(
                f"  {size} px step {step + 1}/{steps}: loss {ce:.3f}, hint {hl:.3f}, "
                f"batch accuracy {acc:.3f} "
                f"({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            recent = []
    return time.perf_counter() - start


def calibrate_norms(model: TrainingVGG16, size: int, images: int, seed: int) -> None:
    """Re-estimate every batch norm's running mean and variance at `size` (cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    data = shapes_dataset(images, key=HELDOUT_KEY - 1 - seed, size=size)
    model.train()
    with torch.no_grad():
        for i in range(0, images, 16):
            model.features(data.images[i : i + 16])
    model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 112, 224])
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 150, 40])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 16, 8])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    parser.add_argument("--calibrate", type=int, default=128, help="images for the norms")
    parser.add_argument("--heldout", type=int, default=200, help="held-out images per size")
    parser.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--smoke", action="store_true", help="a few steps at 32 px")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.steps, args.batches, args.lrs = [32], [2], [4], [1e-3]
        args.calibrate, args.heldout = 8, 8
        args.out = args.out or Path(tempfile.mkdtemp(prefix="occlens-train-vgg16-"))
    args.out = args.out or DEFAULT_OUT
    stages = list(zip(args.sizes, args.steps, args.batches, args.lrs, strict=True))

    model = TrainingVGG16(len(CLASSES))
    init_weights(model, torch.Generator().manual_seed(args.seed))
    teacher = ol.zoo.shapes()
    spent = 0.0
    for stage, (size, steps, batch, lr) in enumerate(stages):
        spent += train_stage(model, teacher, size, steps, batch, lr, args.seed, stage, 10)
    last = args.sizes[-1]
    calibrate_norms(model, last, args.calibrate, args.seed)
    vgg = to_vgg16(model)

    held = {size: shapes_dataset(args.heldout, key=HELDOUT_KEY, size=size) for size in args.sizes}
    scores = {
        str(size): round(accuracy(vgg, d.images, d.labels, batch=16), 4) for size, d in held.items()
    }
    check = shapes_dataset(2, key=HELDOUT_KEY, size=224).images  # a 7 x 7 last pool: exact
    with torch.no_grad():
        trained = model(check)
        gap = float((vgg(check) - trained).abs().max() / trained.abs().max())
    print(f"held-out accuracy by size: {scores}; folded vs trained at 224: {gap:.1e} relative")
    if not gap < 1e-4:
        raise SystemExit(f"the folded VGG16 differs from the trained network by {gap:.1e}")

    meta = {
        "architecture": "occlens.testing.vgg16(num_classes=5)",
        "classes": list(CLASSES),
        "stages": [{"size": s, "steps": n, "batch": b, "lr": lr} for s, n, b, lr in stages],
        "calibration_images": args.calibrate,
        "seed": args.seed,
        "train_seconds": round(spent, 1),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "heldout_key": HELDOUT_KEY,
        "heldout_images": args.heldout,
        "heldout_accuracy": scores,
        "folded_relative_difference_224": gap,
    }
    save_trained(vgg, args.out, WEIGHTS, METADATA, arch="vgg16", meta=meta)
    print(f"wrote {args.out / WEIGHTS} after {spent:.0f} s of training", file=sys.stderr)


if __name__ == "__main__":
    main()

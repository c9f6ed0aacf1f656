"""Occlusion throughput: occlens vs Captum vs the raw batched-forward limit, ratios from one run.

    python benchmarks/occlusion.py                 # the Krypton setting, reduced grids (below)
    python benchmarks/occlusion.py --models vgg16 --positions 6 --rounds 3
    python benchmarks/occlusion.py --units         # AlexNet unit targets at conv3 and conv5
    python benchmarks/occlusion.py --approximate   # Krypton's approximations on VGG16 (SSIM)
    python benchmarks/occlusion.py --trained       # the same on trained vs random weights
    python benchmarks/occlusion.py --auto          # engine="auto" against both exact engines
    python benchmarks/occlusion.py --smoke         # seconds: a tiny model, to check the script runs

The default setting is Krypton's (SIGMOD 2019): 224 x 224 images, window 16, stride 4, i.e.
53 x 53 = 2809 positions. Re-running VGG16 2809 times takes most of an hour on a 2-core CPU, so
the re-running methods (the limit, the batched engine, Captum) run on a reduced grid: the
`--positions` x `--positions` occluders in the middle of the image (a box), and their seconds
per position are extrapolated to the whole grid; their cost does not depend on the place. The
incremental engine and auto run on the whole grid: their cost per position does (patches are
clipped at the borders, their sizes depend on the occluder's phase against the strides, of which
a small box holds only some, and occluders spread over the whole image read the clean
activations from everywhere; before patches were fitted to chunks, VGG16 took about 1.5x per
position on the whole grid what it took on a central 6 x 6 box).

Methods run interleaved in rounds, and each keeps its fastest round, so slow spells of a shared
machine hit them all alike:

* limit: as many clean images as positions through the model at its fastest batch size
  (batched, no autograd, nothing else): what no re-inference engine can beat.
* occlens batched / incremental / auto: ``occlusion(..., engine=...)``.
* Captum ``Occlusion`` with several ``perturbations_per_eval``. Captum cannot restrict occluders
  to a box, so it runs on the whole image with a stride that gives about as many positions, and
  its seconds per position are compared.

FLOPs per occluder come from `occlens._incremental.explain_engine`: a full re-inference against
what the incremental engine computes (patch layers plus the dense tail).
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import occlens as ol
from occlens import targets as T
from occlens._incremental import explain_engine

BATCHES = (1, 2, 4, 8, 16, 32, 64)
SIDES = {"vgg16": 6, "resnet18": 8, "alexnet": 8, "units": 8, "approximate": 4}
FULL = 224
WINDOW, STRIDE = 16, 4
APPROXIMATE_KEY = 4_000_000  # images no training run of the shapes task uses


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_batch(model, image: torch.Tensor, images: int) -> int:
    """The batch size in `BATCHES` with the fastest forward pass per image."""
    per_image = {}
    with torch.no_grad():
        for size in BATCHES:
            if size > max(images, 1):
                break
            batch = image.expand(size, *image.shape).contiguous()
            model(batch)
            calls = max(1, min(images, 32) // size)
            per_image[size] = seconds(lambda b=batch, c=calls: [model(b) for _ in range(c)])
            per_image[size] /= calls * size
    return min(per_image, key=per_image.get)


def batched_forward(model, image: torch.Tensor, images: int, size: int) -> float:
    """Seconds to push `images` copies of `image` through the model, `size` at a time."""
    batch = image.expand(size, *image.shape).contiguous()
    calls = math.ceil(images / size)
    with torch.no_grad():
        spent = seconds(lambda: [model(batch) for _ in range(calls)])
    return spent * images / (calls * size)


def captum_occlusion(model, image, target, window, stride, per_eval):
    from captum.attr import Occlusion

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Occlusion(model).attribute(
            image[None],
            sliding_window_shapes=(image.shape[0], window, window),
            strides=(1, stride, stride),
            target=target,
            baselines=0.0,
            perturbations_per_eval=per_eval,
        )


def captum_positions(size: int, window: int, stride: int) -> int:
    return (math.ceil((size - window) / stride) + 1) ** 2


def captum_stride(size: int, window: int, positions: int) -> int:
    """A stride for which Captum places about `positions` occluders on the whole image.

    Captum refuses strides longer than the window, so it places at least
    ``(ceil((size - window) / window) + 1) ** 2`` occluders (196 at 224 px, window 16).
    """
    return min(
        range(1, window + 1), key=lambda s: abs(captum_positions(size, window, s) - positions)
    )


def full_grid() -> int:
    """Positions on the whole image: 53 x 53 = 2809 in the Krypton setting."""
    return ((FULL - WINDOW) // STRIDE + 1) ** 2


def central_box(size: int, window: int, stride: int, side: int) -> tuple[int, int, int, int]:
    """A box holding `side` x `side` occluder positions on the full grid, centred."""
    span = window + (side - 1) * stride
    first = ((size - span) // 2) // stride * stride
    return (first, first, first + span, first + span)


@dataclass
class Timing:
    """Seconds for `positions` occluders and, for occlens, for one occluder (the fixed costs)."""

    positions: int
    seconds: float
    one: float | None = None

    @property
    def marginal(self) -> float:
        """Seconds per extra occluder."""
        if self.one is None or self.positions < 2:
            return self.seconds / self.positions
        return max(self.seconds - self.one, 0.0) / (self.positions - 1)

    def full(self, positions: int) -> float:
        """Seconds for `positions` occluders: fixed costs once, then the marginal cost."""
        if self.one is None:
            return self.marginal * positions
        return self.one + self.marginal * (positions - 1)


def report(title: str, best: dict[str, Timing], notes: dict, full: int | None = None) -> None:
    """One table; ratios compare extrapolations to `full` positions (default: the whole grid)."""
    full = full or full_grid()
    total = {k: t.full(full) for k, t in best.items()}
    limit = total.get("limit: batched forward")
    batched = total.get("occlens batched")
    captum = [v for k, v in total.items() if k.startswith("captum")]
    captum_best = min(captum) if captum else None
    print(f"\n{title}")
    print(
        f"{'method':34s} {'positions':>9s} {'seconds':>8s} {'1 pos s':>8s} {'ms/pos':>8s} "
        f"{'grid s':>8s} {'x limit':>8s} {'x batched':>9s} {'x captum':>9s}  note"
    )
    for label, t in best.items():
        one = f"{t.one:8.2f}" if t.one is not None else f"{'':8s}"
        cells = [
            f"{label:34s} {t.positions:9d} {t.seconds:8.2f} {one} {1000 * t.marginal:8.2f}",
            f"{total[label]:8.1f}",
            f"{total[label] / limit:8.2f}" if limit else f"{'':8s}",
            f"{batched / total[label]:9.2f}" if batched else f"{'':9s}",
            f"{captum_best / total[label]:9.2f}" if captum_best else f"{'':9s}",
        ]
        print(" ".join(cells) + f"  {notes.get(label, '')}")


def interleave(methods: dict[str, Callable[[], Timing]], rounds: int) -> dict[str, Timing]:
    """Run every method once per round, methods interleaved; keep each one's fastest round."""
    times: dict[str, list[Timing]] = {label: [] for label in methods}
    for _ in range(rounds):
        for label, run in methods.items():
            times[label].append(run())
    return {label: min(values, key=lambda t: t.seconds) for label, values in times.items()}


def occlens_timing(run: Callable[..., object], box, one_box) -> Callable[[], Timing]:
    """Time `run(box=...)` on the reduced grid and on one occluder (the fixed costs)."""

    def timing() -> Timing:
        one = seconds(lambda: run(box=one_box))
        out = {}
        spent = seconds(lambda: out.setdefault("map", run(box=box)))
        return Timing(int(out["map"].numel()), spent, one)

    return timing


def captum_timing(model, image, target, stride, per_eval) -> Callable[[], Timing]:
    count = captum_positions(FULL, WINDOW, stride)
    return lambda: Timing(
        count, seconds(lambda: captum_occlusion(model, image, target, WINDOW, stride, per_eval))
    )


def bench_model(name, model, side, captum_batches, rounds) -> dict[str, Timing]:
    image = torch.rand(3, FULL, FULL, generator=torch.Generator().manual_seed(0))
    target = 1
    box = central_box(FULL, WINDOW, STRIDE, side)
    one_box = central_box(FULL, WINDOW, STRIDE, 1)
    options = {"window": WINDOW, "stride": STRIDE, "aggregate": "grid"}
    count = side * side
    maps: dict[str, torch.Tensor] = {}
    batch = best_batch(model, image, count)
    stride = captum_stride(FULL, WINDOW, count)

    def batched(box) -> torch.Tensor:
        maps["batched"] = ol.occlusion(model, image, target, engine="batched", box=box, **options)
        return maps["batched"]

    def whole(kind: str) -> Callable[[], Timing]:
        def run() -> Timing:
            spent = seconds(
                lambda: maps.__setitem__(
                    kind, ol.occlusion(model, image, target, engine=kind, **options)
                )
            )
            return Timing(full_grid(), spent)

        return run

    methods = {
        "limit: batched forward": lambda: Timing(
            count, batched_forward(model, image, count, batch)
        ),
        "occlens batched": occlens_timing(batched, box, one_box),
        "occlens incremental (whole grid)": whole("incremental"),
        "occlens auto (whole grid)": whole("auto"),
    }
    for p in captum_batches:
        methods[f"captum Occlusion ppe={p}"] = captum_timing(model, image, target, stride, p)
    ol.occlusion(model, image, target, engine="incremental", box=box, **options)  # warm-up
    best = interleave(methods, rounds)
    plan = explain_engine(model, image, target, **options)
    first = box[0] // STRIDE
    inside = maps["incremental"][first : first + side, first : first + side]
    diff = float((inside - maps["batched"]).abs().max() / maps["batched"].abs().max())
    notes = {
        "limit: batched forward": f"batch {batch}, the fastest of {BATCHES}",
        "occlens batched": f"a central {side}x{side} box and one occluder, extrapolated",
        "occlens incremental (whole grid)": f"max diff to batched {diff:.1e} of the largest "
        "delta in the box (float32)",
        "occlens auto (whole grid)": f"picks {plan.engine}",
    }
    for k in methods:
        if k.startswith("captum"):
            notes[k] = f"whole image, stride {stride} (Captum allows none > window)"
    title = (
        f"{name} at {FULL}x{FULL}, window {WINDOW}, stride {STRIDE}: the re-running methods on a "
        f"central {side}x{side} of the {full_grid()} positions (box {box}), extrapolated; the "
        f"'whole grid' rows on all of them. Best of {rounds} interleaved rounds. FLOPs per "
        f"occluder: {plan.flops_full / 1e9:.2f} G full re-inference, "
        f"{plan.flops_incremental / 1e9:.2f} G incremental "
        f"({plan.flops_full / plan.flops_incremental:.2f}x fewer)"
    )
    report(title, best, notes)
    return best


def bench_units(captum_batches, rounds, side: int) -> None:
    """AlexNet unit targets at conv3 and conv5: cropping to the receptive field."""
    model = ol.testing.alexnet()
    image = torch.rand(3, FULL, FULL, generator=torch.Generator().manual_seed(0))
    for label, layer in (("conv3", "features.6"), ("conv5", "features.10")):
        bench_unit(model, image, label, layer, captum_batches, rounds, side)


def bench_unit(model, image, label, layer, captum_batches, rounds, side) -> None:
    head = ol.layer(model, layer)
    with torch.no_grad():
        n = head(image[None]).shape[-1]
    centre = (0, n // 2, n // 2)
    unit = T.unit(*centre)
    options = {"window": WINDOW, "stride": STRIDE, "aggregate": "grid"}
    rf = ol.receptive_field(model, layer, FULL).region(n // 2, n // 2)
    stride = captum_stride(FULL, WINDOW, side * side)
    box = central_box(FULL, WINDOW, STRIDE, side)
    one_box = central_box(FULL, WINDOW, STRIDE, 1)

    def ours(kind: str) -> Callable[[], Timing]:
        def run(box) -> torch.Tensor:
            return ol.occlusion(head, image, unit, engine=kind, box=box, **options)

        return occlens_timing(run, box, one_box)

    def whole(kind: str) -> Callable[[], Timing]:
        return lambda: Timing(
            full_grid(), seconds(lambda: ol.occlusion(head, image, unit, engine=kind, **options))
        )

    methods = {
        "limit: batched forward": lambda: Timing(
            side * side, batched_forward(head, image, side * side, 16)
        ),
        "occlens batched": ours("batched"),
        "occlens incremental (whole grid)": whole("incremental"),
        "occlens auto (whole grid)": whole("auto"),
    }
    for p in captum_batches:
        methods[f"captum Occlusion ppe={p}"] = captum_timing(head, image, centre, stride, p)
    whole("incremental")()
    best = interleave(methods, rounds)
    plan = explain_engine(head, image, unit, **options)
    notes = {
        k: f"whole image, stride {stride} (Captum allows none > window)"
        for k in methods
        if k.startswith("captum")
    }
    notes["occlens incremental (whole grid)"] = (
        f"{plan.live} of {full_grid()} occluders meet the field {rf}; the rest give 0 unrun"
    )
    notes["occlens batched"] = "a central box (the batched cost does not depend on the place)"
    notes["limit: batched forward"] = "up to the layer, batch 16"
    notes["occlens auto (whole grid)"] = f"picks {plan.engine}"
    title = (
        f"AlexNet {label} ({layer}) unit {centre} at {FULL}x{FULL}, window {WINDOW}, stride "
        f"{STRIDE}, best of {rounds} rounds. FLOPs per live occluder: {plan.flops_full / 1e9:.3f}"
        f" G up to {label}, {plan.flops_incremental / 1e9:.4f} G cropped and incremental. The "
        f"'whole grid' rows ran on all {full_grid()} positions; 'grid s' extrapolates the others."
    )
    report(title, best, notes)


VGG16_WEIGHTS = Path(__file__).parent / "weights" / "vgg16_shapes.safetensors"
APPROXIMATE_SETTINGS = (
    # (tau, drill): Krypton's projective-field threshold and adaptive drill-down
    (0.5, None),
    (0.4, None),
    (1.0, (2, 0.05)),
    (1.0, (4, 0.1)),
    (0.5, (2, 0.05)),
    (0.5, (4, 0.1)),
    (0.4, (4, 0.1)),
    (0.5, (6, 0.1)),
)


def vgg16_for_approximations(weights: Path | None) -> tuple[torch.nn.Module, str]:
    """The trained VGG16 of `benchmarks/train_vgg16.py` where its weights exist, else random ones.

    The weights load through `occlens explain`'s own loader (safetensors, no pickled code).
    """
    from occlens._model_loading import load_weights

    path = weights or VGG16_WEIGHTS
    model = ol.testing.vgg16(num_classes=len(ol.zoo.CLASSES))
    if path.exists():
        model.load_state_dict(load_weights(path))
        return model.eval(), f"VGG16 trained on the shapes task ({path.name})"
    print(
        f"\n{path} not found: run `python benchmarks/train_vgg16.py` (about 40 minutes on 2 "
        f"cores) for the trained VGG16; this run uses random weights, whose high-frequency maps "
        f"no approximation keeps"
    )
    return model, "VGG16 with random weights"


def bench_approximate(model_and_label, images: int, settings, side: int) -> None:
    """Krypton's approximations on VGG16 over the whole 53 x 53 grid of generated 224 px shape
    images, true class as target: seconds, and SSIM against the exact map of each image.

    SSIM is given twice: on the per-position maps (``aggregate="grid"``, Krypton's heat map,
    which keeps the fine structure) and on the ``[H, W]`` heat maps that `occlusion` returns by
    default (``aggregate="mean"``, what `approximation_ssim` compares unless told otherwise). The
    exact map comes from the incremental engine (equal to the batched one to float rounding).
    The batched engine's time on the whole grid is extrapolated from a central `side` x `side`
    box and one occluder, as in the other tables; its cost does not depend on the image. Each
    setting's speedup is its total time over the images against the batched and the exact
    incremental engine's totals. One round: each map runs once per image.
    """
    from occlens._grid import aggregate
    from occlens._incremental_approx import occlusion_approximate, ssim
    from occlens._occlusion import _grid

    model, label = model_and_label
    data = ol.zoo.shapes_dataset(images, key=APPROXIMATE_KEY, size=FULL)
    with torch.no_grad():
        predicted = model(data.images).argmax(1)
    options = {"window": WINDOW, "stride": STRIDE, "aggregate": "grid"}
    grid = _grid(data.images[:1], WINDOW, STRIDE, "fit", "mean", None)

    def pixels(table: torch.Tensor) -> torch.Tensor:
        return aggregate(table.flatten(), grid, "mean")

    first, first_target = data.images[0], int(data.labels[0])
    box, one_box = central_box(FULL, WINDOW, STRIDE, side), central_box(FULL, WINDOW, STRIDE, 1)

    def batched(box) -> torch.Tensor:
        return ol.occlusion(model, first, first_target, engine="batched", box=box, **options)

    occlusion_approximate(model, first, first_target, tau=0.5, drill=(4, 0.1), **options)
    batched_one = occlens_timing(batched, box, one_box)()
    exact, exact_seconds = [], 0.0
    for image, target in zip(data.images, data.labels.tolist(), strict=True):
        start = time.perf_counter()
        exact.append(ol.occlusion(model, image, target, engine="incremental", **options))
        exact_seconds += time.perf_counter() - start
    batched_seconds = images * batched_one.full(full_grid())
    right = int((predicted == data.labels).sum())
    print(
        f"\n{label}: approximate modes on the whole {full_grid()}-position grid at "
        f"{FULL}x{FULL}, window {WINDOW}, stride {STRIDE}: {images} generated shape images "
        f"(key {APPROXIMATE_KEY}; the model classifies {right} of them right), true class as "
        f"target. The batched engine's {batched_seconds / images:.1f} s per image is "
        f"extrapolated from a central {side}x{side} box; the exact incremental engine took "
        f"{exact_seconds / images:.1f} s per image ({batched_seconds / exact_seconds:.2f}x "
        f"batched). SSIM against the exact maps, per-position grid and [H, W] heat map."
    )
    print(
        f"{'tau':>4s} {'drill':>10s} {'s/image':>8s} {'x batched':>9s} {'x increm.':>9s} "
        f"{'grid SSIM min':>13s} {'mean':>6s} {'map SSIM min':>12s} {'mean':>6s}"
    )
    best: dict[str, tuple] = {}  # the fastest setting with every SSIM >= 0.9, per kind
    for tau, drill in settings:
        grids, maps, spent = [], [], 0.0
        for image, target, reference in zip(data.images, data.labels.tolist(), exact, strict=True):
            start = time.perf_counter()
            approx = occlusion_approximate(model, image, target, tau=tau, drill=drill, **options)
            spent += time.perf_counter() - start
            grids.append(ssim(approx, reference))
            maps.append(ssim(pixels(approx), pixels(reference)))
        speedup = batched_seconds / spent
        print(
            f"{tau:4.1f} {drill!s:>10s} {spent / images:8.2f} {speedup:9.2f} "
            f"{exact_seconds / spent:9.2f} {min(grids):13.3f} {sum(grids) / len(grids):6.3f} "
            f"{min(maps):12.3f} {sum(maps) / len(maps):6.3f}",
            flush=True,
        )
        for kind, scores in (("grid", grids), ("map", maps)):
            if min(scores) >= 0.9 and speedup > best.get(kind, (0.0,))[0]:
                best[kind] = (speedup, tau, drill)
    for kind in ("grid", "map"):
        if kind in best:
            speedup, tau, drill = best[kind]
            print(
                f"fastest with every {kind} SSIM >= 0.9: tau={tau}, drill={drill}, "
                f"{speedup:.1f}x batched"
            )
        else:
            print(f"no setting keeps every {kind} SSIM >= 0.9")


def random_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of `model` with Kaiming-normal weights and small biases: the same architecture,
    untrained."""
    copy = type(model)().eval()
    copy.load_state_dict(model.state_dict())
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in copy.parameters():
            if tensor.ndim > 1:
                torch.nn.init.kaiming_normal_(tensor, generator=rng)
            else:
                tensor.normal_(0.0, 0.01, generator=rng)
    return copy


def bench_trained(images: int, taus, drill) -> None:
    """Krypton's approximations on the shipped (trained) shapes model and on the same architecture
    with random weights: how much the trained weights' smoother maps let them keep.

    No trained VGG16 can be downloaded here; this table measures the effect of training on the
    one trained network that ships. SSIM per image against the exact map; seconds against the
    exact incremental engine on the same grid.
    """
    from occlens._incremental_approx import occlusion_approximate, ssim

    data = ol.zoo.shapes_dataset(images, key=5)
    options = {"window": 8, "stride": 2, "aggregate": "grid"}
    settings = [(1.0, drill)] + [(tau, d) for tau in taus for d in (None, drill)]
    print(
        f"\nshapes model (64 px), window 8, stride 2 ({(64 - 8) // 2 + 1}^2 positions), "
        f"{images} generated images, true class as target"
    )
    header = f"{'weights':8s} {'tau':>4s} {'drill':>10s} {'SSIM mean':>9s} {'min':>5s}"
    print(f"{header} {'x exact':>8s}")
    trained = ol.zoo.shapes()
    for label, model in (("trained", trained), ("random", random_weights(trained, 0))):
        first, first_target = data.images[0], int(data.labels[0])
        ol.occlusion(model, first, first_target, engine="incremental", **options)  # warm-up
        occlusion_approximate(model, first, first_target, tau=0.5, drill=drill, **options)
        exact, spent = [], 0.0
        for image, target in zip(data.images, data.labels.tolist(), strict=True):
            start = time.perf_counter()
            exact.append(ol.occlusion(model, image, target, engine="incremental", **options))
            spent += time.perf_counter() - start
        for tau, d in settings:
            scores, took = [], 0.0
            for image, target, reference in zip(
                data.images, data.labels.tolist(), exact, strict=True
            ):
                start = time.perf_counter()
                approx = occlusion_approximate(model, image, target, tau=tau, drill=d, **options)
                took += time.perf_counter() - start
                scores.append(ssim(approx, reference))
            print(
                f"{label:8s} {tau:4.1f} {d!s:>10s} {sum(scores) / len(scores):9.3f} "
                f"{min(scores):5.2f} {spent / took:8.2f}",
                flush=True,
            )


AUTO_CASES = (
    # (label, model, image side, images, window, stride): short runs near auto's planning gate,
    # where a wrong choice costs most, and longer ones where the incremental engine should win.
    ("shapes 64 w32 s32", "shapes", 64, 1, 32, 32),
    ("shapes 64 w16 s8", "shapes", 64, 1, 16, 8),
    ("shapes 64 w8 s4", "shapes", 64, 1, 8, 4),
    ("shapes 64 w4 s2", "shapes", 64, 1, 4, 2),
    ("shapes 64 x4 w8 s4", "shapes", 64, 4, 8, 4),
    ("tiny_cnn 32 w4 s2", "tiny_cnn", 32, 1, 4, 2),
    ("alexnet 64 w8 s4", "alexnet", 64, 1, 8, 4),
    ("resnet18 64 w8 s4", "resnet18", 64, 1, 8, 4),
    ("resnet18 112 w16 s8", "resnet18", 112, 1, 16, 8),
    ("alexnet 224 w32 s32", "alexnet", 224, 1, 32, 32),
    ("vgg16 112 w16 s8", "vgg16", 112, 1, 16, 8),
)


def bench_auto(rounds: int, cases=AUTO_CASES) -> None:
    """``engine="auto"`` against the batched and the incremental engine on each case: what it
    chose (`explain_engine`), and its time over the batched engine's and over the faster one's.
    The acceptance bound is auto / batched <= 1.05. Short runs get more rounds (as many as take
    about 2 s per engine, up to 480), so that with a per-round noise of 10-20% on this CPU
    a median is good to about 1% (480 rounds) to 3% (50).

    Two statistics: the ratios of each engine's fastest round, and the median over rounds of
    the ratios within a round (the three engines run back to back, so a slow spell of the
    machine hits them alike); ``med. a/f`` compares auto with the engine that is faster by
    its median ratio, round by round. Where the two exact engines' median ratio
    ``increm./batched`` is within 0.9-1.1, the case is a tie on this machine: either engine is
    the fastest.
    """
    from occlens import zoo

    print(
        f"\nengine='auto' vs both exact engines, {rounds} or more interleaved rounds: fastest "
        f"round of each, and the median of within-round ratios (med.)\n"
        f"{'case':22s} {'auto chose':11s} {'batched s':>9s} {'increm. s':>9s} {'auto s':>8s} "
        f"{'auto/batched':>12s} {'auto/fastest':>12s} {'med. a/b':>8s} {'med. a/f':>8s} "
        f"{'med. i/b':>8s}  reason"
    )
    worst = worst_median = 0.0
    for label, name, side, count, window, stride in cases:
        model = zoo.shapes() if name == "shapes" else getattr(ol.testing, name)()
        x = torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(0))
        options = {"window": window, "stride": stride}
        plan = explain_engine(model, x, 0, **options)
        runs = {
            engine: (lambda e=engine, m=model, x=x, o=options: ol.occlusion(m, x, 0, engine=e, **o))
            for engine in ("batched", "incremental", "auto")
        }
        warm = max(seconds(run) for run in runs.values())  # warm-up
        times: dict[str, list[float]] = {engine: [] for engine in runs}
        orders = list(itertools.permutations(runs))  # each engine follows each other as often
        count = max(rounds, min(480, math.ceil(2.0 / warm)))  # short runs: more rounds
        for round_ in range(-(-count // len(orders)) * len(orders)):  # whole cycles of orders
            for engine in orders[round_ % len(orders)]:
                times[engine].append(seconds(runs[engine]))
        best = {engine: min(values) for engine, values in times.items()}
        fastest = min(best["batched"], best["incremental"])
        rounds_ = list(zip(times["batched"], times["incremental"], times["auto"], strict=True))
        over_batched = statistics.median(a / b for b, _, a in rounds_)
        over_incremental = statistics.median(a / i for _, i, a in rounds_)
        tie = statistics.median(i / b for b, i, _ in rounds_)
        over_fastest = over_incremental if tie < 1 else over_batched  # vs the faster one
        worst = max(worst, best["auto"] / best["batched"])
        worst_median = max(worst_median, over_batched)
        print(
            f"{label:22s} {plan.engine:11s} {best['batched']:9.4f} {best['incremental']:9.4f} "
            f"{best['auto']:8.4f} {best['auto'] / best['batched']:12.2f} "
            f"{best['auto'] / fastest:12.2f} {over_batched:8.2f} {over_fastest:8.2f} "
            f"{tie:8.2f}  {plan.reason}",
            flush=True,
        )
    print(f"worst auto / batched: {worst:.2f} (fastest rounds), {worst_median:.2f} (median)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet18", "alexnet"])
    parser.add_argument(
        "--positions", type=int, help="side of the central grid (default: see SIDES)"
    )
    parser.add_argument(
        "--captum", type=int, nargs="+", default=[16], help="perturbations_per_eval values"
    )
    parser.add_argument("--rounds", type=int, default=2, help="(--approximate: 1)")
    parser.add_argument("--units", action="store_true", help="AlexNet conv3/conv5 unit targets")
    parser.add_argument(
        "--approximate", action="store_true", help="trained VGG16: tau / drill-down vs SSIM"
    )
    parser.add_argument("--weights", type=Path, help=f"VGG16 weights (default {VGG16_WEIGHTS})")
    parser.add_argument("--images", type=int, default=4, help="--approximate: shape images")
    parser.add_argument("--trained", action="store_true", help="trained vs random shapes model")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--auto", action="store_true", help="engine='auto' vs both engines")
    parser.add_argument("--smoke", action="store_true", help="tiny model: checks the script runs")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; 'x captum' is per position against "
        f"Captum's best; 'x batched' is the speedup over occlens's batched engine"
    )
    if args.smoke:
        global FULL, WINDOW, STRIDE
        FULL, WINDOW, STRIDE = 32, 8, 4
        bench_model("tiny_cnn", ol.testing.tiny_cnn(), 2, [16], 1)
        bench_unit(ol.testing.tiny_cnn(), torch.rand(3, 32, 32), "conv2", "features.3", [16], 1, 2)
        tiny = ol.testing.tiny_cnn(num_classes=len(ol.zoo.CLASSES))
        bench_approximate((tiny, "tiny_cnn with random weights"), 2, APPROXIMATE_SETTINGS[:3], 2)
        return
    if args.units:
        bench_units(args.captum, args.rounds, args.positions or SIDES["units"])
        return
    if args.trained:
        bench_trained(8, args.taus, (2, 0.25))
        return
    if args.auto:
        bench_auto(6 if args.rounds == 2 else args.rounds)  # 6: every order of the engines
        return
    if args.approximate:
        side = args.positions or SIDES["approximate"]
        model = vgg16_for_approximations(args.weights)
        bench_approximate(model, args.images, APPROXIMATE_SETTINGS, side)
        return
    for name in args.models:
        model = getattr(ol.testing, name)()
        bench_model(name, model, args.positions or SIDES[name], args.captum, args.rounds)


if __name__ == "__main__":
    main()

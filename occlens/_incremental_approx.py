"""Approximate incremental occlusion (Krypton's two approximations) and its SSIM report.

*Projective-field thresholding* (`tau`): at every conv or pool, an occluder's changed patch is cut
to its central ``round(tau * n)`` units along each axis of an ``n``-unit map; changes outside it
are dropped, so deep layers, where a patch grows to cover the whole map, cost a fraction of a
full layer. ``tau=1`` is exact. *Adaptive drill-down* (`drill`): occluders on a grid `factor`
times coarser are evaluated first; the map is interpolated from them, and the finest grid is
evaluated only where the coarse deltas are largest (the top `fraction` of positions).

`approximation_ssim` compares the approximate map with the exact one on sample images (SSIM,
Wang et al. 2004, Gaussian window 11 / sigma 1.5, the exact map's range as the dynamic range),
and times both, so that `tau` can be chosen for an accuracy target (Krypton uses SSIM >= 0.9).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import clean_forward, image_batch
from ._errors import OcclensError, describe, fail
from ._fills import plan_fill
from ._grid import aggregate as aggregate_deltas
from ._incremental import _check_clean, incremental_deltas
from ._incremental_graph import GraphFailed, Unsupported, analyse
from ._targets import as_target
from ._types import Key, ModelFn, TargetLike

__all__ = ["ApproximationReport", "approximation_ssim", "occlusion_approximate", "ssim"]

CALL = "occlusion_approximate"


def _check_tau(tau: object) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau <= 1:
        raise fail(CALL, "tau", f"got {describe(tau)}", "pass a fraction in (0, 1]; 1 is exact")
    return float(tau)


def _check_drill(drill: object) -> tuple[int, float] | None:
    if drill is None:
        return None
    ok = isinstance(drill, (tuple, list)) and len(drill) == 2
    if ok:
        factor, fraction = drill
        ok = (
            isinstance(factor, int)
            and not isinstance(factor, bool)
            and factor >= 1
            and isinstance(fraction, (int, float))
            and 0 <= fraction <= 1
        )
    if not ok:
        raise fail(
            CALL,
            "drill",
            f"got {describe(drill)}",
            "pass (factor, fraction): a coarse stride `factor` times the stride, and the share "
            "of positions in [0, 1] evaluated on the fine grid",
        )
    return int(drill[0]), float(drill[1])  # type: ignore[index]


def occlusion_approximate(
    model_fn: ModelFn,
    x: Tensor,
    target: TargetLike,
    *,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    tau: float = 1.0,
    drill: tuple[int, float] | None = None,
    fill: object = 0.0,
    edge: str = "fit",
    aggregate: str = "mean",
    box: tuple[int, int, int, int] | None = None,
    absolute: bool = False,
    chunk_size: int | None = None,
    key: Key | None = None,
) -> Tensor:
    """An approximate `occlusion` map from the incremental engine (Krypton's approximations).

    Takes `occlusion`'s arguments, plus `tau` in ``(0, 1]`` (projective-field threshold; 1 is
    exact) and `drill` ``(factor, fraction)`` (adaptive drill-down: a grid `factor` times
    coarser first, then the given grid on the top `fraction` of positions by coarse
    ``|delta|``; None evaluates every position). The model must be an ``nn.Module`` that the
    incremental engine runs (see `explain_engine`); otherwise this raises.
    Shapes as `occlusion`.

    How much an approximation keeps depends on the weights, so measure it on your own images
    with `approximation_ssim`. On a VGG16 trained on the shapes task (224 px, window 16, stride
    4; the README's benchmarks), ``tau=0.5, drill=(4, 0.1)`` ran 7x faster than the exact
    incremental engine and kept the heat map's SSIM at 0.94 or more; ``tau=0.5`` alone keeps
    0.99 and ``tau=0.3`` falls to 0.77.

    >>> import torch, occlens as ol
    >>> model, x = ol.testing.tiny_cnn(), torch.rand(3, 32, 32)
    >>> exact = ol.occlusion(model, x, 1, window=8, stride=4)
    >>> torch.allclose(ol.occlusion_approximate(model, x, 1, window=8, stride=4), exact, atol=1e-6)
    True
    >>> ol.occlusion_approximate(model, x, 1, window=8, stride=4, tau=0.5, drill=(2, 0.25)).shape
    torch.Size([32, 32])
    """
    from ._occlusion import _grid, noise_streams, occluder_rng_state

    batch, single = image_batch(x, CALL)
    tau = _check_tau(tau)
    plan = _check_drill(drill)
    grid = _grid(batch, window, stride, edge, aggregate, box)
    filling = plan_fill(fill, batch, CALL)
    streams = noise_streams(filling, occluder_rng_state(filling, key, CALL), batch, grid)
    clean, _ = clean_forward(model_fn, batch, CALL, measure=False)
    goal = as_target(target, CALL)
    goal.check(clean, CALL)
    goal = goal.resolve(clean)
    out = torch.empty(batch.shape[0], len(grid), dtype=torch.float64, device=batch.device)
    g = None
    for row in range(batch.shape[0]):
        image = batch[row : row + 1]
        try:
            g = analyse(model_fn, image, like=g)  # type: ignore[arg-type]
            _check_clean(g, clean[row : row + 1])
        except Unsupported as error:
            raise _cannot_run(error) from error

        def evaluate(which: Tensor | None, row=row, image=image, g=g) -> Tensor:
            noise = streams() if streams is not None else None
            return incremental_deltas(
                g,
                image,
                goal.select(row),
                filling,
                row,
                grid,
                chunk_size,
                noise,
                lambda _: None,
                None if tau == 1.0 else tau,
                which,
            )

        try:
            out[row] = _drill(evaluate, grid, plan) if plan is not None else evaluate(None)
        except Unsupported as error:
            raise _cannot_run(error) from error
        except OcclensError:
            raise
        except (RuntimeError, TypeError, IndexError, ValueError) as error:
            raise _cannot_run(Unsupported(str(error)), error) from error
    if absolute:
        out = out.abs()
    heat = aggregate_deltas(out.to(clean.dtype), grid, aggregate)
    return heat[0] if single else heat


def _cannot_run(error: Unsupported, cause: BaseException | None = None) -> Exception:
    """The error for a model the incremental engine cannot run, naming the model's own error."""
    if isinstance(error, GraphFailed) or cause is not None:
        cause = cause or error.__cause__
        return fail(
            CALL,
            "model_fn",
            f"the model raised {type(cause).__name__} inside the incremental engine: {error}",
            "check that the model runs on this input; occlusion() runs it whole",
        )
    return fail(
        CALL,
        "model_fn",
        f"the incremental engine cannot run this model: {error}",
        "use occlusion(), which falls back to re-running the whole model",
    )


def _drill(evaluate, grid, plan: tuple[int, float]) -> Tensor:
    """Coarse grid, interpolation, then the fine grid where the coarse deltas are largest."""
    factor, fraction = plan
    rows, cols = len(grid.rows), len(grid.cols)
    ri = torch.arange(0, rows, factor)
    ci = torch.arange(0, cols, factor)
    if ri[-1] != rows - 1:
        ri = torch.cat([ri, torch.tensor([rows - 1])])
    if ci[-1] != cols - 1:
        ci = torch.cat([ci, torch.tensor([cols - 1])])
    coarse_ids = (ri[:, None] * cols + ci[None, :]).flatten()
    coarse = evaluate(coarse_ids).view(len(ri), len(ci))
    table = _interpolate(coarse, ri, ci, rows, cols)
    table.view(-1)[coarse_ids] = coarse.flatten()
    count = round(fraction * rows * cols)
    if count:
        done = torch.zeros(rows * cols, dtype=torch.bool)
        done[coarse_ids] = True
        score = table.flatten().abs().masked_fill(done, -1.0)
        fine = score.topk(min(count, int((~done).sum()))).indices.sort().values
        if len(fine):
            table.view(-1)[fine] = evaluate(fine)
    return table.flatten()


def _interpolate(coarse: Tensor, ri: Tensor, ci: Tensor, rows: int, cols: int) -> Tensor:
    """Piecewise-linear interpolation of `coarse` (at grid rows `ri`, cols `ci`) to the grid."""

    def weights(at: Tensor, n: int) -> Tensor:
        pos = torch.arange(n, dtype=torch.float64)
        k = (
            torch.searchsorted(at.double(), pos, right=True).clamp(1, len(at) - 1)
            if len(at) > 1
            else None
        )
        out = torch.zeros(n, len(at), dtype=torch.float64)
        if k is None:
            out[:, 0] = 1.0
            return out
        lo, hi = at[k - 1].double(), at[k].double()
        t = ((pos - lo) / (hi - lo)).clamp(0, 1)
        out[torch.arange(n), k - 1] = 1 - t
        out[torch.arange(n), k] += t
        return out

    return weights(ri, rows) @ coarse @ weights(ci, cols).T


def ssim(a: Tensor, b: Tensor) -> float:
    """SSIM of map `a` against the reference map `b` (both ``[H, W]``).

    Gaussian window 11 / sigma 1.5 (clipped to the map), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``
    with ``L`` the range of `b`; the mean over the map. Identical maps give 1.

    >>> import torch
    >>> from occlens._incremental_approx import ssim
    >>> m = torch.rand(20, 20, generator=torch.Generator().manual_seed(0))
    >>> ssim(m, m)
    1.0
    """
    a, b = a.double()[None, None], b.double()[None, None]
    span = float(b.max() - b.min()) or 1.0
    size = min(11, a.shape[-1], a.shape[-2])
    size -= 1 - size % 2
    xs = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(xs**2) / (2 * 1.5**2))
    g = (g / g.sum())[:, None] * (g / g.sum())[None, :]
    kernel = g[None, None]

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return round(float(value.mean()), 12)


@dataclass(frozen=True)
class ApproximationReport:
    """SSIM of the approximate maps against the exact ones, and the time of each.

    `ssim` holds one value per image; `seconds_exact` and `seconds_approximate` are totals
    over the images (the exact map from ``occlusion(..., engine=exact_engine)``).
    """

    tau: float
    drill: tuple[int, float] | None
    ssim: tuple[float, ...]
    seconds_exact: float
    seconds_approximate: float

    @property
    def speedup(self) -> float:
        return self.seconds_exact / max(self.seconds_approximate, 1e-12)


def approximation_ssim(
    model_fn: ModelFn,
    images: Tensor,
    target: TargetLike,
    *,
    tau: float = 1.0,
    drill: tuple[int, float] | None = None,
    exact_engine: str = "batched",
    **options: object,
) -> ApproximationReport:
    """How close `occlusion_approximate` is to the exact map on sample `images` ``[B, C, H, W]``.

    `options` are `occlusion`'s (window, stride, fill, aggregate, ...). Returns an
    `ApproximationReport` with the SSIM per image and the seconds spent by the exact engine
    `exact_engine` and by the approximation; choose the smallest `tau` whose SSIM meets your
    target (Krypton: 0.9). SSIM compares the maps as `aggregate` makes them: the default
    ``"mean"`` compares the ``[H, W]`` heat maps, ``"grid"`` the per-position maps
    ``[n_rows, n_cols]``, which keep the fine structure that the windows' overlap averages out
    and so score lower.

    >>> import torch, occlens as ol
    >>> report = ol.approximation_ssim(ol.testing.tiny_cnn(), torch.rand(2, 3, 32, 32), 1,
    ...                                tau=1.0, window=8, stride=4)
    >>> [round(s, 6) for s in report.ssim]
    [1.0, 1.0]
    """
    from ._occlusion import occlusion

    batch, _ = image_batch(images, "approximation_ssim", "images")
    start = time.perf_counter()
    exact = occlusion(model_fn, batch, target, engine=exact_engine, **options)  # type: ignore[arg-type]
    middle = time.perf_counter()
    approx = occlusion_approximate(model_fn, batch, target, tau=tau, drill=drill, **options)  # type: ignore[arg-type]
    end = time.perf_counter()
    values = tuple(ssim(a, e) for a, e in zip(approx, exact, strict=True))
    return ApproximationReport(tau, drill, values, middle - start, end - middle)

"""Where each occluder changes each feature map: boxes propagated through the patch nodes.

Per axis and occluder, a node's *dirty* interval ``[lo, hi)`` holds every unit that the occluder
can change (empty when ``lo >= hi``). A window (conv, pool) with kernel ``k``, stride ``s``,
dilation ``d`` and low padding ``p`` maps ``[lo, hi)`` to the outputs whose window meets it,
``[ceil((lo + p - d (k - 1)) / s), floor((hi - 1 + p) / s) + 1)``; pointwise ops keep it; adds and
concats take the bounding box of their inputs' (Krypton's rules, with exact intervals). All
occluders that run together (a chunk) share one patch size per node, the largest dirty extent
among them, and each occluder gets a patch origin that holds its dirty box inside the map (or
inside the region the target needs). In approximate mode (`tau`) too, chunks never change the
values: a cut interval is never longer than the cut, so a patch's units outside its occluder's
box are units the occluder does not change (or, for a unit target, never needed). `Geometry.chunks`
groups occluders whose dirty extents are alike: patch sizes at strided layers depend on the
occluder's phase against the strides and on the borders, and one size for the whole grid costs
VGG16 1.3x the FLOPs of fitted chunks at 224 px, window 16, stride 4.

For a unit target the *needed* region of each node, the back-projection of the unit, bounds
everything: dirty boxes are cut to it, and occluders whose box misses it are never evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, fx

from ._incremental_graph import Graph, Window

__all__ = ["Geometry", "Region", "needed_regions", "propagate"]

BIG = 1 << 40

Region = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open


@dataclass
class Boxes:
    """Dirty intervals of one node, per occluder: ``[y0, y1) x [x0, x1)``, int64 ``[P]`` each."""

    y0: Tensor
    y1: Tensor
    x0: Tensor
    x1: Tensor

    def empty(self) -> Tensor:
        return (self.y0 >= self.y1) | (self.x0 >= self.x1)

    def select(self, index: Tensor) -> Boxes:
        return Boxes(self.y0[index], self.y1[index], self.x0[index], self.x1[index])


@dataclass
class Geometry:
    """Patch sizes per node and, per occluder, patch origins and whether it can change the score.

    `size`, `oy` and `ox` hold all occluders in one patch size per node, the largest over the
    live ones; `select` fits them to a chunk. `boxes` keeps each occluder's dirty box per node
    (the nodes of `shared` have their input's).
    """

    size: dict[fx.Node, tuple[int, int]]
    oy: dict[fx.Node, Tensor]
    ox: dict[fx.Node, Tensor]
    live: Tensor  # [P] bool
    needed: dict[fx.Node, Region]
    boxes: dict[fx.Node, Boxes]
    shared: dict[fx.Node, fx.Node]
    weight: dict[fx.Node, float]  # FLOPs per unit of patch, of the nodes of `boxes`

    def select(self, index: Tensor) -> Geometry:
        """The geometry of occluders `index`, its patch sizes fitted to them alone."""
        boxes = {n: b.select(index) for n, b in self.boxes.items()}
        size, oy, ox = _patches(boxes, self.needed, self.live[index], self.shared)
        return Geometry(
            size, oy, ox, self.live[index], self.needed, boxes, self.shared, self.weight
        )

    def chunks(self, chunk: int, *, in_order: bool = False) -> list[Tensor]:
        """The live occluders in chunks of at most `chunk`, as indices.

        Occluders are grouped by their dirty extents along y at every node (those of a grid row
        are equal; groups under half a chunk join the next), each group split into near-equal
        chunks, and sorted within it by their extents along x weighted by each node's FLOPs per
        unit, so that each chunk's fitted patches are nearly its occluders' own. `in_order`
        keeps increasing indices (noise fills draw in occluder order).
        """
        live = self.live.nonzero()[:, 0]
        if in_order or len(live) <= chunk:
            return [live[i : i + chunk] for i in range(0, len(live), chunk)]
        rows = torch.stack([b.y1 - b.y0 for b in self.boxes.values()], 1)[live]
        cols = torch.stack([b.x1 - b.x0 for b in self.boxes.values()], 1)[live]
        weights = torch.tensor([self.weight[n] for n in self.boxes], dtype=torch.float64)
        _, row = torch.unique(rows.clamp(min=0), dim=0, return_inverse=True)
        col = cols.clamp(min=0).double() @ weights
        order = torch.sort(col, stable=True).indices
        order = order[torch.sort(row[order], stable=True).indices]
        counts = torch.unique_consecutive(row[order], return_counts=True)[1].tolist()
        out, start, end = [], 0, 0
        for count in counts:  # groups under half a chunk run with the next: chunks cost time
            end += count
            if 2 * (end - start) >= chunk or end == len(order):
                pieces = -(-(end - start) // chunk)
                out += [live[part] for part in torch.tensor_split(order[start:end], pieces)]
                start = end
        return out

    def fitted_sizes(self, chunks: list[Tensor]) -> dict[fx.Node, tuple[Tensor, Tensor]]:
        """Per node, the patch heights and widths ``[K]`` that `select` gives `chunks`."""
        if not chunks:
            return {n: (torch.ones(0), torch.ones(0)) for n in self.size}
        which = torch.cat(chunks)
        label = torch.repeat_interleave(
            torch.arange(len(chunks)), torch.tensor([len(c) for c in chunks])
        )
        out = {}
        for node, box in self.boxes.items():
            y0, y1, x0, x1 = self.needed[node]
            sizes = []
            for lo, hi, limit in ((box.y0, box.y1, y1 - y0), (box.x0, box.x1, x1 - x0)):
                length = (hi - lo)[which].clamp(min=0)
                top = torch.zeros(len(chunks), dtype=length.dtype).scatter_reduce(
                    0, label, length, "amax"
                )
                sizes.append(top.clamp(1, max(limit, 1)))
            out[node] = (sizes[0], sizes[1])
        for node, source in self.shared.items():
            out[node] = out[source]
        return out


def _norm(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    empty = lo >= hi
    return lo.masked_fill(empty, BIG), hi.masked_fill(empty, -BIG)


def _cut(lo: Tensor, hi: Tensor, a: int, b: int) -> tuple[Tensor, Tensor]:
    return _norm(lo.clamp(min=a), hi.clamp(max=b))


def _cap(lo: Tensor, hi: Tensor, cap: int | None) -> tuple[Tensor, Tensor]:
    """Projective-field thresholding: keep the central `cap` units of longer intervals."""
    if cap is None:
        return lo, hi
    over = (hi - lo) > cap
    start = torch.div(lo + hi - cap, 2, rounding_mode="floor")
    return torch.where(over, start, lo), torch.where(over, start + cap, hi)


def needed_regions(g: Graph, unit: tuple[int, int] | None) -> dict[fx.Node, Region]:
    """The region of each patch node that can reach the output unit ``(y, x)`` (all if None)."""
    patch = [n for n in g.nodes if g.kinds[n] == "patch"]
    full = {n: (0, g.steps[n].size[0], 0, g.steps[n].size[1]) for n in patch}
    if unit is None or g.kinds[g.output] != "patch":
        return full
    y, x = unit
    need: dict[fx.Node, Region] = {g.output: (y, y + 1, x, x + 1)}
    for node in reversed(patch):
        if node not in need:
            continue
        y0, y1, x0, x1 = need[node]
        step = g.steps[node]
        for source in step.sources:
            h, w = g.steps[source].size
            if step.kind == "window":
                win: Window = step.window  # type: ignore[assignment]
                box = (
                    max(y0 * win.s[0] - win.lo[0], 0),
                    min((y1 - 1) * win.s[0] - win.lo[0] + win.reach(0), h),
                    max(x0 * win.s[1] - win.lo[1], 0),
                    min((x1 - 1) * win.s[1] - win.lo[1] + win.reach(1), w),
                )
            else:
                box = (y0, y1, x0, x1)
            if box[0] >= box[1] or box[2] >= box[3]:
                continue
            old = need.get(source)
            if old is not None:
                box = (
                    min(old[0], box[0]),
                    max(old[1], box[1]),
                    min(old[2], box[2]),
                    max(old[3], box[3]),
                )
            need[source] = box
    return need


def _window_axis(lo: Tensor, hi: Tensor, k: int, s: int, d: int, p: int, n: int):
    reach = d * (k - 1)
    out_lo = -torch.div(-(lo + p - reach), s, rounding_mode="floor")
    out_hi = torch.div(hi - 1 + p, s, rounding_mode="floor") + 1
    return _norm(out_lo.clamp(0, n), out_hi.clamp(0, n))


def propagate(
    g: Graph, bounds: Tensor, needed: dict[fx.Node, Region], tau: float | None = None
) -> Geometry:
    """Dirty boxes, patch sizes and origins of every needed patch node for occluders `bounds`.

    `bounds` is ``[P, 4]`` of ``(y0, x0, y1, x1)``. With `tau` (approximate mode), the dirty box
    of every window layer is cut to its central ``round(tau * n)`` units along each axis.
    """
    boxes: dict[fx.Node, Boxes] = {}
    for node in g.nodes:
        if node not in needed:
            continue
        step = g.steps[node]
        y0, y1, x0, x1 = needed[node]
        h, w = step.size
        if step.kind == "input":
            ly, hy = _cut(bounds[:, 0].clone(), bounds[:, 2].clone(), y0, y1)
            lx, hx = _cut(bounds[:, 1].clone(), bounds[:, 3].clone(), x0, x1)
        elif step.kind == "window":
            src = boxes[step.sources[0]]
            win: Window = step.window  # type: ignore[assignment]
            ly, hy = _window_axis(src.y0, src.y1, win.k[0], win.s[0], win.d[0], win.lo[0], h)
            lx, hx = _window_axis(src.x0, src.x1, win.k[1], win.s[1], win.d[1], win.lo[1], w)
            if tau is not None:
                ly, hy = _cap(ly, hy, max(1, round(tau * h)))
                lx, hx = _cap(lx, hx, max(1, round(tau * w)))
            ly, hy = _cut(ly, hy, y0, y1)
            lx, hx = _cut(lx, hx, x0, x1)
        else:
            parts = [boxes[s] for s in step.sources if s in boxes]
            ly = torch.stack([b.y0 for b in parts]).amin(0)
            hy = torch.stack([b.y1 for b in parts]).amax(0)
            lx = torch.stack([b.x0 for b in parts]).amin(0)
            hx = torch.stack([b.x1 for b in parts]).amax(0)
            ly, hy = _cut(ly, hy, y0, y1)
            lx, hx = _cut(lx, hx, x0, x1)
        boxes[node] = Boxes(ly, hy, lx, hx)
    if g.kinds[g.output] == "patch":
        live = ~boxes[g.output].empty()
    else:
        live = torch.zeros(bounds.shape[0], dtype=torch.bool)
        for node in g.boundary:
            if node in boxes:
                live |= ~boxes[node].empty()
    shared = {}  # a pointwise node has the same patch as its input
    own: dict[fx.Node, Boxes] = {}
    for node, box in boxes.items():
        step = g.steps[node]
        source = step.sources[0] if step.sources else None
        if step.kind == "pointwise" and source in boxes:
            shared[node] = shared.get(source, source)
        else:
            own[node] = box
    size, oy, ox = _patches(own, needed, live, shared)
    weight = {node: float(g.steps[node].flops) for node in own}
    return Geometry(size, oy, ox, live, needed, own, shared, weight)


def _patches(
    boxes: dict[fx.Node, Boxes],
    needed: dict[fx.Node, Region],
    live: Tensor,
    shared: dict[fx.Node, fx.Node],
) -> tuple[dict[fx.Node, tuple[int, int]], dict[fx.Node, Tensor], dict[fx.Node, Tensor]]:
    """Patch sizes of the nodes of `boxes`, the largest dirty extents of the `live` occluders,
    and every occluder's origins; the nodes of `shared` take those of the node they map to."""
    size, oy, ox = {}, {}, {}
    for node, box in boxes.items():
        y0, y1, x0, x1 = needed[node]
        ph = _extent(box.y0, box.y1, live, y1 - y0)
        pw = _extent(box.x0, box.x1, live, x1 - x0)
        size[node] = (ph, pw)
        oy[node] = box.y0.clamp(y0, y1 - ph)
        ox[node] = box.x0.clamp(x0, x1 - pw)
    for node, source in shared.items():
        size[node], oy[node], ox[node] = size[source], oy[source], ox[source]
    return size, oy, ox


def _extent(lo: Tensor, hi: Tensor, live: Tensor, limit: int) -> int:
    lengths = (hi - lo).clamp(min=0)[live]
    longest = int(lengths.max()) if lengths.numel() else 1
    return max(1, min(longest, limit))

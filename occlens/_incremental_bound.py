"""What the incremental engine would compute, read off the clean pass without tracing the model.

``engine="auto"`` needs the incremental engine's geometry to choose an engine, and getting it
the exact way (an fx trace, a clean pass through the traced graph, the patch boxes: 3-5 ms even
for a small CNN) costs more than 5% of a batched run shorter than about 0.1 s. The clean pass
that ``"auto"`` runs anyway (`occlens._memory.measure_forward`) can log, for every operator that
reads the image, what the geometry needs: a `Layer`. `patch_work` then propagates the occluders'
dirty intervals through the log by the rules of `occlens._incremental_geometry` (windows map
intervals, pointwise ops keep them, merges take their bounding box), and adds up what the
engine would compute and move. Operators the rules do not cover change everything after them,
as the incremental engine's dense tail does, so the figures err towards more work, never less:
``"auto"`` uses them only to tell whether planning would end with the incremental engine.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Layer", "LayerLog", "PatchWork", "patch_work"]

_ATEN = torch.ops.aten
_POOLS = {
    _ATEN.max_pool2d_with_indices.default,
    _ATEN.max_pool2d.default,
    _ATEN.avg_pool2d.default,
}
_ADAPTIVE_POOLS = {_ATEN._adaptive_avg_pool2d.default, _ATEN.adaptive_max_pool2d.default}
_PER_CHANNEL = {
    _ATEN.native_batch_norm.default,
    _ATEN._native_batch_norm_legit_no_training.default,
    _ATEN._native_batch_norm_legit.default,
}
_COPIES = {_ATEN.clone.default, _ATEN._to_copy.default, _ATEN.contiguous.default}


@dataclass(frozen=True)
class Layer:
    """One operator of the clean pass that read the image, per image of the batch.

    `kind` is ``"input"``, ``"window"`` (a convolution or a pool: kernel, stride, dilation and
    low padding per axis in `window`), ``"pointwise"``, ``"merge"`` (a pointwise op or a channel
    concat of several image-dependent maps) or ``"dense"`` (anything else: it and every layer
    after it run in full for every occluder). `sources` index earlier layers.
    """

    kind: str
    sources: tuple[int, ...]
    size: tuple[int, int]  # (H, W) of the output; (0, 0) for a dense layer
    channels: int
    flops: float  # of the whole output, per image
    numel: int  # of the output, per image
    item: int  # bytes per element
    window: tuple[tuple[int, int, int, int], ...] = ()  # per axis: (k, s, d, low padding)


class LayerLog:
    """Records the `Layer` of each operator that reads `image` ``[B, C, H, W]`` or a result of it.

    Call `record` from a dispatch mode with each operator, its arguments, its output and its
    FLOPs. Tensors are followed by identity through weak references, so the log keeps no
    activation alive and a freed tensor's reused id is never mistaken for it.
    """

    def __init__(self, image: Tensor) -> None:
        self.batch = image.shape[0]
        self.index: dict[int, tuple[weakref.ref, int]] = {}
        self.layers: list[Layer] = []
        if image.ndim == 4:
            self._remember(image, 0)
            numel, item = image[0].numel(), image.element_size()
            self.layers.append(
                Layer("input", (), tuple(image.shape[2:]), image.shape[1], 0.0, numel, item)
            )

    def _remember(self, tensor: Tensor, layer: int) -> None:
        self.index[id(tensor)] = (weakref.ref(tensor), layer)

    def _layer_of(self, value: object) -> int | None:
        if not isinstance(value, Tensor):
            return None
        entry = self.index.get(id(value))
        return entry[1] if entry is not None and entry[0]() is value else None

    def _sources(self, args: tuple, kwargs: dict) -> tuple[int, ...]:
        found: dict[int, None] = {}
        for value in (*args, *kwargs.values()) if kwargs else args:
            if isinstance(value, Tensor):
                items: tuple | list = (value,)
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], Tensor):
                items = value
            else:
                continue
            for item in items:
                layer = self._layer_of(item)
                if layer is not None:
                    found[layer] = None
        return tuple(found)

    def record(self, func, args: tuple, kwargs: dict, out: object, flops: float) -> None:
        if not self.layers:
            return
        sources = self._sources(args, kwargs)
        if not sources:
            return
        results = out if isinstance(out, (list, tuple)) else (out,)
        outputs = [t for t in results if isinstance(t, Tensor)]
        if not outputs:
            return
        first = outputs[0]
        kind, window = self._classify(func, args, kwargs, sources, first)
        spatial = kind != "dense"
        per_image = self.batch if first.ndim and first.shape[0] == self.batch else 1
        layer = Layer(
            kind,
            (self._layer_of(args[0]),) if kind == "window" else sources,  # type: ignore[arg-type]
            tuple(first.shape[2:]) if spatial else (0, 0),
            first.shape[1] if spatial else 0,
            flops / self.batch,
            first.numel() // per_image,
            first.element_size(),
            window,
        )
        for tensor in outputs:
            self._remember(tensor, len(self.layers))
        self.layers.append(layer)

    def _spatial(self, t: object) -> bool:
        return isinstance(t, Tensor) and t.ndim == 4 and t.shape[0] == self.batch

    def _classify(self, func, args, kwargs, sources, out) -> tuple[str, tuple]:
        if any(self.layers[i].kind == "dense" for i in sources) or not self._spatial(out):
            return "dense", ()
        source = args[0] if args else None
        if func is _ATEN.convolution.default:
            if not self._spatial(source) or self._layer_of(source) is None or args[6]:
                return "dense", ()
            if self._layer_of(args[1]) is not None or self._layer_of(args[2]) is not None:
                return "dense", ()  # the weights depend on the image
            kernel = tuple(args[1].shape[2:])
            return "window", _axes(kernel, args[3], args[5], args[4])
        if func in _POOLS:
            if not self._spatial(source) or self._layer_of(source) is None:
                return "dense", ()
            kernel = _pair(args[1])
            stride = _pair(args[2]) if len(args) > 2 and args[2] else kernel
            padding = _pair(args[3]) if len(args) > 3 else (0, 0)
            dilation = (
                _pair(args[4]) if func is not _ATEN.avg_pool2d.default and len(args) > 4 else (1, 1)
            )
            return "window", _axes(kernel, stride, dilation, padding)
        if func in _ADAPTIVE_POOLS:  # a pool whose kernel tiles the input, as the engine runs it
            if not self._spatial(source) or self._layer_of(source) is None:
                return "dense", ()
            (h, w), (oh, ow) = source.shape[2:], out.shape[2:]
            if h % oh or w % ow:
                return "dense", ()
            kernel = (h // oh, w // ow)
            return "window", _axes(kernel, kernel, 1, 0)
        same = [self.layers[i].size == tuple(out.shape[2:]) for i in sources]
        if not all(same):
            return "dense", ()
        if func is _ATEN.cat.default:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return ("merge" if dim in (1, -3) else "dense"), ()
        if torch.Tag.pointwise in func.tags or func in _PER_CHANNEL:
            return ("merge" if len(sources) > 1 else "pointwise"), ()
        if len(sources) == 1 and self._same_layout(func, source, out):
            return "pointwise", ()
        return "dense", ()

    def _same_layout(self, func, source: object, out: Tensor) -> bool:
        """A view or copy that leaves every value where it was (not a transpose, not a flip)."""
        if not isinstance(source, Tensor) or source.shape != out.shape:
            return False
        if func.is_view:
            same_strides = source.stride() == out.stride()
            return same_strides and source.storage_offset() == out.storage_offset()
        return func in _COPIES


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)  # type: ignore[call-overload]


def _axes(kernel, stride, dilation, padding) -> tuple[tuple[int, int, int, int], ...]:
    k, s, d, p = _pair(kernel), _pair(stride), _pair(dilation), _pair(padding)
    return (k[0], s[0], d[0], p[0]), (k[1], s[1], d[1], p[1])


@dataclass(frozen=True)
class PatchWork:
    """Per live occluder, what the incremental engine computes: FLOPs (patch layers and dense
    tail), bytes gathered, written and pasted; its patch layers, graph nodes and the largest
    tensor of a chunk (elements per occluder); and the FLOPs of a clean pass."""

    flops: float
    moved: float
    steps: int
    nodes: int
    largest: int
    flops_full: float


Intervals = list[tuple[int, int]]  # per occluder along one axis: dirty [lo, hi), (0, 0) if none


def patch_work(layers: tuple[Layer, ...], rows: Intervals, cols: Intervals) -> PatchWork | None:
    """What the incremental engine would do for occluders at `rows` and `cols` (start and end
    pixels along each axis), or None where the log has no image layer."""
    if not layers or layers[0].kind != "input":
        return None
    dirty: list[tuple[Intervals, Intervals]] = []
    flops = moved = full = 0.0
    largest = steps = 0
    feeds_dense: set[int] = set()
    for layer in layers:
        if layer.kind == "dense":
            dirty.append(([], []))
            feeds_dense.update(i for i in layer.sources if layers[i].kind != "dense")
            read = max(layers[i].numel for i in layer.sources)  # a global pool reads it all
            flops += max(layer.flops, float(layer.numel), float(read))
            full += layer.flops
            continue
        if layer.kind == "input":
            boxes = (_cut(rows, layer.size[0]), _cut(cols, layer.size[1]))
        elif layer.kind == "window":
            source = dirty[layer.sources[0]]
            boxes = (
                _through_window(source[0], layer.window[0], layer.size[0]),
                _through_window(source[1], layer.window[1], layer.size[1]),
            )
        else:
            boxes = (
                _bounding([dirty[i][0] for i in layer.sources]),
                _bounding([dirty[i][1] for i in layer.sources]),
            )
        dirty.append(boxes)
        h, w = (max((hi - lo for lo, hi in axis), default=0) for axis in boxes)
        steps += 1
        units = layer.size[0] * layer.size[1]
        per_unit = float(layer.channels)
        if layer.kind == "window":
            (k, _, _, _), (j, _, _, _) = layer.window
            per_unit = layer.flops / units or float(k * j * layer.channels)  # pools: k * k * C
        flops += per_unit * h * w
        full += per_unit * units
        moved += 2.0 * layer.channels * h * w * layer.item
        if layer.kind == "window":
            source_channels = layers[layer.sources[0]].channels
            reads = [
                (n - 1) * s + d * (k - 1) + 1
                for n, (k, s, d, _) in zip((h, w), layer.window, strict=True)
            ]
            moved += 2.0 * reads[0] * reads[1] * source_channels * layer.item
            largest = max(largest, reads[0] * reads[1] * source_channels)
        else:
            if layer.kind == "merge":
                moved += 2.0 * h * w * layer.channels * layer.item * len(layer.sources)
            largest = max(largest, h * w * layer.channels)
    if layers[-1].kind != "dense":  # the model returns a map: pasted whole, as a dense input
        feeds_dense.add(len(layers) - 1)
    for i in feeds_dense:
        layer = layers[i]
        moved += 2.0 * layer.channels * layer.size[0] * layer.size[1] * layer.item
        largest = max(largest, layer.channels * layer.size[0] * layer.size[1])
    return PatchWork(flops, moved, steps, len(layers) + 2, largest, full)


def _cut(intervals: Intervals, size: int) -> Intervals:
    return [(max(lo, 0), min(hi, size)) if lo < min(hi, size) else (0, 0) for lo, hi in intervals]


def _through_window(intervals: Intervals, axis: tuple[int, int, int, int], size: int) -> Intervals:
    """Outputs whose window meets each ``[lo, hi)``: ``[ceil((lo + p - d (k - 1)) / s),
    floor((hi - 1 + p) / s) + 1)``, cut to the map."""
    k, s, d, p = axis
    reach = d * (k - 1)
    out = []
    for lo, hi in intervals:
        first, last = max(0, -((reach - lo - p) // s)), min(size, (hi - 1 + p) // s + 1)
        out.append((first, last) if lo < hi and first < last else (0, 0))
    return out


def _bounding(sources: list[Intervals]) -> Intervals:
    """The bounding interval of the sources' dirty intervals, per occluder (empty ones ignored)."""
    out = []
    for per_source in zip(*sources, strict=True):
        present = [(lo, hi) for lo, hi in per_source if lo < hi]
        out.append(
            (min(lo for lo, _ in present), max(hi for _, hi in present)) if present else (0, 0)
        )
    return out

"""Prior (anchor / default) boxes of SSD-family detectors.

Plain numpy, so it imports without TensorFlow. Anchors are float32 ``(A, 4)`` in
relative ``[cx, cy, w, h]``, ordered feature map by feature map, then row-major over
locations (``y`` outer, ``x`` inner, which is how a ``(B, H, W, k * D)`` Keras head
reshapes to ``(B, H * W * k, D)``), then per location:

1. the small square ``s_k = min_size / image_size``;
2. the large square ``sqrt(s_k * s_k+1)`` with ``s_k+1 = max_size / image_size``
   (only when the spec has max sizes);
3. for each aspect ratio ``r``: ``(s_k sqrt(r), s_k / sqrt(r))`` then its transpose.

This is the layout of the SSD authors' Caffe code and of ssd.pytorch's ``PriorBox``.
"""

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
    """Geometry of the priors of one detector.

    Attributes:
        image_size: side of the square network input, in pixels.
        feature_map_sizes: side of each square prediction map.
        min_sizes: small-square side per map, in pixels.
        max_sizes: per map, the pixel size whose geometric mean with ``min_sizes``
            gives the large square; ``None`` for detectors without it (RefineDet).
        aspect_ratios: per map, the ratios ``r > 1``; each adds ``r`` and ``1/r``.
        steps: per map, the pixel stride between anchor centres; ``None`` means
            ``image_size / feature_map_size`` (centres spread evenly over the image).
        clip: clip ``[cx, cy, w, h]`` to ``[0, 1]``, as the SSD authors do.
    """

    image_size: int
    feature_map_sizes: Tuple[int, ...]
    min_sizes: Tuple[float, ...]
    max_sizes: Optional[Tuple[float, ...]]
    aspect_ratios: Tuple[Tuple[float, ...], ...]
    steps: Optional[Tuple[float, ...]] = None
    clip: bool = True

    def __post_init__(self):
        n = len(self.feature_map_sizes)
        fields = {"min_sizes": self.min_sizes, "aspect_ratios": self.aspect_ratios}
        if self.max_sizes is not None:
            fields["max_sizes"] = self.max_sizes
        if self.steps is not None:
            fields["steps"] = self.steps
        for name, value in fields.items():
            if len(value) != n:
                raise ValueError(
                    f"AnchorSpec.{name} has {len(value)} entries but there are "
                    f"{n} feature maps ({self.feature_map_sizes})."
                )
        for ratios in self.aspect_ratios:
            for r in ratios:
                if r <= 1:
                    raise ValueError(
                        f"AnchorSpec.aspect_ratios must be > 1 (1/r is added "
                        f"automatically); got {r}."
                    )

    def anchors_per_location(self) -> Tuple[int, ...]:
        """Number of anchors at each location of each feature map."""
        squares = 1 if self.max_sizes is None else 2
        return tuple(squares + 2 * len(r) for r in self.aspect_ratios)

    def num_anchors(self) -> int:
        return sum(
            f * f * k
            for f, k in zip(self.feature_map_sizes, self.anchors_per_location())
        )


def _ssd_spec(image_size, maps, min_sizes, max_sizes, ratios, steps=None):
    return AnchorSpec(
        image_size=image_size,
        feature_map_sizes=tuple(maps),
        min_sizes=tuple(min_sizes),
        max_sizes=None if max_sizes is None else tuple(max_sizes),
        aspect_ratios=tuple(tuple(r) for r in ratios),
        steps=None if steps is None else tuple(steps),
    )


def _scaled(sizes, factor):
    return [round(s * factor, 4) for s in sizes]


_SSD300_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
_SSD512_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]]
_SSD300_VOC_SIZES = [30, 60, 111, 162, 213, 264, 315]
_SSD300_COCO_SIZES = [21, 45, 99, 153, 207, 261, 315]
_SSD512_VOC_SIZES = [35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6]
_SSD512_COCO_SIZES = [20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72]

PRESETS = {
    # The SSD authors' VOC and COCO settings (ssd.pytorch's `voc` and `coco` configs).
    "ssd300": _ssd_spec(
        300, [38, 19, 10, 5, 3, 1], _SSD300_VOC_SIZES[:-1], _SSD300_VOC_SIZES[1:],
        _SSD300_RATIOS, steps=[8, 16, 32, 64, 100, 300],
    ),
    "ssd300_coco": _ssd_spec(
        300, [38, 19, 10, 5, 3, 1], _SSD300_COCO_SIZES[:-1], _SSD300_COCO_SIZES[1:],
        _SSD300_RATIOS, steps=[8, 16, 32, 64, 100, 300],
    ),
    "ssd512": _ssd_spec(
        512, [64, 32, 16, 8, 4, 2, 1], _SSD512_VOC_SIZES[:-1], _SSD512_VOC_SIZES[1:],
        _SSD512_RATIOS, steps=[8, 16, 32, 64, 128, 256, 512],
    ),
    "ssd512_coco": _ssd_spec(
        512, [64, 32, 16, 8, 4, 2, 1], _SSD512_COCO_SIZES[:-1], _SSD512_COCO_SIZES[1:],
        _SSD512_RATIOS, steps=[8, 16, 32, 64, 128, 256, 512],
    ),
    # MobileNetV2-SSDLite: the maps of a stride-16/32 backbone plus four extra
    # layers, with the SSD300 VOC scales (small first scale, since small objects
    # are the point of this library) and ratios {2, 3} everywhere.
    "ssdlite300": _ssd_spec(
        300, [19, 10, 5, 3, 2, 1], _SSD300_VOC_SIZES[:-1], _SSD300_VOC_SIZES[1:],
        [[2, 3]] * 6,
    ),
    "ssdlite320": _ssd_spec(
        320, [20, 10, 5, 3, 2, 1], _scaled(_SSD300_VOC_SIZES[:-1], 320 / 300),
        _scaled(_SSD300_VOC_SIZES[1:], 320 / 300), [[2, 3]] * 6,
    ),
    # RefineDet (Zhang et al. 2018): one scale of 4x the stride per map, ratios
    # {1/2, 1, 2}, no large square.
    "refinedet320": _ssd_spec(
        320, [40, 20, 10, 5], [32, 64, 128, 256], None, [[2]] * 4,
        steps=[8, 16, 32, 64],
    ),
    "refinedet512": _ssd_spec(
        512, [64, 32, 16, 8], [32, 64, 128, 256], None, [[2]] * 4,
        steps=[8, 16, 32, 64],
    ),
    # DSSD (Fu et al. 2017) on keras's ResNet-101: the maps are those its stride-8,
    # 16 and 32 stages give at 321 / 513 pixels plus the extra layers down to 1x1.
    # SSD300 / SSD512 VOC scales rescaled to the input size, and the paper's
    # aspect ratios {1.6, 2, 3} (from k-means on VOC boxes) on every map. Centres
    # are spread evenly: the odd input sizes have no integer stride.
    "dssd321": _ssd_spec(
        321, [41, 21, 11, 6, 3, 1], _scaled(_SSD300_VOC_SIZES[:-1], 321 / 300),
        _scaled(_SSD300_VOC_SIZES[1:], 321 / 300), [[1.6, 2, 3]] * 6,
    ),
    "dssd513": _ssd_spec(
        513, [65, 33, 17, 9, 5, 3, 1], _scaled(_SSD512_VOC_SIZES[:-1], 513 / 512),
        _scaled(_SSD512_VOC_SIZES[1:], 513 / 512), [[1.6, 2, 3]] * 7,
    ),
}


def get_anchor_spec(name_or_spec) -> AnchorSpec:
    """Returns the `AnchorSpec` of a preset name, or the spec itself."""
    if isinstance(name_or_spec, AnchorSpec):
        return name_or_spec
    try:
        return PRESETS[name_or_spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown anchor preset {name_or_spec!r}; available: {sorted(PRESETS)}."
        ) from None


def get_anchors(name_or_spec) -> np.ndarray:
    """Priors of a preset name or `AnchorSpec`.

    Returns:
        float32 ``(A, 4)`` relative ``[cx, cy, w, h]``, in the order described in
        the module docstring, clipped to ``[0, 1]`` when ``spec.clip``.
    """
    spec = get_anchor_spec(name_or_spec)
    size = float(spec.image_size)
    per_map = []
    for k, f in enumerate(spec.feature_map_sizes):
        step = size / f if spec.steps is None else float(spec.steps[k])
        s = spec.min_sizes[k] / size
        shapes = [(s, s)]
        if spec.max_sizes is not None:
            big = math.sqrt(s * spec.max_sizes[k] / size)
            shapes.append((big, big))
        for r in spec.aspect_ratios[k]:
            root = math.sqrt(r)
            shapes += [(s * root, s / root), (s / root, s * root)]
        centres = (np.arange(f, dtype=np.float64) + 0.5) * step / size
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        wh = np.asarray(shapes, dtype=np.float64)  # (k, 2)
        grid = np.empty((f, f, len(shapes), 4), dtype=np.float64)
        grid[..., 0] = cx[:, :, None]
        grid[..., 1] = cy[:, :, None]
        grid[..., 2:] = wh[None, None]
        per_map.append(grid.reshape(-1, 4))
    anchors = np.concatenate(per_map, axis=0)
    if spec.clip:
        anchors = np.clip(anchors, 0.0, 1.0)
    return anchors.astype(np.float32)


def anchors_per_map(name_or_spec) -> Sequence[int]:
    """Number of anchors contributed by each feature map, in order."""
    spec = get_anchor_spec(name_or_spec)
    return [
        f * f * k
        for f, k in zip(spec.feature_map_sizes, spec.anchors_per_location())
    ]

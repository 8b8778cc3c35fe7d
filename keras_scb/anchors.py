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
from typing import Optional, Sequence, Tuple, Union

import numpy as np


# `AnchorSpec.clip`: all four coordinates, none, or only the width and height.
CLIP_MODES = (True, False, "wh")


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
        clip: ``True``: clip ``[cx, cy, w, h]`` to ``[0, 1]`` (ssd.pytorch's
            ``PriorBox`` and PytorchSSD); ``"wh"``: clip only ``w, h``, so the
            centres of the last row and column may lie past 1 (torchvision's
            ``DefaultBoxGenerator``); ``False``: no clipping (the Caffe SSD,
            RefineDet and DSSD configs).
        offsets: per map, the pixel position of the first centre (centres are
            ``offset + i * step``); ``None`` means ``step / 2``. DSSD places them
            at the receptive-field centres of its cells.
    """

    image_size: int
    feature_map_sizes: Tuple[int, ...]
    min_sizes: Tuple[float, ...]
    max_sizes: Optional[Tuple[float, ...]]
    aspect_ratios: Tuple[Tuple[float, ...], ...]
    steps: Optional[Tuple[float, ...]] = None
    clip: bool | str = True
    offsets: Optional[Tuple[float, ...]] = None

    def __post_init__(self):
        if self.clip not in CLIP_MODES:
            raise ValueError(
                f"AnchorSpec.clip must be one of {CLIP_MODES}; got {self.clip!r}."
            )
        n = len(self.feature_map_sizes)
        fields = {"min_sizes": self.min_sizes, "aspect_ratios": self.aspect_ratios}
        if self.max_sizes is not None:
            fields["max_sizes"] = self.max_sizes
        if self.steps is not None:
            fields["steps"] = self.steps
        if self.offsets is not None:
            fields["offsets"] = self.offsets
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


def _ssd_spec(
    image_size, maps, min_sizes, max_sizes, ratios, steps=None, clip=True,
    offsets=None,
):
    return AnchorSpec(
        image_size=image_size,
        feature_map_sizes=tuple(maps),
        min_sizes=tuple(min_sizes),
        max_sizes=None if max_sizes is None else tuple(max_sizes),
        aspect_ratios=tuple(tuple(r) for r in ratios),
        steps=None if steps is None else tuple(steps),
        clip=clip,
        offsets=None if offsets is None else tuple(offsets),
    )


def _scaled(sizes, factor):
    return [round(s * factor, 4) for s in sizes]


_SSD300_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
_SSD512_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]]
_SSD300_VOC_SIZES = [30, 60, 111, 162, 213, 264, 315]
_SSD300_COCO_SIZES = [21, 45, 99, 153, 207, 261, 315]
_SSD512_VOC_SIZES = [35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6]
_SSD512_COCO_SIZES = [20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72]

# Caffe's PriorBox reads its sizes as int (`int min_size_ = min_sizes_[s]`), so
# the DSSD scripts' fractional sizes (321 * 20 % = 64.2, ...) act truncated.
_DSSD321_SIZES = [32, 64, 121, 179, 237, 295, 353]  # 10 %, then 20..110 % by 18
_DSSD513_SIZES = [20, 51, 138, 225, 312, 400, 487, 574]  # 4 %, 10 %, then 27..112 % by 17
_DSSD_RATIOS = [1.6, 2, 3]  # the paper's k-means ratios

PRESETS = {
    # The SSD authors' VOC and COCO settings as ssd.pytorch has them (clipped
    # w/h; the Caffe SSD does not clip, which changes 134 SSD300 anchors).
    "ssd300": _ssd_spec(
        300, [38, 19, 10, 5, 3, 1], _SSD300_VOC_SIZES[:-1], _SSD300_VOC_SIZES[1:],
        _SSD300_RATIOS, steps=[8, 16, 32, 64, 100, 300],
    ),
    "ssd300_coco": _ssd_spec(
        300, [38, 19, 10, 5, 3, 1], _SSD300_COCO_SIZES[:-1], _SSD300_COCO_SIZES[1:],
        _SSD300_RATIOS, steps=[8, 16, 32, 64, 100, 300],
    ),
    # torchvision's `ssd300_vgg16` (`DefaultBoxGenerator` with scales 0.07, 0.15,
    # 0.33, ..., 1.05 = the COCO sizes / 300, the same ratios and steps), which
    # clamps only w, h: 114 anchors of the 10x10 map differ from ssd300_coco's.
    "ssd300_torchvision": _ssd_spec(
        300, [38, 19, 10, 5, 3, 1], _SSD300_COCO_SIZES[:-1], _SSD300_COCO_SIZES[1:],
        _SSD300_RATIOS, steps=[8, 16, 32, 64, 100, 300], clip="wh",
    ),
    "ssd512": _ssd_spec(
        512, [64, 32, 16, 8, 4, 2, 1], _SSD512_VOC_SIZES[:-1], _SSD512_VOC_SIZES[1:],
        _SSD512_RATIOS, steps=[8, 16, 32, 64, 128, 256, 512],
    ),
    "ssd512_coco": _ssd_spec(
        512, [64, 32, 16, 8, 4, 2, 1], _SSD512_COCO_SIZES[:-1], _SSD512_COCO_SIZES[1:],
        _SSD512_RATIOS, steps=[8, 16, 32, 64, 128, 256, 512],
    ),
    # FSSD (lzx1413/PytorchSSD `data/config.py`, VOC_300/512 and COCO_300/512):
    # SSD's sizes and steps with ratios {2, 3} on all but the last two maps of
    # 300 (last two of 512): 6 anchors per location there, 4 elsewhere. Clipped.
    "fssd300": _ssd_spec(
        300, [38, 19, 10, 5, 3, 1], _SSD300_VOC_SIZES[:-1], _SSD300_VOC_SIZES[1:],
        [[2, 3]] * 4 + [[2]] * 2, steps=[8, 16, 32, 64, 100, 300],
    ),
    "fssd300_coco": _ssd_spec(
        300, [38, 19, 10, 5, 3, 1], _SSD300_COCO_SIZES[:-1], _SSD300_COCO_SIZES[1:],
        [[2, 3]] * 4 + [[2]] * 2, steps=[8, 16, 32, 64, 100, 300],
    ),
    "fssd512": _ssd_spec(
        512, [64, 32, 16, 8, 4, 2, 1], _SSD512_VOC_SIZES[:-1], _SSD512_VOC_SIZES[1:],
        [[2, 3]] * 5 + [[2]] * 2, steps=[8, 16, 32, 64, 128, 256, 512],
    ),
    "fssd512_coco": _ssd_spec(
        512, [64, 32, 16, 8, 4, 2, 1], _SSD512_COCO_SIZES[:-1], _SSD512_COCO_SIZES[1:],
        [[2, 3]] * 5 + [[2]] * 2, steps=[8, 16, 32, 64, 128, 256, 512],
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
    # RefineDet (Zhang et al. 2018; sfzhang15/RefineDet's Caffe scripts): one
    # scale of 4x the stride per map, ratios {1/2, 1, 2}, no large square, not
    # clipped (clipping would change 50 RefineDet320 anchors).
    "refinedet320": _ssd_spec(
        320, [40, 20, 10, 5], [32, 64, 128, 256], None, [[2]] * 4,
        steps=[8, 16, 32, 64], clip=False,
    ),
    "refinedet512": _ssd_spec(
        512, [64, 32, 16, 8], [32, 64, 128, 256], None, [[2]] * 4,
        steps=[8, 16, 32, 64], clip=False,
    ),
    # DSSD (Fu et al. 2017), the official Caffe scripts (chengyangfu/caffe, branch
    # dssd): `ssd_pascal_resnet_deconv_321.py` (VOC) and
    # `ssd_coco_resnet_deconv_513.py` (COCO, the only 513 script). Sizes from a
    # 20-95 % (321) / 10-95 % (513) scale range, 8 anchors per location, not
    # clipped. `offsets` are the scripts' `starts`: the receptive-field centre
    # of each map's first cell, in pixels.
    "dssd321": _ssd_spec(
        321, [40, 20, 10, 5, 3, 1], _DSSD321_SIZES[:-1], _DSSD321_SIZES[1:],
        [_DSSD_RATIOS] * 6, steps=[8, 16, 32, 64, 64, 321], clip=False,
        offsets=[2.5, 2.5, 10.5, 26.5, 90.5, 160.5],
    ),
    "dssd513": _ssd_spec(
        513, [64, 32, 16, 8, 4, 2, 1], _DSSD513_SIZES[:-1], _DSSD513_SIZES[1:],
        [_DSSD_RATIOS] * 7, steps=[8, 16, 32, 64, 128, 256, 513], clip=False,
        offsets=[2.5, 2.5, 10.5, 26.5, 58.5, 122.5, 256.5],
    ),
}


def get_anchor_spec(name_or_spec: Union[str, AnchorSpec]) -> AnchorSpec:
    """Returns the `AnchorSpec` of a preset name, or the spec itself."""
    if isinstance(name_or_spec, AnchorSpec):
        return name_or_spec
    try:
        return PRESETS[name_or_spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown anchor preset {name_or_spec!r}; available: {sorted(PRESETS)}."
        ) from None


def get_anchors(name_or_spec: Union[str, AnchorSpec]) -> np.ndarray:
    """Priors of a preset name or `AnchorSpec`.

    Returns:
        float32 ``(A, 4)`` relative ``[cx, cy, w, h]``, in the order described in
        the module docstring, clipped to ``[0, 1]`` as ``spec.clip`` says.
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
        if spec.offsets is None:
            centres = (np.arange(f, dtype=np.float64) + 0.5) * step / size
        else:
            centres = (spec.offsets[k] + np.arange(f, dtype=np.float64) * step) / size
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        wh = np.asarray(shapes, dtype=np.float64)  # (k, 2)
        grid = np.empty((f, f, len(shapes), 4), dtype=np.float64)
        grid[..., 0] = cx[:, :, None]
        grid[..., 1] = cy[:, :, None]
        grid[..., 2:] = wh[None, None]
        per_map.append(grid.reshape(-1, 4))
    anchors = np.concatenate(per_map, axis=0)
    if spec.clip == "wh":
        anchors[:, 2:] = np.clip(anchors[:, 2:], 0.0, 1.0)
    elif spec.clip:
        anchors = np.clip(anchors, 0.0, 1.0)
    return anchors.astype(np.float32)


def anchors_per_map(name_or_spec: Union[str, AnchorSpec]) -> Sequence[int]:
    """Number of anchors contributed by each feature map, in order."""
    spec = get_anchor_spec(name_or_spec)
    return [
        f * f * k
        for f, k in zip(spec.feature_map_sizes, spec.anchors_per_location())
    ]


def anchor_spec_to_config(name_or_spec: str | AnchorSpec) -> dict:
    """A preset name or `AnchorSpec` -> plain JSON-able dict of the spec.

    Layers, losses and models that hold a spec store this in their ``get_config``.
    """
    return dataclasses.asdict(get_anchor_spec(name_or_spec))


def anchor_spec_from_config(config: dict | str | AnchorSpec) -> AnchorSpec:
    """Inverse of `anchor_spec_to_config` (also accepts a name or a spec)."""
    if not isinstance(config, dict):
        return get_anchor_spec(config)

    def as_tuple(value):
        if isinstance(value, (list, tuple)):
            return tuple(as_tuple(v) for v in value)
        return value

    return AnchorSpec(**{k: as_tuple(v) for k, v in config.items()})

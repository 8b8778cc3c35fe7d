"""Trained weights of the PyTorch reference SSDs, tensor for tensor onto our layers.

torchvision's ``ssd300_vgg16`` and ssd.pytorch's SSD300 are our ``ssd300``
layer for layer (35,641,826 parameters at 91 classes, 71 tensors); their
state dicts name the same tensors differently:

| ours | torchvision | ssd.pytorch |
|---|---|---|
| ``block1_conv1`` .. ``block4_conv3`` | ``backbone.features.{0,2,..,21}`` | ``vgg.{0,2,..,21}`` |
| ``block5_conv1`` .. ``block5_conv3`` | ``backbone.extra.0.{1,3,5}`` | ``vgg.{24,26,28}`` |
| ``fc6``, ``fc7`` | ``backbone.extra.0.7.{1,3}`` | ``vgg.{31,33}`` |
| ``conv4_3_norm`` | ``backbone.scale_weight`` | ``L2Norm.weight`` |
| ``conv{6+j}_{1,2}`` | ``backbone.extra.{1+j}.{0,2}`` | ``extras.{2j,2j+1}`` |
| ``head_i_pred`` | ``head.regression_head.module_list.i`` + ``head.classification_head.module_list.i`` | ``loc.i`` + ``conf.i`` |

Conv kernels go from PyTorch's ``(O, I, H, W)`` to Keras's ``(H, W, I, O)``.
Our predictor is one conv per map whose ``k * (4 + C + 1)`` channels hold,
anchor by anchor, 4 offsets then ``C + 1`` logits (`heads.multibox_head`);
the references have a box conv (``4k``) and a class conv (``(C + 1) k``)
with the same anchor-major order, so the two interleave per anchor. The
offsets are the same ``[dcx, dcy, dw, dh]`` with variances 0.1, 0.2
(torchvision's box coder weights 10, 10, 5, 5), logit 0 is the background in
all three, so torchvision's label ``L`` is our class ``L - 1``. Both
references take their input as the conv1_1 weights expect (torchvision RGB,
ssd.pytorch BGR), so the converted network keeps the reference's
normalisation (`layers.NORMALIZATIONS`) and no channel is flipped.

The mapping (`map_state_dict`) is a plain function of ``name -> numpy
array``; only `read_state_dict` of a ``.pth`` needs PyTorch (the optional
``torch`` extra), and an ``.npz`` of the same names needs nothing.
"""

import dataclasses
import os
from typing import Mapping, Sequence

import keras
import numpy as np

# Our VGG16 conv layers in order, and the index of each in the references'
# ``nn.Sequential`` / ``nn.ModuleList`` of VGG16 layers (convs, ReLUs, pools).
VGG_LAYERS = (
    "block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2",
    "block3_conv1", "block3_conv2", "block3_conv3",
    "block4_conv1", "block4_conv2", "block4_conv3",
    "block5_conv1", "block5_conv2", "block5_conv3", "fc6", "fc7",
)
_VGG_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33)
# torchvision's SSD cuts VGG16 after conv4_3's ReLU; conv5_x and fc6/fc7 are its
# first extra block: [pool4, conv5_1, relu, conv5_2, relu, conv5_3, relu, fc]
# with fc = [pool5, fc6, relu, fc7, relu].
_TORCHVISION_SSD_VGG = tuple(f"backbone.features.{i}" for i in _VGG_INDICES[:10]) + (
    "backbone.extra.0.1", "backbone.extra.0.3", "backbone.extra.0.5",
    "backbone.extra.0.7.1", "backbone.extra.0.7.3",
)


@dataclasses.dataclass(frozen=True)
class ReferenceSource:
    """A reference implementation whose SSD checkpoints we read.

    Attributes:
        name: ``"torchvision"`` or ``"ssd.pytorch"``.
        normalization: the `layers.NORMALIZATIONS` name it was trained with.
        ssd_vgg: its names of our `VGG_LAYERS` in an SSD state dict.
        l2norm: its name of our ``conv4_3_norm`` scale.
        backbone_vgg: its names of `VGG_LAYERS` in its VGG16 backbone file
            (only the ones the file has).
        backbone_unused: tensors of that file that SSD does not use.
    """

    name: str
    normalization: str
    ssd_vgg: tuple[str, ...]
    l2norm: str
    backbone_vgg: tuple[str, ...]
    backbone_unused: tuple[str, ...] = ()

    def anchors(self, num_classes: int) -> str:
        """The anchor preset its SSD300 of ``num_classes`` foreground classes uses."""
        if self.name == TORCHVISION:
            return "ssd300_torchvision"
        # ssd.pytorch: `self.cfg = (coco, voc)[num_classes == 21]`.
        return "ssd300" if num_classes == 20 else "ssd300_coco"

    def extra(self, block: int, conv: int) -> str:
        """Its name of our ``conv{6 + block}_{conv + 1}`` (``conv`` 0 or 1)."""
        if self.name == TORCHVISION:
            return f"backbone.extra.{block + 1}.{2 * conv}"
        return f"extras.{2 * block + conv}"

    def head(self, i: int) -> tuple[str, str]:
        """Its ``(box conv, class conv)`` names of our ``head_{i}_pred``."""
        if self.name == TORCHVISION:
            return (
                f"head.regression_head.module_list.{i}",
                f"head.classification_head.module_list.{i}",
            )
        return f"loc.{i}", f"conf.{i}"


TORCHVISION = "torchvision"
SSD_PYTORCH = "ssd.pytorch"
SOURCES = {
    # torchvision's VGG16_Weights.IMAGENET1K_FEATURES (vgg16_features-amdegroot-
    # 88682ab5.pth) is a whole VGG16 whose classifier holds no values: only
    # features.* count, and SSD initialises fc6/fc7 itself.
    TORCHVISION: ReferenceSource(
        TORCHVISION, "torchvision", _TORCHVISION_SSD_VGG, "backbone.scale_weight",
        tuple(f"features.{i}" for i in _VGG_INDICES[:13]),
        tuple(f"classifier.{i}.{t}" for i in (0, 3, 6) for t in ("weight", "bias")),
    ),
    # ssd.pytorch's vgg16_reducedfc.pth is its `vgg` ModuleList up to fc7.
    SSD_PYTORCH: ReferenceSource(
        SSD_PYTORCH, "ssd.pytorch", tuple(f"vgg.{i}" for i in _VGG_INDICES),
        "L2Norm.weight", tuple(str(i) for i in _VGG_INDICES),
    ),
}

# torchvision's COCO label map (`torchvision.models._meta._COCO_CATEGORIES`
# without "__background__"): label L is COCO category id L, so our class
# L - 1; the ids COCO left out are "N/A" there, numbered here so that the names
# stay unique (labels.txt needs that).
_COCO_NAMES_WITH_GAPS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", None, "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear",
    "zebra", "giraffe", None, "backpack", "umbrella", None, None, "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", None, "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", None, "dining table",
    None, None, "toilet", None, "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", None,
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
TORCHVISION_COCO_NAMES = tuple(
    name or f"N/A ({category})"
    for category, name in enumerate(_COCO_NAMES_WITH_GAPS, start=1)
)
# The 80 COCO classes in category-id order (ssd.pytorch's COCO label map).
COCO_NAMES = tuple(name for name in _COCO_NAMES_WITH_GAPS if name)


class ReferenceWeightsError(ValueError):
    """A state dict that is not the reference's layout; the message names the tensor."""


StateDict = Mapping[str, np.ndarray]


def is_state_dict_file(path: object) -> bool:
    """Whether ``path`` names a PyTorch state dict (``.pth``/``.pt``) or its ``.npz``."""
    return isinstance(path, str) and path.lower().endswith((".pth", ".pt", ".npz"))


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """``name -> float32 array`` of a ``.pth`` state dict, or of an ``.npz`` of one.

    A ``.pth`` is read with ``torch.load(..., weights_only=True)`` (no pickled
    code runs); PyTorch is the optional extra ``pip install -e '.[torch]'``.

    Raises:
        ReferenceWeightsError: naming ``path``: missing, unreadable, not a flat
            ``name -> tensor`` mapping, or PyTorch absent for a ``.pth``.
    """
    if not os.path.isfile(path):
        raise ReferenceWeightsError(f"{path} does not exist.")
    if path.lower().endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name].astype(np.float32) for name in archive.files}
        except (OSError, ValueError) as error:
            raise ReferenceWeightsError(f"{path} is not a readable .npz: {error}") from error
    try:
        import torch
    except ImportError:
        raise ReferenceWeightsError(
            f"Reading {path} needs PyTorch: pip install -e '.[torch]' (or convert it to "
            ".npz where PyTorch is: numpy.savez(FILE, **{k: v.numpy() for k, v in "
            "state_dict.items()}))."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise ReferenceWeightsError(f"{path} is not a readable PyTorch file: {error}") from error
    if not isinstance(state, Mapping):
        raise ReferenceWeightsError(
            f"{path} holds a {type(state).__name__}, not a state dict (name -> tensor)."
        )
    arrays = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ReferenceWeightsError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; a "
                "training checkpoint keeps the model's state dict under one of its keys: "
                "save that one (torch.save(checkpoint['model'], FILE))."
            )
        arrays[name] = value.detach().to(torch.float32).numpy()
    return arrays


@dataclasses.dataclass(frozen=True)
class _Conv:
    """One reference conv (``torch + ".weight"``, ``".bias"``) -> our layer ``layer``."""

    layer: str
    torch: str


@dataclasses.dataclass(frozen=True)
class _Scale:
    """The reference's L2Norm scale ``torch`` -> our ``layer``'s one weight."""

    layer: str
    torch: str


@dataclasses.dataclass(frozen=True)
class _Head:
    """A reference box conv and class conv -> our interleaved ``layer``."""

    layer: str
    box: str
    cls: str


def ssd_layout(source: ReferenceSource, num_extra_blocks: int, num_heads: int) -> list:
    """The reference state dict of an SSD with that many extra blocks and maps.

    Returns:
        `_Conv`, `_Scale` and `_Head` entries, in state-dict order.
    """
    layout = [_Conv(layer, name) for layer, name in zip(VGG_LAYERS, source.ssd_vgg)]
    layout.append(_Scale("conv4_3_norm", source.l2norm))
    for block in range(num_extra_blocks):
        for conv in (0, 1):
            layout.append(_Conv(f"conv{6 + block}_{conv + 1}", source.extra(block, conv)))
    layout += [_Head(f"head_{i}_pred", *source.head(i)) for i in range(num_heads)]
    return layout


def _oihw(kernel_shape: Sequence[int]) -> tuple[int, ...]:
    h, w, i, o = kernel_shape
    return (o, i, h, w)


def expected_shapes(
    layout: Sequence, target: Mapping[str, Sequence[tuple]], num_classes: int
) -> dict[str, tuple[int, ...]]:
    """``reference tensor name -> shape`` our layers ``target`` need.

    Args:
        layout: from `ssd_layout` (or the backbone's `_Conv` list).
        target: ``layer name -> shapes of its weights`` (Keras's order:
            kernel, bias; ``(scale,)`` for the L2Norm).
        num_classes: foreground classes ``C`` of our heads.
    """
    shapes = {}
    for entry in layout:
        if isinstance(entry, _Scale):
            shapes[entry.torch] = tuple(target[entry.layer][0])
        elif isinstance(entry, _Conv):
            kernel, bias = target[entry.layer]
            shapes[f"{entry.torch}.weight"] = _oihw(kernel)
            shapes[f"{entry.torch}.bias"] = tuple(bias)
        else:
            kernel, _ = target[entry.layer]
            anchors = kernel[3] // (4 + num_classes + 1)
            o, i, h, w = _oihw(kernel)
            for name, depth in ((entry.box, 4), (entry.cls, num_classes + 1)):
                shapes[f"{name}.weight"] = (depth * anchors, i, h, w)
                shapes[f"{name}.bias"] = (depth * anchors,)
    return shapes


def check_tensors(
    state: StateDict,
    expected: Mapping[str, tuple],
    what: str,
    unused: Sequence[str] = (),
) -> None:
    """Every expected tensor there with its shape, and nothing else but ``unused``.

    Raises:
        ReferenceWeightsError: one line naming ``what`` (the file and layout) and
            the first missing, mis-shaped or unexpected tensor.
    """
    for name, shape in expected.items():
        if name not in state:
            raise ReferenceWeightsError(f"{what}: tensor {name!r} is missing.")
        if tuple(state[name].shape) != tuple(shape):
            raise ReferenceWeightsError(
                f"{what}: tensor {name!r} has shape {tuple(state[name].shape)}; the "
                f"layout needs {tuple(shape)}."
            )
    unexpected = [name for name in state if name not in expected and name not in unused]
    if unexpected:
        raise ReferenceWeightsError(
            f"{what}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all; "
            "renamed, or another network?)."
        )


def _hwio(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(kernel, (2, 3, 1, 0)))


def map_state_dict(
    layout: Sequence, state: StateDict, num_classes: int
) -> dict[str, list[np.ndarray]]:
    """``layer name -> weights`` (Keras order and layout) from a checked state dict.

    Args:
        layout: from `ssd_layout` (or the backbone's `_Conv` list).
        state: ``name -> array`` that passed `check_tensors`.
        num_classes: foreground classes ``C`` of the heads.
    """
    weights = {}
    for entry in layout:
        if isinstance(entry, _Scale):
            weights[entry.layer] = [state[entry.torch]]
        elif isinstance(entry, _Conv):
            weights[entry.layer] = [
                _hwio(state[f"{entry.torch}.weight"]), state[f"{entry.torch}.bias"]
            ]
        else:
            box_w, box_b = state[f"{entry.box}.weight"], state[f"{entry.box}.bias"]
            cls_w, cls_b = state[f"{entry.cls}.weight"], state[f"{entry.cls}.bias"]
            anchors = box_b.shape[0] // 4
            # (anchors, 4 | C + 1, ...) side by side -> anchor-major [4 box, C + 1 class].
            kernel = np.concatenate(
                [box_w.reshape(anchors, 4, *box_w.shape[1:]),
                 cls_w.reshape(anchors, num_classes + 1, *cls_w.shape[1:])], axis=1
            ).reshape(-1, *box_w.shape[1:])
            bias = np.concatenate(
                [box_b.reshape(anchors, 4), cls_b.reshape(anchors, num_classes + 1)], axis=1
            ).reshape(-1)
            weights[entry.layer] = [_hwio(kernel), bias]
    return weights


def _target_shapes(model: keras.Model) -> dict[str, list[tuple]]:
    return {
        layer.name: [tuple(w.shape) for w in layer.weights]
        for layer in model.layers if layer.weights
    }


def _count(model: keras.Model, pattern: str, start: int = 0) -> int:
    """How many layers ``pattern.format(start)``, ``pattern.format(start + 1)``, ... exist."""
    names = {layer.name for layer in model.layers}
    count = 0
    while pattern.format(start + count) in names:
        count += 1
    return count


def reference_num_classes(source: ReferenceSource, state: StateDict, what: str) -> int:
    """The foreground classes ``C`` of an SSD state dict (its first class conv has
    ``(C + 1) * 4`` outputs: 4 anchors a location on conv4_3, in both references)."""
    _, cls = source.head(0)
    name = f"{cls}.bias"
    if name not in state:
        raise ReferenceWeightsError(f"{what}: tensor {name!r} is missing.")
    outputs = state[name].shape[0]
    if outputs % 4 or outputs < 8:
        raise ReferenceWeightsError(
            f"{what}: tensor {name!r} has {outputs} outputs, not 4 anchors x (C + 1) classes."
        )
    return outputs // 4 - 1


def load_reference_weights(
    model: keras.Model, source: ReferenceSource, state: StateDict, what: str
) -> None:
    """Sets every weight of the SSD ``model`` from the reference state dict ``state``.

    Checked first, tensor by tensor (`check_tensors`): nothing is set unless the
    state dict is exactly the reference's layout for ``model``.

    Args:
        model: an SSD300/SSD512 `Detector` (`ssd.ssd_vgg16`).
        source: `SOURCES` entry whose layout ``state`` has.
        what: how errors name ``state`` (its file and layout).
    """
    # SSD300 has the extra blocks conv6..conv9 and 6 maps, SSD512 conv6..conv10 and 7.
    layout = ssd_layout(
        source, _count(model, "conv{}_1", start=6), _count(model, "head_{}_pred")
    )
    expected = expected_shapes(layout, _target_shapes(model), model.num_classes)
    check_tensors(state, expected, what)
    for layer, weights in map_state_dict(layout, state, model.num_classes).items():
        model.get_layer(layer).set_weights(weights)


@dataclasses.dataclass(frozen=True)
class ReferenceBackbone:
    """A reference's VGG16 backbone file, read (see `read_vgg16_backbone`)."""

    path: str
    source: ReferenceSource
    state: StateDict


def _backbone_layout(source: ReferenceSource) -> list[_Conv]:
    return [_Conv(layer, name) for layer, name in zip(VGG_LAYERS, source.backbone_vgg)]


# (kernel HWIO, bias) of the reduced-fc VGG16's convs.
_VGG_SHAPES = {
    layer: ((k, k, cin, cout), cout)
    for layer, k, cin, cout in zip(
        VGG_LAYERS,
        (3,) * 14 + (1,),
        (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 1024),
        (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024),
    )
}


def read_vgg16_backbone(path: str) -> ReferenceBackbone:
    """Reads torchvision's or ssd.pytorch's reduced-fc VGG16 backbone file.

    torchvision's ``vgg16_features-amdegroot-88682ab5.pth`` (a VGG16 state dict,
    ``features.N``; RGB) or ssd.pytorch's ``vgg16_reducedfc.pth`` (its ``vgg``
    ModuleList, ``N``; BGR), told apart by their first tensor's name.

    Raises:
        ReferenceWeightsError: not one of the two, naming the file and tensor.
    """
    state = read_state_dict(path)
    source = SOURCES[TORCHVISION if "features.0.weight" in state else SSD_PYTORCH]
    layout = _backbone_layout(source)
    shapes = {}
    for entry in layout:
        kernel, bias = _VGG_SHAPES[entry.layer]
        shapes[f"{entry.torch}.weight"] = _oihw(kernel)
        shapes[f"{entry.torch}.bias"] = (bias,)
    check_tensors(
        state, shapes, f"{path} ({source.name}'s VGG16 backbone layout)",
        source.backbone_unused,
    )
    return ReferenceBackbone(path, source, state)


def load_vgg16_backbone(model: keras.Model, backbone: ReferenceBackbone) -> list[str]:
    """Sets ``model``'s VGG16 layers from a `read_vgg16_backbone` file.

    Returns:
        The names of the layers set (conv1_1..conv5_3, and fc6/fc7 from
        ssd.pytorch's file, which has them).
    """
    layout = _backbone_layout(backbone.source)
    for layer, weights in map_state_dict(layout, backbone.state, 0).items():
        model.get_layer(layer).set_weights(weights)
    return [entry.layer for entry in layout]

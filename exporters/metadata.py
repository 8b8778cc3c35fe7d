"""What a TFLite file says about itself: output names, a SignatureDef, TFLite Model Metadata.

`describe_detector` rewrites a converted detector so that clients which read
the standard TFLite conventions (MediaPipe Tasks' ``ObjectDetector``, the TFLite
Task Library, Android Studio's model binding, ``get_signature_runner``) take it
as it is:

- the output tensors are named (``detection_boxes``...) and their tensor
  indices ascend in output order (MediaPipe's own metadata writer pairs
  location/category/score/count with the outputs sorted by tensor index);
- a SignatureDef ``serving_default`` maps ``images`` and the output names to
  the tensors;
- the ``TFLITE_METADATA`` buffer (the TFLite Model Metadata schema, bindings in
  `exporters.vendor`) describes the image input (RGB, uint8 ``0..255``, fed as
  is), the outputs (for the post-processed layout: the detection output group
  location/category/score/number of detections, boxes ``[ymin, xmin, ymax,
  xmax]`` as ratios of the image) and embeds ``labels.txt`` as the category
  labels; like every metadata writer, the label file is appended to the
  flatbuffer as an uncompressed zip archive (the interpreter ignores it).
"""

import io
import zipfile
from typing import Optional, Sequence

from ai_edge_litert import schema_py_generated as schema

from exporters import common, flatbuffer
from exporters.vendor import metadata_schema_py_generated as meta

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
# The `Model.metadata` entry clients look for, and the identifiers of the buffers.
METADATA_BUFFER_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
# The oldest metadata parser that reads every field written here: the newest of
# them, the output tensor group, came with schema 1.2.0 (the schema's history).
MIN_PARSER_VERSION = "1.2.0"
# `BoundingBoxProperties.index`: the positions of left, top, right, bottom in a
# `[ymin, xmin, ymax, xmax]` box.
_YXYX_INDEX = [1, 0, 3, 2]
# What MediaPipe's ObjectDetector reports per detection (see the module docstring).
CATEGORY_LABELS = ("names", "indices")


def describe_detector(
    model: bytes,
    class_names: Optional[Sequence[str]],
    name: str,
    description: str,
    version: str,
    license: str,
    postprocess: bool = True,
    category_labels: str = "names",
) -> bytes:
    """``model`` with named outputs, a SignatureDef and TFLite Model Metadata.

    Args:
        model: a converted detector: one uint8 input ``(1, S, S, 3)``; outputs
            ``detection_boxes (1, K, 4)``, ``detection_classes (1, K)``,
            ``detection_scores (1, K)``, ``num_detections (1,)`` in this order
            (``postprocess=True``), or ``raw_detection_boxes (1, A, 4)``,
            ``raw_detection_scores (1, A, C)`` (``postprocess=False``).
        class_names: embedded as the labels of the class ids (category output,
            or the class axis of the raw scores); ``None``: no label file.
        name, description, version, license: the model metadata's fields.
        postprocess: which of the two layouts ``model`` has.
        category_labels: one of `CATEGORY_LABELS`, for the post-processed layout:
            ``"names"`` makes ``labels.txt`` the category tensor's value labels,
            ``"indices"`` the model's own associated file (MediaPipe then
            reports the class index instead of the name).

    Returns:
        The new ``.tflite`` bytes (flatbuffer, then the label file as a zip).
    """
    if category_labels not in CATEGORY_LABELS:
        raise ValueError(f"category_labels must be one of {CATEGORY_LABELS}; got {category_labels!r}.")
    model_t = flatbuffer.unpack(model)
    outputs = common.DETECTION_KEYS if postprocess else common.RAW_DETECTION_KEYS
    name_tensors(model_t, outputs)
    by_index = postprocess and category_labels == "indices"
    labels = _label_file(class_names, postprocess, by_index)
    metadata = meta.ModelMetadataT()
    metadata.name = name
    metadata.description = description
    metadata.version = version
    metadata.author = "keras-scb"
    metadata.license = license
    metadata.minParserVersion = MIN_PARSER_VERSION
    subgraph = meta.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [_image_metadata()]
    if by_index and labels is not None:
        metadata.associatedFiles = [labels]
    if postprocess:
        subgraph.outputTensorMetadata = _detection_metadata(None if by_index else labels)
        group = meta.TensorGroupT()
        group.name = "detection_result"
        group.tensorNames = [m.name for m in subgraph.outputTensorMetadata[:3]]
        subgraph.outputTensorGroups = [group]
    else:
        subgraph.outputTensorMetadata = _raw_metadata(labels)
    metadata.subgraphMetadata = [subgraph]
    _attach(model_t, flatbuffer.finish(metadata.Pack, METADATA_IDENTIFIER))
    packed = flatbuffer.pack(model_t)
    if labels is None:
        return packed
    return packed + _zip({common.LABELS_FILE: "".join(f"{n}\n" for n in class_names)})


def name_tensors(model_t, outputs: Sequence[str]) -> None:
    """Names the input `INPUT_NAME` and the outputs ``outputs`` (in output order),
    renumbers the output tensors so that their indices ascend in that order, and
    sets the SignatureDef `SIGNATURE_KEY` (replacing any other)."""
    (graph,) = model_t.subgraphs
    if len(graph.outputs) != len(outputs) or len(graph.inputs) != 1:
        raise ValueError(
            f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs; expected 1 and "
            f"{len(outputs)} ({', '.join(outputs)})."
        )
    _sort_output_indices(graph)
    graph.tensors[graph.inputs[0]].name = INPUT_NAME
    for index, output in zip(graph.outputs, outputs):
        graph.tensors[index].name = output
    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map(INPUT_NAME, graph.inputs[0])]
    signature.outputs = [_tensor_map(n, i) for n, i in zip(outputs, graph.outputs)]
    model_t.signatureDefs = [signature]


def _sort_output_indices(graph) -> None:
    """Swaps the output tensors among their own indices so that output ``k``
    gets the ``k``-th smallest; every reference to a tensor is renumbered."""
    old = [int(i) for i in graph.outputs]
    new = dict(zip(old, sorted(old)))
    if all(o == n for o, n in new.items()):
        return
    source = {n: o for o, n in new.items()}
    graph.tensors = [graph.tensors[source.get(i, i)] for i in range(len(graph.tensors))]

    def renumber(indices):
        return None if indices is None else [new.get(int(i), int(i)) for i in indices]

    for op in graph.operators:
        op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
        op.intermediates = renumber(op.intermediates)
    graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)


def _tensor_map(name: str, index: int):
    tensor_map = schema.TensorMapT()
    tensor_map.name = name
    tensor_map.tensorIndex = int(index)
    return tensor_map


def _label_file(class_names, postprocess: bool, by_index: bool = False):
    if not class_names:
        return None
    label_file = meta.AssociatedFileT()
    label_file.name = common.LABELS_FILE
    label_file.description = "Class names, one a line, in class id order (id 0 first)."
    # Category ids index the file's lines; raw scores have one column a line; as
    # a description of the model, no client maps the ids to names.
    if by_index:
        label_file.type = meta.AssociatedFileType.DESCRIPTIONS
    elif postprocess:
        label_file.type = meta.AssociatedFileType.TENSOR_VALUE_LABELS
    else:
        label_file.type = meta.AssociatedFileType.TENSOR_AXIS_LABELS
    return label_file


def _tensor(name: str, description: str, properties_type=None, properties=None, stats=None):
    tensor = meta.TensorMetadataT()
    tensor.name = name
    tensor.description = description
    tensor.content = meta.ContentT()
    tensor.content.contentPropertiesType = (
        meta.ContentProperties.FeatureProperties if properties_type is None else properties_type
    )
    tensor.content.contentProperties = (
        meta.FeaturePropertiesT() if properties is None else properties
    )
    if stats is not None:
        tensor.stats = meta.StatsT()
        tensor.stats.min, tensor.stats.max = [stats[0]], [stats[1]]
    return tensor


def _image_metadata():
    properties = meta.ImagePropertiesT()
    properties.colorSpace = meta.ColorSpaceType.RGB
    image = _tensor(
        "image",
        "RGB image, uint8 0..255, resized to the model's square input size (aspect ratio "
        "not kept, as in training); the pixels are fed as they are.",
        meta.ContentProperties.ImageProperties,
        properties,
        stats=(0.0, 255.0),
    )
    # Identity normalization: the network takes the uint8 values as floats in [0, 255].
    normalization = meta.ProcessUnitT()
    normalization.optionsType = meta.ProcessUnitOptions.NormalizationOptions
    normalization.options = meta.NormalizationOptionsT()
    normalization.options.mean, normalization.options.std = [0.0], [1.0]
    image.processUnits = [normalization]
    return image


def _boxes(name: str, description: str):
    properties = meta.BoundingBoxPropertiesT()
    properties.index = list(_YXYX_INDEX)
    properties.type = meta.BoundingBoxType.BOUNDARIES
    properties.coordinateType = meta.CoordinateType.RATIO
    return _tensor(name, description, meta.ContentProperties.BoundingBoxProperties, properties)


def _detection_metadata(labels):
    """The four outputs of the detection output group, MediaPipe's names for them."""
    # The content is indexed by the dimensions up to 2: one box (1, K, 4), one
    # class or score (1, K) per detection (the schema's own detection example).
    per_detection = meta.ValueRangeT()
    per_detection.min = per_detection.max = 2
    location = _boxes(
        "location", "Detected boxes [ymin, xmin, ymax, xmax] as ratios of the image size."
    )
    category = _tensor("category", "Class ids (0-based, as float), lines of the label file.")
    score = _tensor("score", "Softmax probability of the class, descending.", stats=(0.0, 1.0))
    if labels is not None:
        category.associatedFiles = [labels]
    for tensor in (location, category, score):
        tensor.content.range = per_detection
    count = _tensor("number of detections", "Valid detections; the rows after them are zeros.")
    return [location, category, score, count]


def _raw_metadata(labels):
    boxes = _boxes(
        "raw_detection_boxes",
        "Every anchor's decoded box [ymin, xmin, ymax, xmax] as ratios, before NMS.",
    )
    scores = _tensor(
        "raw_detection_scores",
        "Every anchor's softmax probability of each class (background left out), before NMS.",
        stats=(0.0, 1.0),
    )
    if labels is not None:
        scores.associatedFiles = [labels]
    return [boxes, scores]


def _attach(model_t, metadata: bytes) -> None:
    """Stores ``metadata`` in a new buffer named `METADATA_BUFFER_NAME`."""
    buffer = schema.BufferT()
    buffer.data = metadata
    model_t.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_BUFFER_NAME
    entry.buffer = len(model_t.buffers) - 1
    model_t.metadata = [
        m for m in (model_t.metadata or []) if m.name.decode() != METADATA_BUFFER_NAME
    ] + [entry]


def _zip(files: dict) -> bytes:
    """An uncompressed zip of ``files`` (name -> text), with fixed timestamps
    (the same export gives the same bytes)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for name, text in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), text)
    return archive.getvalue()


def read_metadata(model: bytes):
    """The `ModelMetadataT` of a ``.tflite`` file's bytes, or ``None``."""
    model_fb = schema.Model.GetRootAsModel(model, 0)
    for i in range(model_fb.MetadataLength()):
        entry = model_fb.Metadata(i)
        if entry.Name().decode() == METADATA_BUFFER_NAME:
            data = model_fb.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            return meta.ModelMetadataT.InitFromPackedBuf(data, 0)
    return None


def associated_files(model: bytes) -> dict:
    """``{name: bytes}`` of the files zipped after the flatbuffer."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as zf:
            return {name: zf.read(name) for name in zf.namelist()}
    except zipfile.BadZipFile:
        return {}


def embedded_class_names(path: str):
    """The label map embedded in a ``.tflite`` file (its associated ``labels.txt``),
    a tuple of names, or None if it has none.

    Raises:
        LabelMapError: the embedded file is malformed (naming ``path``).
    """
    from keras_scb import label_map

    with open(path, "rb") as f:
        text = associated_files(f.read()).get(common.LABELS_FILE)
    if text is None:
        return None
    names = tuple(line.strip() for line in text.decode("utf-8", "replace").splitlines()
                  if line.strip())
    if not names:
        raise label_map.LabelMapError(f"{path}: its embedded {common.LABELS_FILE} is empty.")
    return names

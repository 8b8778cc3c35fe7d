"""Tiny detectors and images for the exporter and predict tests."""

import keras
import numpy as np
import tensorflow as tf

NUM_CLASSES = 3
# Low enough that the random detector below gives tens of detections per image.
DECODER = {"score_threshold": 0.3, "max_detections": 50}


def _batch_norms(model):
    return [
        layer for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def images(count, seed=0, size=300):
    """uint8 ``(count, size, size, 3)`` synthetic images (shapes on smooth backgrounds)."""
    from keras_scb.data import make_synthetic

    dataset = make_synthetic(count, image_size=(size, size), seed=seed)
    return np.stack([tf.io.decode_jpeg(r.image).numpy() for r in dataset.records])


def make_detector(seed=0):
    """MobileNetV2-SSDLite 300 at width 0.35, random weights, BatchNorm calibrated.

    At initialisation the BatchNorm statistics (mean 0, variance 1) let the
    activations vanish, so every score is ``1 / (C + 1)``. Setting each
    BatchNorm's statistics to those of a batch of images gives logits of unit
    scale that vary over the image: scores up to ~0.98, as from a trained model.
    Such a random network is, however, far more sensitive to weight rounding
    than a trained one (fp16 weights change its raw outputs by ~9% rms).
    """
    from keras_scb.models import build_detector

    keras.utils.set_random_seed(seed)
    detector = build_detector(
        "mobilenetv2-ssdlite300", NUM_CLASSES, width_multiplier=0.35, backbone_weights=None
    )
    norms = _batch_norms(detector)
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    detector(images(4, seed=100 + seed).astype("float32"), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    return detector


def save_checkpoint(detector, path, loss=None):
    """``model.save`` of ``detector``, compiled with ``loss`` first if given."""
    if loss is not None:
        detector.compile(optimizer="sgd", loss=loss)
    detector.save(path)
    return path



def keras_detections(detector, images, **decoder_kwargs):
    """The Keras inference model's (`build_inference_model`) detections as the
    exports give them (`exporters.common.export_outputs`)."""
    from exporters.common import export_outputs
    from keras_scb.postprocess import build_inference_model

    model = build_inference_model(detector, **{**DECODER, **decoder_kwargs})
    out = model.predict(np.asarray(images, np.float32), verbose=0)
    return {k: np.asarray(v) for k, v in export_outputs(out).items()}

"""Test helper: a detector's heads produce its anchors in the preset's order."""

import keras
import numpy as np

from keras_scb.anchors import anchors_per_map


def assert_heads_follow_anchor_order(model):
    """Head i's map size, anchors per location and output rows are the preset's map i.

    Overwrites the heads' weights (zero kernels, bias ``i + 1`` on head ``i``).
    """
    spec = model.anchor_spec
    depth = model.output_shape[-1]
    per_map = anchors_per_map(spec)
    assert model.output_shape[1] == sum(per_map) == len(model.anchors)
    for i, (size, k) in enumerate(zip(spec.feature_map_sizes, spec.anchors_per_location())):
        head = model.get_layer(f"head_{i}_pred")
        assert head.output.shape[1:] == (size, size, k * depth)
        kernel, bias = head.get_weights()
        head.set_weights([np.zeros_like(kernel), np.full_like(bias, i + 1)])
    out = keras.ops.convert_to_numpy(model(np.zeros((1,) + model.input_shape[1:], np.float32)))
    expected = np.repeat(np.arange(1, len(per_map) + 1), per_map)
    np.testing.assert_array_equal(out[0, :, 0], expected)

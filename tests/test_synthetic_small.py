"""The synthetic small-object testbed's options (issue 15): the fraction of objects
under 32^2 px at the network input, and clutter that is not an object."""

import numpy as np
import pytest

from keras_scb.data import synthetic


@pytest.mark.parametrize("fraction", [0.6, 0.25])
def test_small_fraction_at_the_network_input(fraction):
    # 96x96 images for a 300 px input: 32 px there is 10.24 px here.
    dataset = synthetic.make_synthetic(
        300, image_size=(96, 96), size_range=(4, 48), objects_per_image=(2, 6),
        small_fraction=fraction, input_size=300, seed=5,
    )
    objects = sum(len(r.classes) for r in dataset.records)
    assert objects > 800
    # Binomial sd for ~1000 objects is 0.016; crowded images drop large objects a
    # little more often, which the upper tolerance allows for.
    got = synthetic.small_object_fraction(dataset, 300)
    assert fraction - 0.04 <= got <= fraction + 0.05, got
    # Without the option the same size range gives another fraction: the option works.
    plain = synthetic.make_synthetic(
        100, image_size=(96, 96), size_range=(4, 48), objects_per_image=(2, 6), seed=5)
    assert abs(synthetic.small_object_fraction(plain, 300) - fraction) > 0.1


def test_clutter_paints_distractors_but_adds_no_objects():
    options = dict(image_size=(96, 96), size_range=(8, 24), objects_per_image=(1, 4), seed=2)
    plain = synthetic.make_synthetic(12, **options)
    cluttered = synthetic.make_synthetic(12, clutter=(2, 4), **options)
    for a, b in zip(plain.records, cluttered.records):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.classes, b.classes)
    assert sum(a.image != b.image for a, b in zip(plain.records, cluttered.records)) == 12


@pytest.mark.parametrize("kwargs, message", [
    ({"small_fraction": 1.5}, "small_fraction must be in"),
    ({"clutter": (3, 1)}, "clutter must be"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.make_synthetic(1, **kwargs)

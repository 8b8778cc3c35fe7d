"""The COCO and VOC readers over field types (issue 25): a property test.

COCO ``iscrowd``, image ``id``, ``height``/``width`` and VOC ``ImageSets``
entries are drawn from many types (strings of numbers, floats, booleans, None,
lists, paths). A value of the wrong type is never read as something else: the
field is refused with a `BadInputError` naming the file and field (or, with
the skip policy, its box or image is dropped and counted), never a crowd box
from ``"0"``, never boxes pooled under a repeated or coerced id, never a file
outside the dataset root. Derandomized and bounded.
"""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_scb.data import coco, records, voc

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
VALUES = st.one_of(
    st.sampled_from([0, 1, 2, -1, True, False, None, "0", "1", "", 0.0, 1.0, 0.5, [], {}, [0]]),
    st.integers(-3, 3), st.text(max_size=3),
)


def _read(folder, image, annotations, **policy):
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": [image], "annotations": annotations,
                   "categories": [{"id": 1, "name": "cat"}]}, f)
    return coco.read_coco(path, folder, verify_images=False, **policy)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("coco"))


@SETTINGS
@given(iscrowd=VALUES)
def test_coco_iscrowd_is_0_or_1_or_refused(folder, iscrowd):
    image = {"id": 1, "file_name": "a.jpg", "height": 50, "width": 50}
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": iscrowd}
    valid = iscrowd in (0, 1) and isinstance(iscrowd, (int, bool)) and not isinstance(iscrowd, float)
    if not valid:
        with pytest.raises(records.BadInputError, match="instances.json: malformed iscrowd"):
            _read(folder, image, [box])
        data = _read(folder, image, [box], bad_objects="skip")
        assert len(data.records[0].classes) == 0
        return
    data = _read(folder, image, [box])
    assert list(data.records[0].difficult) == [bool(iscrowd)]


@SETTINGS
@given(image_id=VALUES)
def test_coco_image_id_must_be_an_int(folder, image_id):
    image = {"id": image_id, "file_name": "a.jpg", "height": 50, "width": 50}
    box = {"id": 1, "image_id": image_id, "category_id": 1, "bbox": [5, 5, 10, 10]}
    if isinstance(image_id, (list, dict)):  # pycocotools cannot index it: the whole file
        with pytest.raises(records.BadInputError, match="instances.json: not a COCO instances"):
            _read(folder, image, [box], bad_files="skip", bad_objects="skip")
        return
    data = _read(folder, image, [box], bad_files="skip", bad_objects="skip")
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        assert [r.image_id for r in data.records] == [image_id]
        assert len(data.records[0].classes) == 1
    else:
        assert len(data) == 0 and data.issues  # skipped, and counted


@SETTINGS
@given(entry=st.one_of(
    st.sampled_from(["../x", "/abs", "a/b", "a\\b", "..", ".", "ok", "a..b"]),
    st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=6)))
def test_voc_imagesets_entries_are_plain_names(tmp_path_factory, entry):
    root = tmp_path_factory.mktemp("voc")
    os.makedirs(root / "ImageSets" / "Main")
    (root / "ImageSets" / "Main" / "train.txt").write_text(entry + "\n", encoding="utf-8")
    plain = "/" not in entry and "\\" not in entry and entry not in (".", "..") \
        and not os.path.isabs(entry)
    try:
        voc.read_voc([str(root)], ["train"], ("cat",), bad_files="skip")
    except records.BadInputError as error:
        assert not plain and "train.txt, line 1" in str(error)
        return
    except (FileNotFoundError, ValueError) as error:  # a plain name with no annotation
        assert plain, error
        return
    assert plain

"""Every paper config, dry-run on a tiny dataset laid out like the real one.

The layouts are the datasets as their archives extract: ``data/VOCdevkit/VOC2007``
(trainval, test) and ``data/VOCdevkit/VOC2012`` (trainval only: no public test
split), ``data/coco/annotations/instances_{train,val,test-dev}2017.json`` with
their image folders. Each config is read with its own flags, in a folder holding
that layout, so a wrong split, anchor preset, class count, schedule or
initialisation flag fails here.

Default suite (fast): parse, load both splits, check the classes, the reference
schedule and loss, the anchor preset named, and that ``--backbone_weights`` resolves
to the expected Keras ImageNet file (a stand-in file in a temporary
``KERAS_HOME``; nothing is built). Slow suite: the config's own command line
trains 2 steps and evaluates, with ``--backbone_weights=none`` (the 528 MB VGG16
and 171 MB ResNet-101 files are not here) and batch size, steps and epochs
overridden down; the built detector's anchors are checked against the preset.
"""

import dataclasses
import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "table*.cfg")))

# The paper's experiments: Table 1 (SSD300, each weighting; its uniform and scb
# runs are Table 2's SSD300 rows), Table 2 (FSSD300, RefineDet320; Tables 3-4 are
# the Table 2 runs' evaluation), Table 5 (COCO; Tables 6-9 are its evaluation).
EXPECTED_CONFIGS = sorted(
    [f"table1_ssd300_voc0712_{w}" for w in ("uniform", "inverse_log", "inverse_sqrt", "inverse", "scb")]
    + [f"table2_{m}_voc0712_{a}" for m, arms in (("fssd300", ("multibox", "scb")),
                                                ("refinedet320", ("multibox", "scb_arm")))
       for a in arms]
    + [f"table5_{m}_coco_{a}" for m in ("ssd300", "ssd512", "fssd300", "fssd512", "dssd321", "dssd513")
       for a in ("multibox", "scb")]
)


@dataclasses.dataclass(frozen=True)
class Reference:
    """The original implementation's schedule and data handling (cited in the configs)."""

    iterations: int
    decay_steps: tuple
    learning_rate: float
    warmup_steps: int
    keep_difficult: bool
    batch_size: int = 32


REFERENCES = {
    # ssd.pytorch train.py + data/config.py `voc` (= Caffe ssd_pascal.py); drops difficult boxes.
    ("ssd", "voc"): Reference(120_000, (80_000, 100_000), 1e-3, 0, False),
    # PytorchSSD train_test.py: 300 epochs of 16551 // 32, decay at 150/200/250, 1 warm-up epoch.
    ("fssd", "voc"): Reference(155_100, (77_550, 103_400, 129_250), 4e-3, 517, True),
    # RefineDet VGG16_VOC2007_320.py (train_on_diff_gt = True).
    ("refinedet", "voc"): Reference(120_000, (80_000, 100_000), 1e-3, 0, True),
    # Caffe ssd_coco.py = ssd.pytorch `coco`; Caffe drops crowd boxes (use_difficult_gt false).
    ("ssd", "coco"): Reference(400_000, (280_000, 360_000), 1e-3, 0, False),
    # PytorchSSD -d COCO: epochs of 118287 // 32, decay at 90/120/140, stop at 150;
    # its COCODetection keeps crowd boxes (flagged difficult here).
    ("fssd", "coco"): Reference(554_400, (332_640, 443_520, 517_440), 4e-3, 3696, True),
    # DSSD: one end-to-end run as long as its two Caffe stages (250k + 150k).
    ("dssd", "coco"): Reference(400_000, (280_000, 360_000), 1e-3, 0, False),
}

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# Images per split of the tiny layouts, and the split files each VOC year has.
IMAGES_PER_SPLIT = 4
VOC_YEARS = {"VOC2007": ("trainval", "test"), "VOC2012": ("trainval",)}
COCO_SPLITS = ("train2017", "val2017", "test2017")
# docs/reproduce.md's preparation of test-dev, run on the tiny layout as written there:
# the image-info file gets an explicit empty annotation list (a file without one is
# refused, lest a training split be read with no boxes) and the images folder the
# split's name.
TEST_DEV_PREPARATION = (
    """python -c "import json; d = json.load(open('annotations/image_info_test-dev2017.json')); """
    """d['annotations'] = []; json.dump(d, open('annotations/instances_test-dev2017.json', 'w'))"\n"""
    "ln -s test2017 test-dev2017\n"
)


def parse_name(path):
    """``tableN_<model>_<voc0712|coco>_<arm>`` -> (table, model, dataset, arm)."""
    table, model, data, arm = os.path.basename(path)[:-4].split("_", 3)
    return table, model, "voc" if data == "voc0712" else "coco", arm


def family(model):
    return model.rstrip("0123456789")


def expected_anchors(model, dataset):
    """The anchor preset a config must train with: the model's own, COCO's for SSD/FSSD."""
    from keras_scb.anchors import PRESETS

    name = f"{model}_coco" if dataset == "coco" and family(model) in ("ssd", "fssd") else model
    # FSSD has SSD's sizes; before FSSD's own presets exist it uses SSD's.
    return name if name in PRESETS else name.replace("fssd", "ssd")


def write_image(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def voc_objects(image_index):
    """Five objects an image, so every split of four images holds all 20 classes;
    the first object of each image is difficult."""
    for k in range(5):
        x1, y1 = 2 + 10 * k, 3 + 6 * k
        yield VOC_CLASSES[(5 * image_index + k) % 20], int(k == 0), (x1, y1, x1 + 12, y1 + 9)


def make_voc(root):
    """``root/VOCdevkit/VOC2007`` (trainval, test) and ``VOC2012`` (trainval)."""
    for year, splits in VOC_YEARS.items():
        base = os.path.join(root, "VOCdevkit", year)
        for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        for s, split in enumerate(splits):
            ids = [f"{year[-4:]}_{split}_{i:02d}" for i in range(IMAGES_PER_SPLIT)]
            with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w") as f:
                f.write("\n".join(ids) + "\n")
            for i, image_id in enumerate(ids):
                write_image(os.path.join(base, "JPEGImages", f"{image_id}.jpg"), 100 * s + i)
                objects = "".join(
                    f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
                    f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
                    "</bndbox></object>"
                    for name, difficult, (x1, y1, x2, y2) in voc_objects(i)
                )
                with open(os.path.join(base, "Annotations", f"{image_id}.xml"), "w") as f:
                    f.write(f"<annotation><size><width>64</width><height>48</height>"
                            f"<depth>3</depth></size>{objects}</annotation>")


def make_coco(root):
    """``root/coco/annotations/instances_{train,val}2017.json`` and the image folders
    as COCO's archives extract; test-dev's ``image_info_test-dev2017.json`` has no
    annotations, and is prepared as docs/reproduce.md says."""
    base = os.path.join(root, "coco")
    os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
    categories = [{"id": c, "name": f"category{c}", "supercategory": "thing"}
                  for c in COCO_CATEGORY_IDS]
    for s, split in enumerate(COCO_SPLITS):
        os.makedirs(os.path.join(base, split))
        images, annotations = [], []
        for i in range(IMAGES_PER_SPLIT):
            image_id = 1000 * s + i + 1
            file_name = f"{image_id:012d}.jpg"
            write_image(os.path.join(base, split, file_name), 10 * s + i)
            images.append({"id": image_id, "file_name": file_name, "width": 64, "height": 48})
            for k, category in enumerate(COCO_CATEGORY_IDS[i::IMAGES_PER_SPLIT][:3]):
                box = [2.0 + 15 * k, 3.0 + 10 * k, 12.0, 9.0]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": category, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0})
        content = {"images": images, "categories": categories}
        name = "image_info_test-dev2017" if split == "test2017" else f"instances_{split}"
        if split != "test2017":
            content["annotations"] = annotations
        with open(os.path.join(base, "annotations", f"{name}.json"), "w") as f:
            json.dump(content, f)
    subprocess.run(["bash", "-e", "-c", TEST_DEV_PREPARATION], cwd=base, check=True,
                   env=dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A folder holding ``data/`` laid out as the configs expect it."""
    root = tmp_path_factory.mktemp("paper_layout")
    make_voc(os.path.join(root, "data"))
    make_coco(os.path.join(root, "data"))
    return str(root)


@pytest.fixture
def train_config(request, data_root, monkeypatch):
    """The config's `TrainConfig`, read as ``keras_scb.train`` reads it, from ``data_root``."""
    from keras_scb.config import TrainConfig

    monkeypatch.chdir(data_root)
    return TrainConfig.from_flagfile(request.param)


def test_one_config_per_experiment_of_the_paper():
    assert [os.path.basename(c)[:-4] for c in CONFIGS] == EXPECTED_CONFIGS


@pytest.mark.parametrize("train_config", CONFIGS, indirect=True,
                         ids=[os.path.basename(c)[:-4] for c in CONFIGS])
def test_config_reads_its_splits_and_follows_its_reference(train_config, request):
    from keras_scb.anchors import get_anchor_spec

    config = train_config
    table, model, dataset, arm = parse_name(request.node.callspec.params["train_config"])
    assert (config.model.model, config.data.dataset) == (model, dataset)

    train = config.data.read_split(config.data.train_split)
    val = config.data.read_split(config.data.val_split)
    if dataset == "voc":
        # VOC07+12 trainval, then VOC07 test only.
        assert [r.name.split("_", 1)[0] for r in train.records] == ["2007"] * 4 + ["2012"] * 4
        assert all(r.name.startswith("2007_trainval") or r.name.startswith("2012_trainval")
                   for r in train.records)
        assert [r.name for r in val.records] == [f"2007_test_{i:02d}" for i in range(4)]
        assert train.class_names == val.class_names == VOC_CLASSES
    else:
        assert (config.data.train_split, config.data.val_split) == (("train2017",), "val2017")
        assert len(train.class_names) == len(val.class_names) == 80
        assert [r.image_id for r in val.records] == [1001, 1002, 1003, 1004]
        # Table 5's test-dev split, prepared as docs/reproduce.md says, for --results_json.
        test_dev = config.data.read_split("test-dev2017")
        assert (len(test_dev), test_dev.num_boxes()) == (4, 0)
    assert config.model.num_classes in (0, len(train.class_names))

    reference = REFERENCES[(family(model), dataset)]
    schedule, optimizer = config.schedule, config.optimizer
    iterations = schedule.steps_per_epoch * schedule.epochs
    assert (iterations, tuple(int(s) for s in schedule.lr_decay_steps)) == (
        reference.iterations, reference.decay_steps)
    assert (schedule.learning_rate, schedule.warmup_steps, schedule.batch_size,
            schedule.lr_schedule) == (
        pytest.approx(reference.learning_rate), reference.warmup_steps, reference.batch_size, "step")
    assert config.data.keep_difficult == reference.keep_difficult
    assert (optimizer.optimizer, optimizer.momentum, optimizer.weight_decay,
            optimizer.weight_decay_mode) == ("sgd", 0.9, 5e-4, "l2")
    assert config.runtime.eval_every == 0  # the test split never selects a checkpoint

    if family(model) == "refinedet":
        assert config.loss.loss == "refinedet"
        assert config.loss.scb_on == {"multibox": "none", "scb_arm": "arm"}[arm]
    elif arm in ("multibox", "uniform"):
        assert config.loss.loss == "multibox"
    else:
        assert config.loss.loss == "scb" and config.loss.weighting == arm
    if config.loss.loss != "multibox" and config.loss.scb_on != "none":
        assert (config.loss.alpha, config.loss.beta, config.loss.apply_to) == (
            1.0, 3.0, "classification")

    # The preset named (or the model's own, checked when built in the slow test).
    expected = expected_anchors(model, dataset)
    get_anchor_spec(expected)
    assert config.model.anchors in (None, expected)
    if config.model.anchors is None:
        assert expected in (model, model.replace("fssd", "ssd")), (model, expected)
    name = os.path.basename(request.node.callspec.params["train_config"])[:-4]
    assert config.runtime.model_dir == f"runs/{name}"


@pytest.mark.parametrize("train_config", CONFIGS, indirect=True,
                         ids=[os.path.basename(c)[:-4] for c in CONFIGS])
def test_initialisation_resolves_to_the_references_imagenet_file(
    train_config, tmp_path, monkeypatch
):
    """``--backbone_weights`` names the original's initialisation and finds Keras's file."""
    from keras_scb.models import backbones

    config = train_config
    assert config.model.backbone_weights == "imagenet"
    expected = (backbones.RESNET101_NO_TOP if family(config.model.model) == "dssd"
                else backbones.VGG16_WITH_TOP)
    assert backbones._IMAGENET_FILES[config.model.model] == expected
    # A stand-in for the real file, under its Keras name and with its checksum.
    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / expected.file_name).write_bytes(b"stand-in")
    stand_in = dataclasses.replace(expected, md5=hashlib.md5(b"stand-in").hexdigest())
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.setitem(backbones._IMAGENET_FILES, config.model.model, stand_in)
    config.model.check_backbone_weights()  # what train runs before reading data
    assert backbones.weights_path("imagenet", stand_in) == str(
        keras_home / "models" / expected.file_name)


def test_docs_prepare_test_dev_as_tested():
    with open(os.path.join(REPO, "docs", "reproduce.md")) as f:
        docs = f.read()
    for line in TEST_DEV_PREPARATION.splitlines():
        assert line in docs, line


def test_voc2012_has_no_test_split_so_plain_test_fails(data_root):
    """Why the configs name VOC2007/test: a plain 'test' is read from every root."""
    from keras_scb.data import voc

    roots = [os.path.join(data_root, "data", "VOCdevkit", y) for y in VOC_YEARS]
    with pytest.raises(FileNotFoundError, match="VOC2012.*test.txt"):
        voc.read_voc(roots, "test", VOC_CLASSES)
    assert len(voc.read_voc(roots, "VOC2007/test", VOC_CLASSES)) == 4
    assert len(voc.read_voc(roots, "trainval", VOC_CLASSES)) == 8
    with pytest.raises(FileNotFoundError, match="'VOC2010'.*none of the roots"):
        voc.read_voc(roots, "VOC2010/test", VOC_CLASSES)


def run_python(args, cwd, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c)[:-4] for c in CONFIGS])
def test_config_trains_two_steps_and_evaluates(config, data_root, tmp_path):
    """The config's own flags, with the initialisation overridden to none (no
    ImageNet files here) and batch, steps and epochs overridden down."""
    import keras

    from keras_scb.anchors import get_anchors

    table, model, dataset, arm = parse_name(config)
    run_dir = tmp_path / "run"
    result = run_python(
        ["-m", "keras_scb.train", f"--flagfile={config}", "--backbone_weights=none",
         "--batch_size=2", "--steps_per_epoch=2", "--epochs=1", "--eval_batch_size=2",
         "--verbose=2", f"--model_dir={run_dir}"],
        cwd=data_root,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(run_dir / "eval" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["checkpoint"] == "last.keras"
    with open(run_dir / "labels.txt") as f:
        labels = f.read().split()
    assert len(labels) == (20 if dataset == "voc" else 80)

    import keras_scb.models  # noqa: F401  (registers the detector classes)

    detector = keras.saving.load_model(run_dir / "last.keras", compile=False)
    assert detector.num_classes == len(labels)
    np.testing.assert_array_equal(
        get_anchors(detector.anchor_spec), get_anchors(expected_anchors(model, dataset)))
    if dataset == "coco" and arm == "scb" and model == "ssd300":
        # Table 5 is test-dev: the results file from the image-info-only split.
        results = tmp_path / "test-dev.json"
        out = run_python(
            ["-m", "keras_scb.evaluate", f"--checkpoint={run_dir / 'last.keras'}",
             "--dataset=coco", "--data_dir=data/coco", "--val_split=test-dev2017",
             f"--results_json={results}", f"--output_dir={tmp_path / 'test-dev'}"],
            cwd=data_root,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        with open(results) as f:
            rows = json.load(f)
        assert {r["image_id"] for r in rows} <= {2001, 2002, 2003, 2004}

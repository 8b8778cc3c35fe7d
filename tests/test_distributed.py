"""Training under tf.distribute gives the single-device result."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from test_train import REPO, TINY, assert_ok

# A small detector without BatchNorm (BatchNorm statistics are per replica under
# MirroredStrategy, as in every framework without SyncBatchNorm), trained two
# steps with SGD on the same global batch of BCCD images, on one device and on
# two logical CPU devices.
_MIRRORED = r"""
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import keras
from keras_scb.anchors import AnchorSpec
from keras_scb.data import load_bccd, training_pipeline
from keras_scb.losses import ScaleBalancedLoss
from keras_scb.models import Detector
from keras_scb.models.heads import ssd_head

SPEC = AnchorSpec(96, (12, 6), (16, 40), (40, 72), ((2,), (2, 3)))

def build():
    keras.utils.set_random_seed(3)
    images = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(images)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    y = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    out = ssd_head([x, y], SPEC, 3, bn_momentum=0.99)
    model = Detector(images, out, anchor_spec=SPEC, num_classes=3)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=ScaleBalancedLoss())
    return model

data = training_pipeline(load_bccd("test"), SPEC, batch_size=8, augment=None,
                         shuffle=False, seed=0)
x, y = next(iter(data))
x, y = x.numpy(), y.numpy()
batches = tf.data.Dataset.from_tensors((x, y)).repeat(2)

single = build()
single.fit(batches, epochs=1, verbose=0)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = build()
mirrored.fit(batches, epochs=1, verbose=0)
assert strategy.num_replicas_in_sync == 2
w1, w2 = single.get_weights(), mirrored.get_weights()
moved = max(float(np.abs(a - b).max()) for a, b in zip(w1, build().get_weights()))
print(json.dumps({
    "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)),
    "moved": moved,
    "positives_per_half": [int((y[:4, :, 4] > 0).sum()), int((y[4:, :, 4] > 0).sum())],
}))
"""


def test_mirrored_two_devices_same_weights_as_one():
    result = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True,
                            cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=600)
    assert_ok(result)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    a, b = out["positives_per_half"]
    assert a != b  # a per-replica normaliser would then change the gradients
    assert out["moved"] > 1e-3  # training did change the weights
    assert out["max_diff"] < 1e-5 * max(1.0, out["moved"]) + 1e-6, out


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_processes_agree(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        cmd = [sys.executable, "-m", "keras_scb.train", f"--model_dir={tmp_path}/worker{index}",
               *TINY, "--strategy=multi_worker", "--steps_per_epoch=3", "--batch_size=4"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=tf_config)
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
    import keras

    import keras_scb.models  # noqa: F401

    weights = [
        keras.saving.load_model(f"{tmp_path}/worker{i}/last.keras", compile=False).trainable_weights
        for i in range(2)
    ]
    for a, b in zip(*weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

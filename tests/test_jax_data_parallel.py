"""Data parallel under JAX (`keras.distribution.DataParallel`) gives the single-device result.

Runs in subprocesses with two host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``), or as two processes of
one CPU device each on localhost (``jax.distributed.initialize`` through
``keras.distribution.initialize``; JAX's CPU collectives use Gloo). The batches
put more ground truth on one device's half than on the other's, so a loss
normalised per device (rather than by the global positive count ``N``) would
differ.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {
    "KERAS_BACKEND": "jax",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}

_COMMON = r"""
import json
import jax
import numpy as np
import keras
from keras_scb.anchors import AnchorSpec, get_anchors
from keras_scb.matching import encode_targets

assert len(jax.devices()) == 2, jax.devices()
SPEC = AnchorSpec(96, (12, 6), (16, 40), (40, 72), ((2,), (2, 3)))
C = 3

def ground_truth(seed, batch=4, max_boxes=6):
    # Images 0-1 (first device) carry 6 boxes each, images 2-3 one each.
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 0.6, (batch, max_boxes, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.4, (batch, max_boxes, 2))], -1)
    classes = rng.integers(0, C, (batch, max_boxes))
    classes[batch // 2:, 1:] = -1
    return boxes.astype("float32"), classes.astype("int32")

def ssd_targets(boxes, classes):
    return np.asarray(encode_targets(boxes, classes, get_anchors(SPEC)))

def sharded(x):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    spec = jax.sharding.PartitionSpec("batch", *([None] * (x.ndim - 1)))
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
"""

_LOSSES = _COMMON + r"""
from keras_scb.losses import MultiBoxLoss, ScaleBalancedLoss
from keras_scb.refinedet_loss import RefineDetLoss

A = get_anchors(SPEC).shape[0]
out = {}
for seed in (0, 1):
    boxes, classes = ground_truth(seed)
    rng = np.random.default_rng(100 + seed)
    cases = {
        "scb": (ScaleBalancedLoss(), ssd_targets(boxes, classes), 4 + C + 1),
        "multibox": (MultiBoxLoss(), ssd_targets(boxes, classes), 4 + C + 1),
        "refinedet_scb_both": (
            RefineDetLoss(SPEC, arm_weighting="scb", odm_weighting="scb"),
            np.concatenate([boxes, classes[..., None].astype("float32")], -1),
            10 + C + 1,
        ),
    }
    for name, (loss, y_true, depth) in cases.items():
        y_pred = rng.normal(0, 1, (4, A, depth)).astype("float32")
        step = jax.jit(jax.value_and_grad(lambda p, t: loss(t, p)))
        value_1, grad_1 = step(jax.device_put(y_pred, jax.devices()[0]),
                               jax.device_put(y_true, jax.devices()[0]))
        value_2, grad_2 = step(sharded(y_pred), sharded(y_true))
        assert len(grad_2.sharding.device_set) == 2
        out[f"{name}/{seed}"] = [
            float(value_1), float(value_2),
            float(np.abs(np.asarray(grad_1) - np.asarray(grad_2)).max()),
            float(np.abs(np.asarray(grad_1)).max()),
        ]
print("RESULT" + json.dumps(out))
"""

_TOY = _COMMON + r"""
from keras_scb.losses import ScaleBalancedLoss
from keras_scb.models import Detector
from keras_scb.models.heads import ssd_head

def build():
    keras.utils.set_random_seed(3)
    images = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(images)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    y = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    model = Detector(images, ssd_head([x, y], SPEC, C, bn_momentum=0.99),
                     anchor_spec=SPEC, num_classes=C)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=ScaleBalancedLoss())
    return model

boxes, classes = ground_truth(0)
x = np.random.default_rng(5).uniform(0, 255, (4, 96, 96, 3)).astype("float32")
y = ssd_targets(boxes, classes)
x, y = np.concatenate([x, x]), np.concatenate([y, y])   # two steps of batch 4
"""

_FIT = _TOY + r"""
single = build()
initial = [w.copy() for w in single.get_weights()]
history_1 = single.fit(x, y, batch_size=4, shuffle=False, epochs=1, verbose=0).history
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
parallel = build()
history_2 = parallel.fit(x, y, batch_size=4, shuffle=False, epochs=1, verbose=0).history
kernel = parallel.trainable_variables[0].value
print("RESULT" + json.dumps({
    "loss": [history_1["loss"][-1], history_2["loss"][-1]],
    "max_weight_diff": max(float(np.abs(a - b).max())
                           for a, b in zip(single.get_weights(), parallel.get_weights())),
    "moved": max(float(np.abs(a - b).max()) for a, b in zip(initial, single.get_weights())),
    "replicated_on": len(kernel.sharding.device_set),
}))
"""

# One of two processes (one CPU device each): the same two global steps of batch 4
# as `_FIT`, each process feeding its half of every batch (images 2i, 2i + 1 of a
# step), then the weights of one device's run in the same process for comparison.
_PROCESS = r"""
import os, sys
import keras
keras.distribution.initialize(os.environ["JOB_ADDRESSES"], 2, int(os.environ["PROCESS_ID"]))
import jax
assert len(jax.devices()) == 2 and len(jax.local_devices()) == 1, jax.devices()
""" + _TOY + r"""
i = jax.process_index()
local = np.concatenate([np.arange(2 * i, 2 * i + 2), np.arange(4 + 2 * i, 4 + 2 * i + 2)])
# The arrays are this process's shard already (the CLI's tf.data pipeline is
# sharded by Keras instead: test_train_cli_two_processes_on_localhost).
keras.distribution.set_distribution(
    keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False))
parallel = build()
history = parallel.fit(x[local], y[local], batch_size=2, shuffle=False, epochs=1,
                       verbose=0).history
weights = [np.asarray(w) for w in parallel.get_weights()]
keras.distribution.set_distribution(None)
with jax.default_device(jax.local_devices()[0]):
    single = build()
    single.fit(x, y, batch_size=4, shuffle=False, epochs=1, verbose=0)
print("RESULT" + json.dumps({
    "process": i,
    "loss": history["loss"][-1],
    "max_weight_diff": max(float(np.abs(a - b).max())
                           for a, b in zip(single.get_weights(), weights)),
    "checksum": float(sum(np.abs(w).sum() for w in weights)),
}))
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def run_processes(command, env, timeout=600):
    """Starts ``command`` as processes 0 and 1 of a localhost JAX job; both must succeed."""
    port = free_port()
    procs = []
    for i in range(2):
        process_env = {
            **os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
            "TF_CPP_MIN_LOG_LEVEL": "2", "JOB_ADDRESSES": f"localhost:{port}",
            "PROCESS_ID": str(i), **env(i, port),
        }
        process_env.pop("XLA_FLAGS", None)
        procs.append(subprocess.Popen(command, env=process_env, cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        for proc in procs:
            proc.kill()
    return outputs


def run_script(script):
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **ENV},
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_losses_and_gradients_split_over_two_devices_equal_one_device():
    """SCB, MultiBox and the RefineDet loss: value and gradient to 1e-5 (N is global)."""
    results = run_script(_LOSSES)
    assert len(results) == 6
    for name, (value_1, value_2, grad_diff, grad_scale) in results.items():
        assert np.isfinite(value_1) and value_1 > 0, name
        assert abs(value_1 - value_2) <= 1e-5 * abs(value_1), (name, value_1, value_2)
        assert grad_diff <= 1e-5 * grad_scale, (name, grad_diff, grad_scale)


def test_fit_under_data_parallel_equals_single_device():
    """Two SGD steps (BatchNorm included: its statistics are global under jit) agree to 1e-5."""
    result = run_script(_FIT)
    assert result["replicated_on"] == 2
    assert result["moved"] > 1e-3  # the steps really trained
    assert abs(result["loss"][0] - result["loss"][1]) <= 1e-5 * abs(result["loss"][0])
    assert result["max_weight_diff"] <= 1e-5, result


@pytest.mark.slow
def test_train_cli_data_parallel(tmp_path):
    """`--strategy=data_parallel` trains through the CLI and writes a finite checkpoint."""
    command = [
        sys.executable, "-m", "keras_scb.train", "--strategy=data_parallel",
        f"--model_dir={tmp_path}", "--model=mobilenetv2-ssdlite300", "--width_multiplier=0.35",
        "--backbone_weights=none", "--dataset=synthetic", "--synthetic_images=8",
        "--batch_size=4", "--steps_per_epoch=2", "--epochs=1", "--nofinal_eval", "--verbose=2",
    ]
    done = subprocess.run(command, env={**os.environ, **ENV}, capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.exists(tmp_path / "last.keras")


def test_data_parallel_needs_jax_and_a_divisible_batch(tmp_path):
    base = [sys.executable, "-m", "keras_scb.train", "--strategy=data_parallel",
            f"--model_dir={tmp_path}", "--dataset=synthetic", "--backbone_weights=none"]
    tf_env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(base, env=tf_env, capture_output=True, text=True, cwd=REPO)
    assert done.returncode != 0
    assert "--strategy=data_parallel needs KERAS_BACKEND=jax" in done.stderr
    done = subprocess.run(base + ["--batch_size=3"], env={**os.environ, **ENV},
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode != 0
    assert "--batch_size=3 does not split over the 2 devices" in done.stderr


def test_two_processes_on_localhost_equal_one_device():
    """Multi-host JAX on one machine: two processes (one CPU device each) train the
    two global steps of `_FIT` from their halves of each batch; both end with the
    weights of one device trained on the whole batches, to 1e-5."""
    outputs = run_processes([sys.executable, "-c", _PROCESS], lambda i, port: {})
    results = [json.loads(next(l for l in out.splitlines() if l.startswith("RESULT"))[6:])
               for out in outputs]
    assert sorted(r["process"] for r in results) == [0, 1]
    for result in results:
        assert result["max_weight_diff"] <= 1e-5, result
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)


@pytest.mark.slow
def test_train_cli_two_processes_on_localhost(tmp_path):
    """`--strategy=data_parallel` as two localhost processes: each reads its shard of
    the pipeline, process 0 writes --model_dir, process 1 --model_dir/process_1,
    and both checkpoints hold the same weights."""
    from keras_scb.checkpoints import load_checkpoint

    command = [
        sys.executable, "-m", "keras_scb.train", "--strategy=data_parallel",
        f"--model_dir={tmp_path}", "--model=mobilenetv2-ssdlite300", "--width_multiplier=0.35",
        "--backbone_weights=none", "--dataset=synthetic", "--synthetic_images=8",
        "--batch_size=4", "--steps_per_epoch=2", "--epochs=1", "--nofinal_eval", "--verbose=2",
    ]

    def env(i, port):
        return {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
                "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": str(i)}

    run_processes(command, env, timeout=900)
    first = tmp_path / "last.keras"
    second = tmp_path / "process_1" / "last.keras"
    assert first.exists() and second.exists()
    weights = [load_checkpoint(path).get_weights() for path in (first, second)]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

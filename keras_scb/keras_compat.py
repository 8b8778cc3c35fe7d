"""The only place that uses private Keras (and TensorFlow) API, behind a version check.

Tested with Keras 3.15 (the pinned 3.15.x; any patch release of 3.15 is
accepted). On another version the private API may have moved or changed
meaning, so `check_keras_version` stops with a message saying so rather than
training wrongly. Everything else in the package uses public Keras API.
"""

import contextlib

TESTED_KERAS = ((3, 15),)  # (major, minor) releases whose private API is known to fit


def check_keras_version() -> None:
    """Raises `RuntimeError` naming the installed and tested Keras versions if they differ."""
    import keras

    version = keras.version()
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    if major_minor not in TESTED_KERAS:
        tested = ", ".join(f"{a}.{b}.x" for a, b in TESTED_KERAS)
        raise RuntimeError(
            f"keras_scb uses private Keras API (keras_scb/keras_compat.py) tested with Keras "
            f"{tested}; this is Keras {version}. Install a tested version "
            "(see constraints.txt) or update keras_compat.py."
        )


@contextlib.contextmanager
def multi_worker_fit(model, strategy, batch):
    """Context for ``model.fit`` under `tf.distribute.MultiWorkerMirroredStrategy`.

    Keras 3 builds metrics and optimizer state from a cross-worker mean of the
    first distributed batch, and reduces each step's scalar logs with a
    cross-worker mean over axis 0; both fail under this strategy
    (keras-team/keras#20585). Here the state is built from ``batch``, a local
    batch of the same shapes, and inside the context the logs are reduced over
    this worker's replicas only. Gradients are all-reduced over every worker as
    usual, so the weights stay identical on all workers; only the printed
    metrics are this worker's. On exit Keras's own functions are back.

    Args:
        model: a compiled Keras model.
        strategy: the `MultiWorkerMirroredStrategy` it was built under.
        batch: ``(x, y)`` of the training dataset.
    """
    check_keras_version()
    from keras.src.backend.tensorflow import trainer as tf_trainer

    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    original = tf_trainer._collective_all_reduce_multi_worker
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    tf_trainer._collective_all_reduce_multi_worker = lambda strategy: False
    try:
        yield
    finally:
        tf_trainer._collective_all_reduce_multi_worker = original
        del model._maybe_symbolic_build  # the instance attribute; the method is back


def tensorflow_graph_without_xla() -> bool:
    """True under the TensorFlow backend unless XLA compiles the current function.

    TensorFlow has no public way to ask; ``tf.function(jit_compile=True)`` (and
    so Keras's ``jit_compile``) traces inside an XLA control-flow context, which
    its private ``control_flow_util`` reports.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    graph = tf.compat.v1.get_default_graph()
    return not control_flow_util.GraphOrParentsInXlaContext(graph)

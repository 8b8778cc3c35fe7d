"""SGD with the weight decay of Caffe and PyTorch (registered for `.keras` loading).

Keras's ``weight_decay`` argument is *decoupled*: before each update it shrinks a
weight by ``lr * wd * w``, outside the momentum. Caffe's ``SGDSolver`` and
``torch.optim.SGD`` instead add ``wd * w`` to the gradient, which then goes through
the momentum: at momentum ``mu`` a constant pull is integrated into a velocity
``1 / (1 - mu)`` times larger, so the same ``wd = 5e-4`` decays weights about ten
times more at ``mu = 0.9`` than Keras's. The SSD-family references (Caffe SSD,
RefineDet, DSSD, ssd.pytorch, PytorchSSD) all use the coupled form.
"""

import re
from typing import Sequence

import keras
from keras import ops

# Variable names (regular expressions searched in ``variable.name``) that get no
# decay: Caffe's SSD gives biases ``decay_mult: 0``; BatchNorm's scale and shift
# have none either.
NO_DECAY_NAMES = ("bias", "gamma", "beta")


@keras.saving.register_keras_serializable(package="keras_scb")
class CoupledDecaySGD(keras.optimizers.SGD):
    """SGD with momentum whose weight decay is an L2 gradient term (Caffe, PyTorch).

    Each step, for a variable ``w`` with gradient ``g`` (after clipping):
    ``g' = g + l2 * w`` unless ``w`` is excluded, then Keras's SGD step
    ``v = momentum * v - lr * g'``, ``w = w + v`` (Caffe's update; PyTorch's is the
    same at a constant rate).

    Args:
        l2: decay coefficient (Caffe's ``weight_decay``), >= 0.
        no_decay_names: regular expressions; a variable whose ``name`` matches one
            is not decayed.
        **kwargs: `keras.optimizers.SGD` arguments except ``weight_decay``
            (which would add Keras's decoupled decay on top).
    """

    def __init__(
        self,
        l2: float = 5e-4,
        no_decay_names: Sequence[str] = NO_DECAY_NAMES,
        **kwargs,
    ):
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                "CoupledDecaySGD takes l2, not weight_decay (Keras's decoupled decay)."
            )
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0; got {l2}.")
        kwargs.pop("weight_decay", None)
        super().__init__(**kwargs)
        self.l2 = float(l2)
        self.no_decay_names = tuple(no_decay_names)
        self._no_decay = (
            re.compile("|".join(self.no_decay_names)) if self.no_decay_names else None
        )

    def decays(self, variable) -> bool:
        """Whether ``variable`` gets the L2 term."""
        return self.l2 > 0 and not (
            self._no_decay is not None and self._no_decay.search(variable.name)
        )

    def update_step(self, gradient, variable, learning_rate):
        if self.decays(variable):
            gradient = ops.add(
                ops.cast(gradient, variable.dtype),
                ops.multiply(ops.cast(self.l2, variable.dtype), variable),
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update(l2=self.l2, no_decay_names=list(self.no_decay_names))
        return config

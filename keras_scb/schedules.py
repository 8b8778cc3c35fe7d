"""The learning-rate schedule of the trainer (registered for `.keras` loading).

`keras_scb.models` imports this module, so a checkpoint saved with its optimizer
loads with ``import keras_scb.models`` alone.
"""

import keras


# Warm-up starts at this fraction of the rate (the step and cosine schedules alike).
WARMUP_FACTOR = 1.0 / 3


@keras.saving.register_keras_serializable(package="keras_scb")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``warmup_factor * lr`` then step decay (SSD's schedule).

    Args:
        learning_rate: base rate after warm-up.
        boundaries: steps at which the rate is multiplied by ``decay_factor``.
        warmup_steps: length of the linear warm-up (0 disables it).
    """

    def __init__(
        self,
        learning_rate,
        boundaries=(),
        decay_factor=0.1,
        warmup_steps=0,
        warmup_factor=WARMUP_FACTOR,
    ):
        self.learning_rate = float(learning_rate)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.decay_factor = float(decay_factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.learning_rate, "float32")
        for boundary in self.boundaries:
            rate = ops.where(step >= boundary, rate * self.decay_factor, rate)
        if self.warmup_steps > 0:
            progress = ops.minimum(step / self.warmup_steps, 1.0)
            rate = rate * (self.warmup_factor + (1.0 - self.warmup_factor) * progress)
        return rate

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "boundaries": list(self.boundaries),
            "decay_factor": self.decay_factor,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
        }

"""Schedules, optimizers (with weight decay) and EMA, built from config over optax."""

from resnet_flax.optim.ema import ema_update
from resnet_flax.optim.optimizers import (OPTIMIZER_DEFAULTS, build_optimizer, l2_penalty,
                                          weight_decay_mask)
from resnet_flax.optim.schedules import SCHEDULE_DEFAULTS, build_schedule, peak_learning_rate

__all__ = ['OPTIMIZER_DEFAULTS', 'SCHEDULE_DEFAULTS', 'build_optimizer', 'build_schedule',
           'ema_update', 'l2_penalty', 'peak_learning_rate', 'weight_decay_mask']

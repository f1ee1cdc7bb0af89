"""The model zoo: one `ResNet` module, its residual units, the name registry, layer paths."""

from resnet_flax.models.blocks import BasicBlock, BottleneckBlock
from resnet_flax.models.paths import UnitLayer, stage_of, unit_layer
from resnet_flax.models.registry import (MODEL_DEFAULTS, NAMES, create_model,
                                         default_image_size, init_variables, model_fields)
from resnet_flax.models.resnet import ResNet

__all__ = ['BasicBlock', 'BottleneckBlock', 'MODEL_DEFAULTS', 'NAMES', 'ResNet', 'create_model',
           'UnitLayer', 'default_image_size', 'init_variables', 'model_fields', 'stage_of',
           'unit_layer']

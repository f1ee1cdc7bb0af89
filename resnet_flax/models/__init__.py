"""The model zoo: one `ResNet` module, its residual units, and the name registry."""

from resnet_flax.models.blocks import BasicBlock, BottleneckBlock
from resnet_flax.models.registry import (MODEL_DEFAULTS, NAMES, create_model,
                                         default_image_size, model_fields)
from resnet_flax.models.resnet import ResNet, UnitLayer, unit_layer

__all__ = ['BasicBlock', 'BottleneckBlock', 'MODEL_DEFAULTS', 'NAMES', 'ResNet', 'create_model',
           'UnitLayer', 'default_image_size', 'model_fields', 'unit_layer']

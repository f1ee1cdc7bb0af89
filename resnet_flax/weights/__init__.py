"""Pretrained weights converted from other frameworks into resnet_flax variables.

`torchvision_import`, `timm_import` (both over `torch_state_dict`) and `keras_import` turn
another framework's weights into `params` and `batch_stats`; `export_checkpoint` writes them as
a run folder that evaluation, prediction and `config.init_from` read. The submodules import
their framework only when they need it.
"""

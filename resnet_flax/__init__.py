"""resnet_flax: exact residual networks in Flax, and the system that trains them.

Importing the package is cheap: TensorFlow, TFDS and TensorBoard are imported only by the
modules that need them.
"""

__version__ = '0.1.0'

"""The CIFAR ResNets of He et al. 2015 (Section 4.2) in PyTorch, the reference network of the
framework comparison (speed) and of the PyTorch training reference (accuracy):
`cifar_resnet(depth)` for depth 6n+2 (ResNet-20: n=3).

The network: a 3x3 conv with 16 filters, BatchNorm and ReLU; three stages of n basic units of
16, 32 and 64 filters (3x3 conv-BN-ReLU, 3x3 conv-BN, add, ReLU), the first unit of stages 2
and 3 with stride 2; option-A shortcuts (identity; where the shape changes, `x[:, :, ::2, ::2]`
with zero channels added, no parameters); global average pooling and a linear layer.
It has the parameter count of resnet_flax's `resnet20` (269,722 for 3-channel input).

torch is imported only by the processes that use this file (the framework comparison's torch
worker, `resnet_flax/tools/torch_steps.py`, and `resnet-flax torch-train`,
`resnet_flax/tools/torch_train.py`), never by the test process.
"""

import torch
from torch import nn
from torch.nn import functional as F


class OptionAShortcut(nn.Module):
  """Identity, or every second pixel and zero channels up to `out_channels` (no parameters)."""

  def __init__(self, in_channels: int, out_channels: int, stride: int):
    super().__init__()
    self.stride, self.extra = stride, out_channels - in_channels

  def forward(self, x):
    if self.stride > 1:
      x = x[:, :, ::self.stride, ::self.stride]
    if self.extra:
      x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
    return x


class BasicUnit(nn.Module):

  def __init__(self, in_channels: int, out_channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(out_channels)
    self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_channels)
    self.shortcut = OptionAShortcut(in_channels, out_channels, stride)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class CifarResNet(nn.Module):

  def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
    super().__init__()
    if (depth - 2) % 6:
      raise ValueError(f'a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110, ...), not {depth}')
    n = (depth - 2) // 6
    self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(16)
    units, channels = [], 16
    for stage, width in enumerate((16, 32, 64)):
      for i in range(n):
        units.append(BasicUnit(channels, width, 2 if stage and not i else 1))
        channels = width
    self.units = nn.Sequential(*units)
    self.fc = nn.Linear(64, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x):
    x = self.units(F.relu(self.bn(self.conv(x))))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(depth: int = 20, num_classes: int = 10) -> CifarResNet:
  return CifarResNet(depth, num_classes)

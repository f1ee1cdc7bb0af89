"""The papers' recipes (He et al. 2015 and 2016: CIFAR-10 and ImageNet ResNets, Imagenette)."""

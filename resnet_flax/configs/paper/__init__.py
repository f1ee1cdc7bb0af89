"""The papers' recipes: He et al. 2015 and 2016 (CIFAR-10 and ImageNet ResNets), Imagenette,
stochastic depth (Huang et al. 2016) and "ResNet strikes back" A3 (Wightman et al. 2021)."""

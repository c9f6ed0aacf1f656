"""Reference architectures: stand-ins for torchvision's AlexNet, VGG16 and ResNet18.

torchvision cannot be installed beside the CPU torch wheel used here, and no pretrained weights are
available offline, so these models copy torchvision's module structure, layer names, forward code
and parameter counts exactly, with random weights drawn from an explicit `key`. A layer name that
works here (``"features.10"``, ``"layer4.1.conv2"``, ``"classifier.6"``) works on the torchvision
model, and receptive-field tables published for the real networks apply unchanged.

The weights follow torchvision's init schemes (Kaiming-normal convs, BN weight 1 and bias 0), so
activations stay finite and input-dependent through the whole network; AlexNet, which torchvision
leaves at PyTorch's default init, gets the VGG scheme instead, since the default shrinks the signal
by about 6x per layer until the logits no longer depend on the input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._types import Key
from ._init import build, check_classes, default_linear, kaiming_conv, reset_batchnorm

__all__ = ["alexnet", "resnet18", "vgg16"]


class AlexNet(nn.Module):
    """torchvision's ``AlexNet`` (the one-GPU variant of Krizhevsky et al. 2012)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _vgg_layers(cfg: list[int | str]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv2d = nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1)
            layers += [conv2d, nn.ReLU(inplace=True)]
            in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's ``VGG`` (configuration "D" without batch norm is VGG16)."""

    def __init__(self, features: nn.Module, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``; its one ``self.relu`` module is called twice per forward."""

    expansion: int = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class ResNet(nn.Module):
    """torchvision's ``ResNet`` built from `BasicBlock` s (``[2, 2, 2, 2]`` is ResNet18)."""

    def __init__(self, layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def _vgg_init(module: nn.Module, rng: torch.Generator) -> None:
    """torchvision's VGG init: Kaiming-normal (fan_out) convs, N(0, 0.01) linears, zero biases."""
    if isinstance(module, nn.Conv2d):
        kaiming_conv(module, rng, "fan_out")
    elif isinstance(module, nn.Linear):
        with torch.no_grad():
            nn.init.normal_(module.weight, 0.0, 0.01, generator=rng)
            nn.init.zeros_(module.bias)


def _resnet_init(module: nn.Module, rng: torch.Generator) -> None:
    """torchvision's ResNet init: Kaiming-normal (fan_out) convs, BN (1, 0), default ``fc``."""
    if isinstance(module, nn.Conv2d):
        kaiming_conv(module, rng, "fan_out")
    elif isinstance(module, nn.BatchNorm2d):
        reset_batchnorm(module)
    elif isinstance(module, nn.Linear):
        default_linear(module, rng)


def alexnet(num_classes: int = 1000, *, key: Key = 0) -> nn.Module:
    """torchvision's AlexNet with random weights drawn from `key`, in eval mode.

    61,100,840 parameters for 1000 classes. Input ``[B, 3, H, W]`` with ``H, W >= 63``
    (224 in the paper), output ``[B, num_classes]``. Layer names are torchvision's: conv1..conv5
    are ``"features.0"``, ``".3"``, ``".6"``, ``".8"``, ``".10"``, pool5 is ``"features.12"``,
    fc6/fc7/fc8 are ``"classifier.1"``, ``".4"``, ``".6"``. `key` is an ``int`` seed or a
    ``torch.Generator``; the global random state is left alone.

    >>> import torch
    >>> from occlens import testing
    >>> model = testing.alexnet(key=0)
    >>> sum(p.numel() for p in model.parameters())
    61100840
    >>> model(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 1000])
    """
    classes = check_classes(num_classes, "alexnet")
    return build(lambda: AlexNet(classes), _vgg_init, key, "alexnet")


def vgg16(num_classes: int = 1000, *, key: Key = 0) -> nn.Module:
    """torchvision's VGG16 (no batch norm) with random weights drawn from `key`, in eval mode.

    138,357,544 parameters for 1000 classes. Input ``[B, 3, H, W]`` with ``H, W >= 32``, output
    ``[B, num_classes]``. Convs are ``"features.0"`` .. ``"features.28"``, the last pool is
    ``"features.30"``; fc6/fc7/fc8 are ``"classifier.0"``, ``".3"``, ``".6"``. `key` is an ``int``
    seed or a ``torch.Generator``; the global random state is left alone.

    >>> import torch
    >>> from occlens import testing
    >>> model = testing.vgg16(num_classes=10, key=0)
    >>> model(torch.rand(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """
    classes = check_classes(num_classes, "vgg16")
    return build(lambda: VGG(_vgg_layers(_VGG16), classes), _vgg_init, key, "vgg16")


def resnet18(num_classes: int = 1000, *, key: Key = 0) -> nn.Module:
    """torchvision's ResNet18 with random weights drawn from `key`, in eval mode.

    11,689,512 parameters for 1000 classes. Input ``[B, 3, H, W]`` with ``H, W >= 1``, output
    ``[B, num_classes]``. Names are torchvision's: ``"conv1"``, ``"bn1"``, ``"relu"``,
    ``"maxpool"``, ``"layer1"`` .. ``"layer4"`` of two ``BasicBlock`` s each (``"layer4.1.conv2"``,
    ``"layer2.0.downsample.0"``), ``"avgpool"``, ``"fc"``. Each block calls its one ``relu``
    module twice, as torchvision's does. Batch norms hold torchvision's initial state (weight 1,
    bias 0, running mean 0, running variance 1). `key` is an ``int`` seed or a
    ``torch.Generator``; the global random state is left alone.

    >>> import torch
    >>> from occlens import testing
    >>> model = testing.resnet18(key=0)
    >>> sum(p.numel() for p in model.parameters())
    11689512
    >>> model(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 1000])
    """
    classes = check_classes(num_classes, "resnet18")
    return build(lambda: ResNet([2, 2, 2, 2], classes), _resnet_init, key, "resnet18")

"""ConvNet-D, the small benchmark network of the dataset-distillation literature (DC, DM, MTT, RDED).

`depth` blocks of Conv3x3(width) -> norm -> ReLU -> AvgPool2d(2), then flatten -> Linear. The default
norm is GroupNorm(width, width), which the literature calls "instancenorm": it has no running statistics,
so a teacher behaves the same on one image as on a batch.

One deviation, so that every depth works on small images: a block stops pooling once its feature map
is 1x1 (ConvNet-5/6 on 28 or 32 px). At the sizes these depths were made for (128/256 px) nothing changes.
"""

from __future__ import annotations

from torch import Tensor, nn

NORMS = ("group", "instance", "batch", "none")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "instance":
        return nn.InstanceNorm2d(width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; known: {', '.join(NORMS)}")


class ConvNet(nn.Module):
    """ConvNet-D for square `image_size` inputs with `in_channels` channels.

    `features(x)` is the last feature map [N, width, s, s] and `classifier` the Linear over its
    flattening; `head(features)` finishes the forward pass. CAM relies on this split.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        depth: int = 3,
        width: int = 128,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1 or image_size < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError("depth, width, image_size, in_channels and num_classes must be >= 1")
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), _norm(norm, width), nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(nn.AvgPool2d(2))
                size //= 2
            channels = width
        self.body = nn.Sequential(*layers)
        self.feature_shape = (width, size, size)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def head(self, feats: Tensor) -> Tensor:
        return self.classifier(feats.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

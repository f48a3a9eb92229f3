"""CAM: exactness against brute force, localisation, normalization, and one forward pass per call."""

from __future__ import annotations

from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrrstore.errors import NrrError
from nrrstore.models import CamModel, ConvNet, ResNet, build_model


def _reference_post(raw: Tensor, size: int) -> Tensor:
    """Bilinear upsampling then per-image min-max, written independently of the library."""
    up = F.interpolate(raw[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    out = torch.zeros_like(up)
    for i, m in enumerate(up):
        if m.max() > m.min():
            out[i] = (m - m.min()) / (m.max() - m.min())
    return out


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_convnet_exact_cam_matches_brute_force() -> None:
    model = cast(ConvNet, build_model("convnet3", 5, 1, 28, seed=0).eval())
    x = torch.rand(4, 1, 28, 28)
    classes = torch.tensor([0, 3, 4, 3])
    logits, cam = CamModel(model).forward_with_cam(x, classes)
    with torch.no_grad():
        feats = model.features(x)
        weight, bias = model.classifier.weight, model.classifier.bias
        k, h, w = feats.shape[1:]
        raw = torch.zeros(4, h, w)
        for n in range(4):
            for i in range(h):
                for j in range(w):
                    idx = torch.arange(k) * h * w + i * w + j
                    raw[n, i, j] = (weight[classes[n], idx] * feats[n, :, i, j]).sum()
        assert torch.allclose(raw.sum((1, 2)) + bias[classes], model(x)[torch.arange(4), classes], atol=1e-4)
        assert torch.allclose(logits, model(x))
    assert cam.shape == (4, 28, 28)
    assert torch.allclose(cam, _reference_post(raw, 28), atol=1e-5)


def test_resnet_exact_cam_matches_brute_force_and_gradcam_identity() -> None:
    model = cast(ResNet, build_model("resnet18_cifar", 6, 3, 32, seed=0).eval())
    x = torch.rand(2, 3, 32, 32)
    classes = [5, 1]
    logits, cam = CamModel(model).forward_with_cam(x, classes)
    with torch.no_grad():
        feats = model.features(x)
        raw = torch.stack([cast(Tensor, sum(model.fc.weight[c, k] * feats[n, k] for k in range(feats.shape[1])))
                           for n, c in enumerate(classes)])
        assert torch.allclose(logits, model(x))
    assert torch.allclose(cam, _reference_post(raw, 32), atol=1e-4)
    # For pooling + linear heads Grad-CAM on the last block is ReLU(CAM) / (H*W): same map after min-max.
    grad_logits, grad_cam = CamModel(model, layer="layer4").forward_with_cam(x, classes)
    assert torch.allclose(grad_logits, logits, atol=1e-5)
    assert torch.allclose(grad_cam, _reference_post(F.relu(raw), 32), atol=1e-4)


def test_one_forward_pass_per_call() -> None:
    model = cast(ConvNet, build_model("convnet3", 3, 3, 32).eval())
    calls = _count_calls(model.body[0])
    logits, cam = CamModel(model).forward_with_cam(torch.rand(8, 3, 32, 32), 1)
    assert calls[0] == 1 and logits.shape == (8, 3) and cam.shape == (8, 32, 32)
    resnet = cast(ResNet, build_model("resnet18_cifar", 3, 3, 16).eval())
    calls = _count_calls(resnet.conv1)
    CamModel(resnet).cam(torch.rand(2, 3, 16, 16), [0, 2])
    assert calls[0] == 1


def test_values_in_unit_range_and_constant_map_is_zero() -> None:
    model = build_model("convnet3", 4, 3, 32, seed=2).eval()
    cam = CamModel(model).cam(torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0]))
    assert cam.min() >= 0 and cam.max() <= 1
    assert torch.allclose(cam.amin((1, 2)), torch.zeros(5)) and torch.allclose(cam.amax((1, 2)), torch.ones(5))
    deep = build_model("convnet6", 4, 1, 28).eval()  # 1x1 feature map: nothing to localise
    assert torch.equal(CamModel(deep).cam(torch.rand(2, 1, 28, 28), 0), torch.zeros(2, 28, 28))


def test_flatten_head_localises_class_evidence() -> None:
    """A ConvNet whose class-2 weights live only on the top-left cells: its CAM peaks in that quadrant."""
    model = cast(ConvNet, build_model("convnet3", 3, 3, 32, seed=0).eval())  # 4x4 feature grid
    with torch.no_grad():
        weight = model.classifier.weight.view(3, 128, 4, 4)
        weight[2] = 0
        weight[2, :, :2, :2] = torch.rand(128, 2, 2)
    cam = CamModel(model).cam(torch.rand(3, 3, 32, 32), 2)
    for m in cam:
        row, col = divmod(int(m.argmax()), 32)
        assert row < 16 and col < 16
        # Pixels sampled only from cells outside the top-left 2x2 (source coordinate >= 2) are exactly 0.
        assert m[20:, :].max() == 0 and m[:, 20:].max() == 0 and m[:16, :16].max() == 1


class _BlobNet(nn.Module):
    """Channel c of the 1x1-conv features is the evidence for class c; nrrstore's features/head protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
            self.fc.bias.zero_()

    def features(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(torch.relu(self.conv(x)), 4)

    def head(self, feats: Tensor) -> Tensor:
        return self.fc(feats.mean((2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@pytest.mark.parametrize(("quadrant", "cls"), [((0, 0), 0), ((1, 1), 0), ((0, 1), 1), ((1, 0), 1)])
def test_input_evidence_in_one_quadrant(quadrant: tuple[int, int], cls: int) -> None:
    x = torch.rand(1, 2, 32, 32) * 0.1
    r, c = quadrant[0] * 16, quadrant[1] * 16
    x[0, cls, r + 4:r + 12, c + 4:c + 12] = 1.0
    logits, cam = CamModel(_BlobNet()).forward_with_cam(x, cls)
    assert int(logits.argmax()) == cls
    row, col = divmod(int(cam[0].argmax()), 32)
    assert (row // 16, col // 16) == quadrant


class _TorchvisionLike(nn.Module):
    """Named like torchvision's ResNet (layer4 + fc), with its own forward and no features()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.layer4 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.layer4(self.conv1(x))), 1))


class _TimmLike(_TorchvisionLike):
    def forward_features(self, x: Tensor) -> Tensor:
        return self.layer4(self.conv1(x))

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.fc(self.avgpool(feats).flatten(1))

    def get_classifier(self) -> nn.Module:
        return self.fc


@pytest.mark.parametrize("cls", [_TorchvisionLike, _TimmLike])
def test_external_layouts_are_exact_in_one_pass(cls: type[_TorchvisionLike]) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    calls = _count_calls(model.conv1)
    x = torch.rand(3, 3, 16, 16)
    logits, cam = CamModel(model).forward_with_cam(x, 2)
    assert calls[0] == 1
    with torch.no_grad():
        feats = model.layer4(model.conv1(x))
        raw = torch.einsum("k,nkhw->nhw", model.fc.weight[2], feats)
        assert torch.allclose(logits, model(x))
    assert torch.allclose(cam, _reference_post(raw, 16), atol=1e-5)


class _ReluAfterFeatures(_TorchvisionLike):
    """DenseNet-like: a ReLU between the feature module and the pooling breaks exact CAM."""

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(torch.relu(self.layer4(self.conv1(x)) - 0.5)), 1))


def test_unsupported_heads_are_refused_with_a_hint() -> None:
    with pytest.raises(NrrError, match="CAM does not add up to the logit"):
        CamModel(_ReluAfterFeatures().eval()).cam(torch.rand(2, 3, 16, 16), 0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(NrrError, match="pass layer=NAME for Grad-CAM"):
        CamModel(plain)
    cam = CamModel(plain, layer="1").cam(torch.rand(2, 3, 12, 12), [0, 1])
    assert cam.shape == (2, 12, 12) and cam.min() >= 0 and cam.max() <= 1
    with pytest.raises(NrrError, match="no layer 'layer9'"):
        CamModel(plain, layer="layer9")
    with pytest.raises(ValueError, match="one class per image"):
        CamModel(build_model("convnet3", 2, 1, 28)).cam(torch.rand(2, 1, 28, 28), [0, 1, 1])

"""Architectures, registry, teacher checkpoints and the BatchNorm-statistics loss."""

from __future__ import annotations

import importlib.util
import os
from typing import cast

import pytest
import torch
from torch import nn

from nrrstore.errors import FormatVersionError, NrrError
from nrrstore.models import (
    ARCHS,
    BNStatsLoss,
    ConvNet,
    ResNet,
    build_model,
    file_sha256,
    load_teacher,
    save_teacher,
    state_dict_sha256,
)

SMALL_ARCHS = [a for a in ARCHS if a != "resnet18"]
NORM1 = {"mean": [0.5], "std": [0.25]}


def _meta(arch: str = "convnet3", n: int = 4, c: int = 1, size: int = 28, **extra: object) -> dict:
    return {"arch": arch, "num_classes": n, "in_channels": c, "image_size": size,
            "classes": [f"c{i}" for i in range(n)], "normalization": {"mean": [0.5] * c, "std": [0.25] * c},
            **extra}


# ----------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("arch", SMALL_ARCHS)
@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(arch: str, size: int, channels: int) -> None:
    model = cast("ConvNet | ResNet", build_model(arch, 7, channels, size, seed=0).eval())
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
        assert torch.allclose(model.head(feats), logits)
    assert logits.shape == (2, 7)
    assert feats.dim() == 4 and feats.shape[0] == 2


def test_resnet18_imagenet_stem_at_64px() -> None:
    model = cast(ResNet, build_model("resnet18", 5, 3, 64, seed=0).eval())
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        assert model(x).shape == (2, 5)
        assert model.features(x).shape == (2, 512, 2, 2)
    assert cast(ResNet, build_model("resnet18", 5, 1, 64)).conv1.weight.shape == (64, 1, 7, 7)


def test_resnet18_matches_torchvision_layout() -> None:
    model = build_model("resnet18", 1000, 3, 224)
    keys = model.state_dict().keys()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision resnet18's count
    for key in ("conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight", "layer4.1.bn2.bias", "fc.bias"):
        assert key in keys
    cifar = cast(ResNet, build_model("resnet18_cifar", 10, 3, 32))
    assert cifar.conv1.kernel_size == (3, 3) and isinstance(cifar.maxpool, nn.Identity)


@pytest.mark.parametrize(("arch", "size", "grid"), [("convnet3", 28, 3), ("convnet4", 32, 2), ("convnet6", 28, 1)])
def test_convnet_feature_grid(arch: str, size: int, grid: int) -> None:
    model = cast(ConvNet, build_model(arch, 10, 1, size))
    assert model.feature_shape == (128, grid, grid)
    assert model.classifier.in_features == 128 * grid * grid
    assert isinstance(model.body[1], nn.GroupNorm) and model.body[1].num_groups == 128


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_convnet_norms(norm: str) -> None:
    model = build_model("convnet3", 3, 3, 32, norm=norm, width=16).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# --------------------------------------------------------------------------------------- registry
def test_unknown_arch_and_bad_options() -> None:
    with pytest.raises(NrrError, match=r"unknown architecture 'vgg99'; known: convnet3, .*resnet18_cifar"):
        build_model("vgg99", 10, 3, 32)
    with pytest.raises(NrrError, match="bad options for architecture 'convnet3'"):
        build_model("convnet3", 10, 3, 32, norm="layer")
    with pytest.raises(NrrError, match="bad options"):
        build_model("resnet18", 10, 3, 32, nonsense=1)


@pytest.mark.parametrize(("spec", "module", "extra"), [("torchvision:resnet18", "torchvision", "nrrstore[vision]"),
                                                        ("timm:resnet18", "timm", "nrrstore[timm]")])
def test_optional_backends_say_what_to_install(spec: str, module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(NrrError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        build_model(spec, 10, 3, 32)


FACTORY_MODULE = '''
import torch.nn as nn
def tiny(num_classes, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
def not_a_model(num_classes):
    return 42
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "nrr_test_factory.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "nrr_test_factory"


def test_factory_spec(factory_module: str) -> None:
    model = cast(nn.Sequential, build_model(f"{factory_module}:tiny", 6, 3, 4, hidden=5))
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 6) and model[1].out_features == 5
    with pytest.raises(NrrError, match="has no callable 'missing'"):
        build_model(f"{factory_module}:missing", 6, 3, 4)
    with pytest.raises(NrrError, match="not a torch.nn.Module"):
        build_model(f"{factory_module}:not_a_model", 6, 3, 4)
    with pytest.raises(NrrError, match="cannot import"):
        build_model("no_such_module_xyz:make", 6, 3, 4)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("convnet3", 10, 1, 28, seed=7).state_dict()
    assert torch.equal(torch.rand(3), expected_next)
    b = build_model("convnet3", 10, 1, 28, seed=7).state_dict()
    c = build_model("convnet3", 10, 1, 28, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


# ------------------------------------------------------------------------------------- checkpoint
def test_checkpoint_round_trip(tmp_path) -> None:
    model = cast(ConvNet, build_model("convnet3", 4, 1, 28, seed=1, norm="batch", width=32))
    bn = cast(nn.BatchNorm2d, model.body[1])
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():  # non-default BN buffers must survive too
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    model.eval()
    path = tmp_path / "teacher.pt"
    save_teacher(path, model, _meta(arch_kwargs={"norm": "batch", "width": 32}, train={"epochs": 1, "top1": 0.5}))
    assert sorted(os.listdir(tmp_path)) == ["teacher.pt"]  # no temporary left behind

    teacher = load_teacher(path)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(teacher.model(x), model(x))
    assert (teacher.arch, teacher.num_classes, teacher.in_channels, teacher.image_size) == ("convnet3", 4, 1, 28)
    assert teacher.classes == ["c0", "c1", "c2", "c3"] and teacher.arch_kwargs == {"norm": "batch", "width": 32}
    assert teacher.train == {"epochs": 1, "top1": 0.5}
    assert teacher.sha256 == file_sha256(path) and len(teacher.sha256) == 64
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    assert torch.allclose(teacher.normalize(torch.full((1, 28, 28), 0.75)), torch.ones(1, 28, 28))
    assert torch.allclose(teacher.denormalize(teacher.normalize(x)), x, atol=1e-6)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # the attack under test
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_not_run(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    record = _meta()
    record.update(format="nrrstore-teacher", version=1, state_dict=_Evil(str(marker)))
    torch.save(record, path)
    with pytest.raises(NrrError, match="not a safe checkpoint: .*system") as info:
        load_teacher(path)
    assert str(path) in str(info.value)
    with pytest.raises(NrrError, match="not a safe checkpoint"):
        load_teacher("convnet3", weights=path, num_classes=4, image_size=28, normalization=NORM1)
    assert not marker.exists()


def test_state_dict_mismatch(tmp_path) -> None:
    other = build_model("convnet4", 4, 1, 28)
    with pytest.raises(NrrError, match="does not match architecture 'convnet3'"):
        save_teacher(tmp_path / "t.pt", other, _meta())
    record = _meta()
    record.update(format="nrrstore-teacher", version=1, state_dict=other.state_dict())
    torch.save(record, tmp_path / "t.pt")
    with pytest.raises(NrrError, match=r"t\.pt: state dict does not match .*unexpected: body\.12"):
        load_teacher(tmp_path / "t.pt")
    narrow = build_model("convnet3", 4, 1, 28, width=64)
    with pytest.raises(NrrError, match="shape mismatch"):
        load_teacher("convnet3", weights=_save_raw(tmp_path, narrow.state_dict()), num_classes=4, image_size=28,
                     normalization=NORM1)


def _save_raw(tmp_path, obj: object, name: str = "raw.pt") -> str:
    torch.save(obj, tmp_path / name)
    return str(tmp_path / name)


def test_bad_files(tmp_path) -> None:
    with pytest.raises(NrrError, match="no such teacher checkpoint"):
        load_teacher(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello\n")
    with pytest.raises(NrrError, match="not a torch checkpoint"):
        load_teacher(tmp_path / "text.pt")
    with pytest.raises(NrrError, match="not an nrrstore teacher"):
        load_teacher(_save_raw(tmp_path, {"a": 1}))
    record = _meta()
    record.update(format="nrrstore-teacher", version=2, state_dict={})
    with pytest.raises(FormatVersionError, match="version 2 is newer"):
        load_teacher(_save_raw(tmp_path, record))
    # A checkpoint never chooses code to import: only built-in architectures are accepted.
    record.update(version=1, arch="os:system")
    with pytest.raises(NrrError, match="'os:system' is not built in"):
        load_teacher(_save_raw(tmp_path, record))
    good = tmp_path / "good.pt"
    save_teacher(good, build_model("convnet3", 4, 1, 28), _meta())
    with pytest.raises(NrrError, match="apply to an architecture spec"):
        load_teacher(good, num_classes=4)


def test_save_refuses_bad_metadata(tmp_path) -> None:
    model = build_model("convnet3", 4, 1, 28)
    with pytest.raises(NrrError, match="lacks normalization"):
        save_teacher(tmp_path / "t.pt", model, {k: v for k, v in _meta().items() if k != "normalization"})
    with pytest.raises(NrrError, match="one per input channel"):
        save_teacher(tmp_path / "t.pt", model, {**_meta(), "normalization": {"mean": [0.1] * 3, "std": [1.0] * 3}})
    with pytest.raises(NrrError, match="classes must be 4 names"):
        save_teacher(tmp_path / "t.pt", model, {**_meta(), "classes": ["a"]})
    with pytest.raises(NrrError, match="'train' holds a device"):
        save_teacher(tmp_path / "t.pt", model, _meta(train={"device": torch.device("cpu")}))
    with pytest.raises(NrrError, match="names a built-in architecture"):
        save_teacher(tmp_path / "t.pt", model, _meta(arch="timm:resnet18"))
    assert os.listdir(tmp_path) == []


def test_spec_with_weights(tmp_path, factory_module: str) -> None:
    model = build_model("convnet3", 4, 1, 28, seed=3).eval()
    ddp_style = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 9}
    weights = _save_raw(tmp_path, ddp_style)
    teacher = load_teacher("convnet3", weights=weights, num_classes=4, image_size=28, normalization=NORM1)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(teacher.model(x), model(x))
    assert teacher.sha256 == file_sha256(weights) and teacher.classes == ["0", "1", "2", "3"]
    assert teacher.in_channels == 1 and teacher.spec == "convnet3"

    tiny = build_model(f"{factory_module}:tiny", 3, 3, 4, seed=0)
    norm3 = {"mean": [0.4] * 3, "std": [0.2] * 3}
    loaded = load_teacher(f"{factory_module}:tiny", weights=_save_raw(tmp_path, tiny.state_dict(), "tiny.pt"),
                          num_classes=3, image_size=4, classes=["a", "b", "c"], normalization=norm3)
    y = torch.rand(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(loaded.model(y), tiny(y))
    unweighted = load_teacher(f"{factory_module}:tiny", num_classes=3, image_size=4, normalization=norm3)
    assert unweighted.sha256 == state_dict_sha256(unweighted.model.state_dict())
    with pytest.raises(NrrError, match="also give num_classes, image_size and normalization"):
        load_teacher("convnet3", weights=weights)


# --------------------------------------------------------------------------------------- BN loss
def _set_running_stats_from(model: nn.Module, x: torch.Tensor) -> None:
    """Make every BN layer's running statistics equal the (biased) batch statistics of its input for x.

    In train mode BN normalizes with exactly these statistics, so after copying them the eval-mode
    forward sees the same inputs at every layer.
    """
    captured: dict[nn.Module, torch.Tensor] = {}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [m.register_forward_hook(lambda m, i, o: captured.__setitem__(m, i[0].detach())) for m in bns]
    model.train()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    for m in bns:
        assert m.running_mean is not None and m.running_var is not None
        m.running_mean.copy_(captured[m].mean((0, 2, 3)))
        m.running_var.copy_(captured[m].var((0, 2, 3), correction=0))
    model.eval()


def test_bn_loss_zero_on_matching_stats_and_positive_otherwise() -> None:
    model = build_model("resnet18_cifar", 5, 3, 8, seed=0)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    _set_running_stats_from(model, x)
    with BNStatsLoss(model) as bn:
        assert bn.has_bn
        model(x)
        assert bn.loss().item() < 1e-3
        other = (x * 2 + 1).requires_grad_(True)
        model(other)
        loss = bn.loss()
        assert loss.item() > 1.0
        loss.backward()
        assert other.grad is not None and other.grad.abs().sum() > 0
    assert all(not m._forward_hooks for m in model.modules())  # context exit removed the hooks


def test_bn_loss_formula_and_first_layer_weight() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3))
    model.eval()
    bn1, bn4 = cast(nn.BatchNorm2d, model[1]), cast(nn.BatchNorm2d, model[4])
    with torch.no_grad():
        for layer in (bn1, bn4):
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
    x = torch.randn(5, 2, 6, 6)
    inputs = [model[0](x)]
    inputs.append(model[3](model[2](model[1](inputs[0]))))

    def term(bn: nn.BatchNorm2d, a: torch.Tensor) -> torch.Tensor:
        assert bn.running_mean is not None and bn.running_var is not None
        flat = a.transpose(0, 1).reshape(a.shape[1], -1)
        return (flat.mean(1) - bn.running_mean).norm() + (flat.var(1, unbiased=False) - bn.running_var).norm()

    terms = [term(bn1, inputs[0]), term(bn4, inputs[1])]
    for first_weight in (10.0, 1.0):
        bn = BNStatsLoss(model, first_weight=first_weight)
        model(x)
        assert torch.allclose(bn.loss(), first_weight * terms[0] + terms[1], rtol=1e-5)
        bn.remove()
    assert not model[1]._forward_hooks


def test_bn_loss_without_bn_layers_and_misuse() -> None:
    bn = BNStatsLoss(build_model("convnet3", 10, 1, 28))
    assert not bn.has_bn and bn.loss().item() == 0.0
    bn2 = BNStatsLoss(build_model("convnet3", 10, 1, 28, norm="batch", width=8))
    with pytest.raises(RuntimeError, match="needs a forward pass"):
        bn2.loss()
    bn2.remove()

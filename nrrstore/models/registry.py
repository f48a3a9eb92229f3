"""Architecture names -> freshly initialised models.

Built-in names need nothing beyond torch. External specs are resolved lazily so that torchvision/timm
stay optional: ``torchvision:NAME``, ``timm:NAME`` and ``package.module:factory``. No weights are ever
downloaded (weights=None / pretrained=False); trained weights come from the user's own file.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nrrstore.errors import NrrError
from nrrstore.models.convnet import ConvNet
from nrrstore.models.resnet import resnet18

_BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "convnet3": lambda n, c, s, **kw: ConvNet(n, c, s, **{"depth": 3, **kw}),
    "convnet4": lambda n, c, s, **kw: ConvNet(n, c, s, **{"depth": 4, **kw}),
    "convnet5": lambda n, c, s, **kw: ConvNet(n, c, s, **{"depth": 5, **kw}),
    "convnet6": lambda n, c, s, **kw: ConvNet(n, c, s, **{"depth": 6, **kw}),
    "resnet18": lambda n, c, s, **kw: resnet18(n, c, stem="imagenet", **kw),
    "resnet18_cifar": lambda n, c, s, **kw: resnet18(n, c, stem="cifar", **kw),
}
ARCHS: tuple[str, ...] = tuple(_BUILTIN)

_FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_builtin(arch: str) -> bool:
    return arch in _BUILTIN


def is_external_spec(arch: str) -> bool:
    """True for ``torchvision:NAME``, ``timm:NAME`` and ``package.module:factory`` strings."""
    return arch.startswith(("torchvision:", "timm:")) or bool(_FACTORY_SPEC.match(arch))


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    seed: int | None = None,
    **kw: Any,
) -> nn.Module:
    """A randomly initialised model; with `seed`, the initialisation is reproducible and the global
    RNG state is left untouched (the model is built inside a forked RNG)."""
    if seed is None:
        return _build(arch, num_classes, in_channels, image_size, kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(arch, num_classes, in_channels, image_size, kw)


def _build(arch: str, num_classes: int, in_channels: int, image_size: int, kw: dict[str, Any]) -> nn.Module:
    if arch in _BUILTIN:
        try:
            return _BUILTIN[arch](num_classes, in_channels, image_size, **kw)
        except (TypeError, ValueError) as e:
            raise NrrError(None, f"bad options for architecture '{arch}' {kw}: {e}") from None
    if arch.startswith("torchvision:"):
        return _torchvision(arch.split(":", 1)[1], num_classes, in_channels, kw)
    if arch.startswith("timm:"):
        return _timm(arch.split(":", 1)[1], num_classes, in_channels, kw)
    if _FACTORY_SPEC.match(arch):
        return _factory(arch, num_classes, kw)
    known = ", ".join(ARCHS)
    raise NrrError(None, f"unknown architecture '{arch}'; known: {known}, "
                         "torchvision:NAME, timm:NAME, package.module:factory")


def _torchvision(name: str, num_classes: int, in_channels: int, kw: dict[str, Any]) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError:
        raise NrrError(None, f"architecture 'torchvision:{name}' needs torchvision: "
                             "pip install 'nrrstore[vision]'") from None
    if in_channels != 3:
        raise NrrError(None, f"torchvision:{name} takes 3 input channels, not {in_channels}")
    try:
        return tvm.get_model(name, weights=None, num_classes=num_classes, **kw)
    except (ValueError, KeyError, TypeError) as e:
        raise NrrError(None, f"torchvision cannot build '{name}': {e}") from None


def _timm(name: str, num_classes: int, in_channels: int, kw: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise NrrError(None, f"architecture 'timm:{name}' needs timm: pip install 'nrrstore[timm]'") from None
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kw)
    except (RuntimeError, ValueError, TypeError) as e:
        raise NrrError(None, f"timm cannot build '{name}': {e}") from None


def _factory(spec: str, num_classes: int, kw: dict[str, Any]) -> nn.Module:
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise NrrError(None, f"architecture '{spec}': cannot import {module_name}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise NrrError(None, f"architecture '{spec}': {module_name} has no callable '{attr}'")
    try:
        model = factory(num_classes=num_classes, **kw)
    except (TypeError, ValueError) as e:
        raise NrrError(None, f"architecture '{spec}': {attr}(num_classes={num_classes}) failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise NrrError(None, f"architecture '{spec}': {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    return model

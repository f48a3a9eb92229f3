"""Class activation maps for any classifier, from the same forward pass that gives the logits.

CIDD scores patches by confidence *and* CAM, and NRR masks its update with the CAM, so the cost that
matters is one forward pass per batch. Three ways, picked once per model:

* global-average-pool + linear head: exact CAM, ``cam = sum_k W[c,k] * A[k]`` (Zhou et al. 2016);
* flatten + linear head (ConvNet-D): exact CAM with the class weights laid over the spatial grid,
  ``cam[h,w] = sum_k W[c, k*H'*W' + h*W' + w] * A[k,h,w]``; the map sums to the logit minus the bias;
* anything else: Grad-CAM on a named layer (one forward and one backward pass).

Normalization (a choice of ours; the NRR-DD paper does not say): the exact CAM keeps its raw signed
values, as in the original CAM, because its mean (GAP) or sum (flatten) *is* the class logit; Grad-CAM
applies its defining ReLU. Either map is then bilinearly upsampled to the input size
(align_corners=False) and min-max normalized per image to [0,1]; a constant map becomes all zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nrrstore.errors import NrrError

Split = Callable[[Tensor], tuple[Tensor, Tensor]]  # x -> (feature map A [N,K,h,w], logits [N,C])

# (feature-map module, linear head) names of common torchvision-style classifiers.
_HOOK_LAYOUTS = (("layer4", "fc"), ("features", "classifier"))


class CamModel:
    """Wraps a classifier to return logits and CAMs of chosen classes in one pass.

    `layer` forces Grad-CAM on that submodule (dotted name, e.g. "layer4"). Without it the model must
    expose a feature map and a linear head: nrrstore models (`features` + `head` + `classifier`/`fc`),
    timm-style models (`forward_features` + `forward_head` + `get_classifier()`), or torchvision-style
    submodules (`layer4` + `fc`, `features` + `classifier`). The first call checks that the head really
    is pooling/flatten + linear (the CAM must add up to the logit) and refuses otherwise.
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.model = model
        self.layer = layer
        self._checked = False
        if layer is not None:
            try:
                self._target = model.get_submodule(layer)
            except AttributeError:
                raise NrrError(None, f"{type(model).__name__} has no layer '{layer}' for Grad-CAM") from None
            self.mode = "gradcam"
        else:
            self._split, self._linear = _find_split(model)
            self.mode = "exact"

    def forward_with_cam(self, x: Tensor, classes: int | Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """(logits [N,C], cam [N,H,W] in [0,1]) for input x [N,C,H,W] and one class per image."""
        cls = _classes(classes, x)
        if self.mode == "gradcam":
            logits, raw = self._gradcam(x, cls)
        else:
            with torch.no_grad():
                logits, raw = self._exact(x, cls)
        return logits, _upsample_minmax(raw, x.shape[-2:])

    def cam(self, x: Tensor, classes: int | Sequence[int] | Tensor) -> Tensor:
        return self.forward_with_cam(x, classes)[1]

    def _exact(self, x: Tensor, cls: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = self._split(x)
        if feats.dim() != 4:
            raise NrrError(None, f"{type(self.model).__name__}: feature map has shape {tuple(feats.shape)}, "
                                 "not [N,K,H,W]; pass layer= for Grad-CAM")
        n, k, h, w = feats.shape
        weight = self._linear.weight[cls]  # [N, in_features]
        if weight.shape[1] == k:
            raw = torch.einsum("nk,nkhw->nhw", weight.to(feats.dtype), feats)
            pooled = raw.mean((1, 2))
        elif weight.shape[1] == k * h * w:
            raw = (weight.to(feats.dtype).view(n, k, h, w) * feats).sum(1)
            pooled = raw.sum((1, 2))
        else:
            raise NrrError(None, f"{type(self.model).__name__}: linear head takes {weight.shape[1]} inputs, but the "
                                 f"feature map is {k}x{h}x{w}; pass layer= for Grad-CAM")
        if not self._checked:
            self._check(pooled, logits, cls)
        return logits, raw

    def _check(self, pooled: Tensor, logits: Tensor, cls: Tensor) -> None:
        """The exact CAM is only exact if the head is pooling + linear; a mismatch means it is not."""
        bias = self._linear.bias
        predicted = pooled + (bias[cls].to(pooled.dtype) if bias is not None else 0.0)
        actual = logits.gather(1, cls[:, None])[:, 0].to(pooled.dtype)
        if not (torch.isfinite(actual).all() and torch.isfinite(predicted).all()):
            raise NrrError(None, f"{type(self.model).__name__}: the teacher's outputs are not finite (NaN or "
                                 "infinite weights or inputs?)")
        scale = 1.0 + float(actual.abs().max()) if actual.numel() else 1.0
        if not torch.allclose(predicted, actual, rtol=1e-3, atol=1e-3 * scale):
            raise NrrError(None, f"{type(self.model).__name__}: the head is not global pooling/flatten + linear "
                                 "(CAM does not add up to the logit); pass layer= for Grad-CAM")
        self._checked = True

    def _gradcam(self, x: Tensor, cls: Tensor) -> tuple[Tensor, Tensor]:
        store: dict[str, Tensor] = {}
        handle = self._target.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
        try:
            with torch.enable_grad():
                logits = self.model(x.detach().requires_grad_(True))
                if not isinstance(store.get("a"), Tensor) or store["a"].dim() != 4:
                    raise NrrError(None, f"Grad-CAM layer '{self.layer}' does not output a [N,K,H,W] tensor")
                acts = store["a"]
                (grads,) = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), acts)
        finally:
            handle.remove()
        weights = grads.mean((2, 3), keepdim=True)
        raw = F.relu((weights * acts).sum(1)).detach()
        return logits.detach(), raw


def _classes(classes: int | Sequence[int] | Tensor, x: Tensor) -> Tensor:
    cls = torch.as_tensor(classes, dtype=torch.long, device=x.device)
    if cls.dim() == 0:
        cls = cls.expand(x.shape[0])
    if cls.shape != (x.shape[0],):
        raise ValueError(f"need one class per image: {x.shape[0]} images, classes of shape {tuple(cls.shape)}")
    return cls


def _minmax(maps: Tensor) -> Tensor:
    lo = maps.amin((1, 2), keepdim=True)
    span = maps.amax((1, 2), keepdim=True) - lo
    return (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny)  # constant map: 0 / tiny = 0


def _upsample_minmax(raw: Tensor, size: torch.Size) -> Tensor:
    # Normalizing before upsampling too makes a constant map exactly zero: bilinear interpolation of a
    # constant is only constant up to rounding, which a min-max alone would blow up to [0,1] noise.
    cam = F.interpolate(_minmax(raw.float())[:, None], size=tuple(size), mode="bilinear", align_corners=False)
    return _minmax(cam[:, 0])


def _linear_of(module: nn.Module | None) -> nn.Linear | None:
    """The Linear itself, or the last layer of a Sequential whose other layers are Dropout/Flatten/Identity."""
    if isinstance(module, nn.Linear):
        return module
    if (isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Linear)
            and all(isinstance(m, (nn.Dropout, nn.Flatten, nn.Identity)) for m in list(module)[:-1])):
        return module[-1]
    return None


def _find_split(model: nn.Module) -> tuple[Split, nn.Linear]:
    name = type(model).__name__
    # nrrstore models and anything following the same protocol.
    head_linear = _linear_of(getattr(model, "classifier", None)) or _linear_of(getattr(model, "fc", None))
    features, head = getattr(model, "features", None), getattr(model, "head", None)
    if callable(features) and callable(head) and head_linear:
        def own(x: Tensor) -> tuple[Tensor, Tensor]:
            feats = features(x)
            return feats, head(feats)
        return own, head_linear
    # timm.
    forward_features, forward_head, get_classifier = (
        getattr(model, a, None) for a in ("forward_features", "forward_head", "get_classifier"))
    if callable(forward_features) and callable(forward_head) and callable(get_classifier):
        linear = _linear_of(get_classifier())
        if linear is not None:
            def timm_like(x: Tensor) -> tuple[Tensor, Tensor]:
                feats = forward_features(x)
                return feats, forward_head(feats)
            return timm_like, linear
    # torchvision-style: capture the feature module's output with a hook during the normal forward.
    modules = dict(model.named_modules())
    for feat_name, head_name in _HOOK_LAYOUTS:
        linear = _linear_of(modules.get(head_name))
        if feat_name in modules and linear is not None:
            return _hooked(model, modules[feat_name]), linear
    raise NrrError(None, f"cannot find a feature map and a linear head in {name}; pass layer=NAME for Grad-CAM")


def _hooked(model: nn.Module, feature_module: nn.Module) -> Split:
    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        store: dict[str, Tensor] = {}
        handle = feature_module.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
        try:
            logits = model(x)
        finally:
            handle.remove()
        return store["a"], logits
    return run

"""SRe2L's BatchNorm statistics loss, used by NRR to keep refined images on the teacher's statistics.

For every BatchNorm layer l, on that layer's input of the latest forward pass::

    L_bn = sum_l w_l * ( ||mean_NHW(x_l) - running_mean_l||_2 + ||var_NHW(x_l) - running_var_l||_2 )

with the biased variance and w = `first_weight` (10 in SRe2L) for the first BN layer in module order,
1 for the others. GroupNorm ConvNets have no BN layer: the loss is then a zero tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only type checkers import this

_BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)


class BNStatsLoss:
    """Forward hooks on every BatchNorm2d of `model`; `loss()` reads the statistics of the last forward.

    A layer called twice in one forward keeps the statistics of its last call.
    """

    def __init__(self, model: nn.Module, first_weight: float = 10.0) -> None:
        # Layers without running statistics (track_running_stats=False) have nothing to match.
        self._layers = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.running_mean is not None]
        self._weights = [first_weight if i == 0 else 1.0 for i in range(len(self._layers))]
        self._terms: dict[int, Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self._layers)]
        self._model = model

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
            x = inputs[0]
            mean = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), correction=0)
            # BN buffers (layers without them are not hooked); nn.Module's __getattr__ is typed Tensor | Module.
            running_mean, running_var = cast(Tensor, module.running_mean), cast(Tensor, module.running_var)
            self._terms[index] = torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(
                var - running_var
            )
        return hook

    @property
    def has_bn(self) -> bool:
        return bool(self._layers)

    def loss(self) -> Tensor:
        """Weighted sum over BN layers for the latest forward pass (differentiable w.r.t. the input)."""
        if not self._layers:
            param = next(iter(self._model.parameters()), None)
            return torch.zeros((), device=param.device if param is not None else None)
        if len(self._terms) != len(self._layers):
            raise RuntimeError("BNStatsLoss.loss() needs a forward pass of the model through every BN layer first")
        total = self._weights[0] * self._terms[0]
        for i in range(1, len(self._layers)):
            total = total + self._weights[i] * self._terms[i]
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._terms.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

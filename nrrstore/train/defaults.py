"""The student recipe's shipped defaults: one table that `train_student`, `evaluate`'s protocol, the losses and
the CLI's help all read (pure data, so the CLI's help costs no torch import).

``codec_loss`` "match" was chosen on the Fashion-MNIST validation part (issue 15, benchmarks/RESULTS.md): it beat
KD on the implied distribution by 1.3-2.1 points with the same labels.
``dbr_norm`` "l1" was chosen on validation parts carved from the training sets (benchmarks/RESULTS.md,
"Issue 14"): with the l2 norm DBR labels only tied one-hot labels on CIFAR-10, l1 gained about 4 points on
every image set there and tied l2 on Fashion-MNIST.
"""

from __future__ import annotations

from typing import Any

from nrrstore.errors import NrrError

STUDENT: dict[str, Any] = {
    "epochs": 300, "lr": 1e-3, "weight_decay": 0.01, "alpha_dbr": 1.0, "dbr_norm": "l1", "kd_temperature": 4.0,
    "codec_fill": "prior", "codec_loss": "match",
}
PROTOCOLS = ("nrrstore", "rded")
"""How a student is trained and reported. ``nrrstore``: the recipe above, the last epoch's top-1. ``rded``: RDED's
evaluation (LINs-lab/RDED, validation/main.py and argument.py) from stored full soft labels: BatchNorm ConvNets,
KL at T = 20 with no T**2 factor, AdamW with a per-epoch cosine that only decays to half, and the best top-1 of
the evaluations every 10 epochs in the last 20% (reported beside the last epoch's)."""
RDED_PROTOCOL: dict[str, Any] = {
    "lr": 1e-3, "weight_decay": 0.01, "kd_temperature": 20.0, "convnet_norm": "batch", "lr_floor": 0.5,
    "eval_after": 0.8, "eval_every": 10,
}


def protocol_values(protocol: str) -> dict[str, Any]:
    """The learning rate, weight decay and KD temperature a protocol trains with unless told otherwise."""
    if protocol == "rded":
        return {k: RDED_PROTOCOL[k] for k in ("lr", "weight_decay", "kd_temperature")}
    return {k: STUDENT[k] for k in ("lr", "weight_decay", "kd_temperature")}


def resolve_protocol(protocol: str, **given: Any) -> dict[str, Any]:
    """The learning rate, weight decay and KD temperature to train with: those ``given`` (not None), else the
    protocol's. The one place both `train_student` and an evaluation's `StudentProtocol` resolve them."""
    if protocol not in PROTOCOLS:
        raise NrrError(None, f"unknown student protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    return {**protocol_values(protocol), **{k: v for k, v in given.items() if v is not None}}


CODEC_FILLS = ("prior", "uniform")
CODEC_LOSSES = ("kd", "match")
"""A codec student's objective: KD on the distribution the codec implies, or DBR's L_sce + L_dbr with every stored
distance matched (nrrstore.train.losses.codec_match_loss)."""
"""How a label codec's target spreads the mass it does not store (nrrstore.train.losses.codec_target)."""
DBR_NORMS = ("l2", "l1", "smooth_l1")

"""The replay check: do a store's distances describe its own views under a given teacher?

Checksums say the files are the ones written; they cannot say the labels fit the images. A wrong
augmentation seed, a wrong view size, another teacher or (for converted SRe2L labels) a wrong image
order all give well-formed stores whose distances describe other views. The check replays a sample
of views exactly as a student would get them (the loader renders them), recomputes the teacher's
two distances with relabel's own :func:`~nrrstore.labels.teacher_pass.teacher_distances`, and compares
them with the stored ones:

- stores labelled by nrrstore (``relabel``/``distill``): every replayed view must agree within the
  storage precision (fp16: half an ulp, int8: half a code step, see `nrrstore.format.quant`) plus a
  small allowance for floating-point differences between batch sizes and devices; the teacher runs
  under the autocast the labels were made with (``method.relabel.amp``), and a wider allowance
  (`AMP_TOLERANCE`) covers autocast's rounding, which differs between devices;
- converted stores (``convert-softlabels``): the labels were computed by another program on pixels
  it resized itself, so views agree only approximately; the *mean* gap must stay below
  ``CONVERTED_MAX_MEAN_GAP`` nats (a wrong sampler seed or view size gives gaps of several nats).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from nrrstore.devices import amp_dtype, resolve_device
from nrrstore.errors import NrrError
from nrrstore.format import quant
from nrrstore.format.reader import Store
from nrrstore.labels.relabel import amp_key
from nrrstore.labels.teacher_pass import teacher_distances
from nrrstore.models.checkpoint import Teacher
from nrrstore.replay.recipe import store_recipe
from nrrstore.train.loader import make_loader, open_store

#: Allowance for floating-point differences (batch composition, CPU vs GPU), in nats and relative.
COMPUTE_ATOL = 1e-3
COMPUTE_RTOL = 1e-3
#: Extra (absolute nats, relative) allowance for labels computed under autocast: measured on the test
#: teacher, bf16 moves distances by up to about 0.012 nats, fp16 by about 0.002 (vs float32).
AMP_TOLERANCE = {"bf16": (2e-2, 2.0 ** -5), "fp16": (4e-3, 2.0 ** -8)}
#: fp16 keeps 11 significant bits: rounding moves a value by at most half an ulp.
FP16_RTOL = 2.0 ** -11
#: Largest mean |stored - replayed| (nats) accepted for labels converted from another program.
CONVERTED_MAX_MEAN_GAP = 0.25
DEFAULT_SAMPLE = 256
MAX_EPOCHS_SAMPLED = 8


@dataclass
class ReplayReport:
    """What a replay found; ``problem`` is None when the distances fit the views."""

    views: int
    epochs: list[int]
    precision: str
    amp: str  # the autocast the labels were made with ("fp32": none)
    converted: bool
    mean_gap: float  # mean |stored - replayed| over d_org and d_aug, nats
    max_gap: float
    beyond_tolerance: int  # views whose distances differ by more than the precision allows
    worst: dict[str, Any]  # the view with the largest gap
    teacher_sha256_matches: bool | None
    problem: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sampled_epochs(stored: int, sample: int) -> list[int]:
    """Up to `MAX_EPOCHS_SAMPLED` epochs spread evenly over the stored ones, first and last included."""
    k = max(1, min(stored, MAX_EPOCHS_SAMPLED, sample))
    return sorted({round(x) for x in np.linspace(0, stored - 1, k).tolist()})


def beyond_tolerance(stored: np.ndarray, replayed: np.ndarray, precision: str, qmax: float | None,
                     amp: str = "fp32") -> np.ndarray:
    """Boolean mask of values whose gap exceeds what storing at ``precision`` (and computing under
    autocast ``amp``) can explain."""
    gap = np.abs(stored - replayed)
    amp_atol, amp_rtol = AMP_TOLERANCE.get(amp, (0.0, 0.0))
    if precision == "int8":
        assert qmax is not None
        log_gap = np.abs(np.log1p(np.maximum(stored, 0)) - np.log1p(np.maximum(replayed, 0)))
        clipped = (replayed > qmax) & (stored >= quant.decode(np.array([quant.LEVELS], np.uint8), qmax)[0])
        return (log_gap > quant.max_abs_log_error(qmax) + COMPUTE_ATOL + amp_atol + amp_rtol) & ~clipped
    rtol = COMPUTE_RTOL + amp_rtol + (FP16_RTOL if precision == "fp16" else 0.0)
    return gap > COMPUTE_ATOL + amp_atol + rtol * np.abs(replayed)


def replay_check(
    store: Store | str | os.PathLike[str],
    teacher: Teacher,
    sample: int = DEFAULT_SAMPLE,
    device: str | torch.device | None = None,
) -> ReplayReport:
    """Replay about ``sample`` views of ``store`` with ``teacher`` and compare the distances (see module).

    Views are rendered on ``device`` (default: where the teacher's weights are) and the teacher runs
    under the autocast its labels were made with (``method.relabel.amp``).
    """
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise NrrError(None, f"the replay sample must be a positive number of views, got {sample!r}")
    st = open_store(store)
    m = st.manifest
    section = m.labels.get("distances") or {}
    if not section:
        raise NrrError(st.path, "the store has no DBR distances to replay")
    recipe = store_recipe(m, st.manifest_path)
    if teacher.num_classes != m.num_classes:
        raise NrrError(teacher.spec, f"teacher has {teacher.num_classes} classes but the store has {m.num_classes}")
    if teacher.in_channels != m.image.channels:
        raise NrrError(teacher.spec, f"teacher takes {teacher.in_channels} channel(s) but store images have "
                                     f"{m.image.channels}")
    if recipe.size != teacher.image_size:
        raise NrrError(teacher.spec, f"the store's views are {recipe.size} px but the teacher takes "
                                     f"{teacher.image_size} px")
    precision = str(section.get("precision", "fp16"))
    qmax = (section.get("quant") or {}).get("max")
    converted = "convert" in m.method
    epochs = sampled_epochs(st.num_epochs, sample)
    per_epoch = min(m.num_images, math.ceil(sample / len(epochs)))
    stored_all: list[np.ndarray] = []
    replayed_all: list[np.ndarray] = []
    where: list[tuple[int, int]] = []  # (epoch, image) of each view
    dev = resolve_device(device if device is not None else next(teacher.model.parameters()).device)
    amp = amp_key((m.method.get("relabel") or {}).get("amp"))
    try:
        amp_dt = amp_dtype(amp, dev)
    except NrrError:  # this device cannot run that autocast: float32, within the autocast allowance
        amp_dt = None
    teacher.model.to(dev).eval()
    for e in epochs:
        batch = next(iter(make_loader(st, e, per_epoch, "dbr", device=dev, normalize=False)))
        with torch.inference_mode():
            a, c, _ = teacher_distances(teacher, teacher.normalize(batch["images"]), batch["y"], batch["y_partner"],
                                        batch["lam"], amp_dt)
        stored_all.append(np.stack([batch["d_org"].cpu().numpy(), batch["d_aug"].cpu().numpy()], 1))
        replayed_all.append(np.stack([a.cpu().numpy(), c.cpu().numpy()], 1).astype(np.float32))
        where.extend((e, int(i)) for i in batch["index"].tolist())
    stored = np.concatenate(stored_all).astype(np.float64)
    replayed = np.concatenate(replayed_all).astype(np.float64)
    gap = np.abs(stored - replayed)
    bad_views = beyond_tolerance(stored, replayed, precision, qmax, amp).any(axis=1)
    k = int(np.argmax(gap.max(axis=1)))
    keys = st.index.column("key").to_pylist()
    worst = {"epoch": where[k][0], "image": where[k][1], "key": keys[where[k][1]],
             "stored": [round(float(v), 5) for v in stored[k]], "replayed": [round(float(v), 5) for v in replayed[k]]}
    recorded = (m.teacher or {}).get("sha256")
    sha_ok = None if not recorded else recorded == teacher.sha256
    report = ReplayReport(views=len(where), epochs=epochs, precision=precision, amp=amp, converted=converted,
                          mean_gap=float(gap.mean()), max_gap=float(gap.max()), beyond_tolerance=int(bad_views.sum()),
                          worst=worst, teacher_sha256_matches=sha_ok, problem=None)
    report.problem = _problem(report)
    return report


def teacher_identity_problems(m: Any, teacher: Teacher) -> list[str]:
    """Where ``teacher`` is not the one the manifest records: another checksum, or other class names (equal
    distances cannot excuse labels whose classes mean something else)."""
    problems = []
    recorded = (m.teacher or {}).get("sha256")
    if recorded and recorded != teacher.sha256:
        problems.append(f"the teacher's sha256 {teacher.sha256[:12]}... is not the {recorded[:12]}... the store "
                        "records: its labels were made by another teacher")
    if teacher.classes and list(teacher.classes) != list(m.classes):
        i = next((i for i, (a, b) in enumerate(zip(teacher.classes, m.classes, strict=False)) if a != b),
                 min(len(teacher.classes), len(m.classes)))
        ours = teacher.classes[i] if i < len(teacher.classes) else "(none)"
        theirs = m.classes[i] if i < len(m.classes) else "(none)"
        problems.append(f"the teacher's classes differ from the store's (class {i}: {ours!r} vs {theirs!r})")
    norm = m.normalization
    if norm and not (_close(norm.get("mean"), teacher.mean) and _close(norm.get("std"), teacher.std)):
        problems.append(f"the store's normalization (mean {_fmt(norm.get('mean'))}, std {_fmt(norm.get('std'))}) "
                        f"is not the teacher's (mean {_fmt(teacher.mean)}, std {_fmt(teacher.std)}): students "
                        "would see its views otherwise normalized than the teacher that labelled them")
    size_problem = view_size_problem(m, teacher)
    return problems + ([size_problem] if size_problem else [])


def view_size_problem(m: Any, teacher: Teacher) -> str | None:
    """The store's views are rendered at another size than the teacher's input (no replay can then run)."""
    size = (m.augmentation or {}).get("size")
    if size is not None and teacher.image_size and int(size) != int(teacher.image_size):
        return (f"the store's views are {size} px and the teacher's input is {teacher.image_size} px: its labels "
                "were made at another size")
    return None


def _close(a: Any, b: Any) -> bool:
    """Equal channel statistics (the manifest keeps them as JSON numbers: 1e-6 relative slack)."""
    try:
        return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-6 * max(1.0, abs(float(y)))
                                        for x, y in zip(a, b, strict=True))
    except (TypeError, ValueError):
        return False


def _fmt(values: Any) -> str:
    try:
        return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"
    except (TypeError, ValueError):
        return repr(values)


def _problem(r: ReplayReport) -> str | None:
    cause = ("likely a different teacher" if r.teacher_sha256_matches is False
             else "likely another teacher, augmentation seed or recipe than the store records")
    if r.converted:
        if r.mean_gap <= CONVERTED_MAX_MEAN_GAP:
            return None
        return (f"replayed views differ from the stored distances by {r.mean_gap:.3f} nats on average (largest "
                f"{r.max_gap:.3f}; at most {CONVERTED_MAX_MEAN_GAP} expected for converted labels) over {r.views} "
                "views: the labels do not describe these images' views; likely a wrong --sampler-seed or "
                "--order-file, a wrong --size, or not the image folder the labels were made on"
                + ("" if r.teacher_sha256_matches is not False else ", or another teacher"))
    if r.beyond_tolerance == 0:
        return None
    w = r.worst
    tolerance = r.precision if r.amp == "fp32" else f"{r.precision} ({r.amp} autocast)"
    return (f"{r.beyond_tolerance} of {r.views} replayed views differ from the stored distances beyond the "
            f"{tolerance} tolerance (mean gap {r.mean_gap:.3f} nats, largest {r.max_gap:.3f} at epoch {w['epoch']}, "
            f"image {w['key']}): {cause}")

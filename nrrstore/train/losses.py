"""Student losses for DBR labels (and the baselines they are compared with).

DBR stores, per augmented view, the teacher's two distances
``d_org = CE(T(view), onehot(y))`` and ``d_aug = CE(T(view), lam*onehot(y) + (1-lam)*onehot(y'))``.
:func:`distances` is the single definition used both when the teacher's numbers are written and
when the student's are computed, so the two sides cannot drift apart. Everything is computed
in float32 from ``log_softmax`` (stable for large logits), whatever the logits' dtype.

Choices of ours (the paper does not publish them): the default norm of L_dbr is the mean
squared error over the 2 x B distances ("l2"), and ``alpha_dbr`` defaults to 1.0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nrrstore.errors import NrrError
from nrrstore.train.defaults import DBR_NORMS, STUDENT


def _lam(lam: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(lam, dtype=torch.float32, device=like.device)
    return t.expand(like.shape[0]) if t.dim() == 0 else t


def mixed_onehot(
    y: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor | float, num_classes: int
) -> torch.Tensor:
    """float32 [B, K] target ``lam * onehot(y) + (1 - lam) * onehot(y_partner)``."""
    lam_t = _lam(lam, y).unsqueeze(1)
    own = F.one_hot(y.long(), num_classes).to(torch.float32)
    other = F.one_hot(y_partner.long(), num_classes).to(torch.float32)
    return lam_t * own + (1.0 - lam_t) * other


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-sample ``-sum_k p_k log softmax(logits)_k`` in float32, shape [B]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(target_probs.float() * logp).sum(dim=-1)


def distances(
    logits: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample float32 ``(d_org, d_aug)``.

    ``d_org = CE(logits, onehot(y))`` and ``d_aug = CE(logits, lam*onehot(y) +
    (1-lam)*onehot(y_partner))``; CE is linear in its target, so
    ``d_aug = -(lam * logp[y] + (1-lam) * logp[y'])`` without building [B, K] targets.
    """
    if logits.dim() != 2:
        raise NrrError(None, f"logits must be [B, K], got shape {tuple(logits.shape)}")
    logp = F.log_softmax(logits.float(), dim=-1)
    lp_own = logp.gather(1, y.long().view(-1, 1)).squeeze(1)
    lp_other = logp.gather(1, y_partner.long().view(-1, 1)).squeeze(1)
    lam_t = _lam(lam, logits)
    d_org = -lp_own
    d_aug = -(lam_t * lp_own + (1.0 - lam_t) * lp_other)
    return d_org, d_aug


def dbr_loss(
    student_logits: torch.Tensor,
    y: torch.Tensor,
    y_partner: torch.Tensor,
    lam: torch.Tensor | float,
    d_org_t: torch.Tensor,
    d_aug_t: torch.Tensor,
    norm: str = STUDENT["dbr_norm"],
) -> torch.Tensor:
    """L_dbr: match the student's (d_org, d_aug) on a view to the teacher's stored ones.

    The 2 x B differences are reduced by ``norm``: "l2" mean squared error, "l1" mean absolute
    error, "smooth_l1" Huber with beta 1 (mean). Teacher distances are constants (no gradient);
    they may be stored in a lower precision and are widened to float32.
    """
    _check_norm(norm)
    d_org, d_aug = distances(student_logits, y, y_partner, lam)
    student = torch.cat([d_org, d_aug])
    teacher = torch.cat([d_org_t.detach().float(), d_aug_t.detach().float()]).to(student.device)
    if teacher.shape != student.shape:
        raise NrrError(None, f"teacher distances have {teacher.numel() // 2} rows, "
                             f"the batch has {student.numel() // 2}")
    return _distance_gap(student, teacher, norm)


def _check_norm(norm: str) -> None:
    if norm not in DBR_NORMS:
        raise NrrError(None, f"unknown DBR norm {norm!r}; expected one of {DBR_NORMS}")


def _distance_gap(student: torch.Tensor, teacher: torch.Tensor, norm: str) -> torch.Tensor:
    """The mean gap between the student's and the teacher's distances, by ``norm``: "l2" mean squared error,
    "l1" mean absolute error, "smooth_l1" Huber with beta 1."""
    if norm == "l2":
        return F.mse_loss(student, teacher)
    if norm == "l1":
        return F.l1_loss(student, teacher)
    return F.smooth_l1_loss(student, teacher, beta=1.0)


def sce_loss(
    logits: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor | float
) -> torch.Tensor:
    """L_sce: mean soft cross-entropy to the mixed one-hot label (the mean of d_aug)."""
    return distances(logits, y, y_partner, lam)[1].mean()


FP16_PROB_FLOOR = 2.0**-25
"""Half fp16's smallest subnormal: the largest probability that rounds to 0 in fp16."""


def kd_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor,
    T: float = 1.0,
    from_logits: bool = True,
    t_squared: bool = True,
    prob_floor: float = torch.finfo(torch.float32).tiny,
) -> torch.Tensor:
    """``KL(teacher || student) * T**2`` at temperature T, averaged over the batch (without the ``T**2``
    gradient-scale factor when ``t_squared`` is False, as RDED's evaluation computes it).
    ``prob_floor``: the least probability tempered (a zero has no logarithm). Probabilities read from fp16
    (stored soft labels) pass `FP16_PROB_FLOOR`: a class that underflowed to 0 then keeps a logit near its
    true one instead of -87, which at T = 20 moved the tempered target by up to 0.2 in total variation
    (CIFAR-10's teacher, benchmarks/RESULTS.md, issue 27).

    ``teacher`` holds logits, or probabilities when ``from_logits`` is False (then they are
    tempered as ``softmax(log p / T)``, the same as tempering the logits that produced them).
    """
    if T <= 0:
        raise NrrError(None, f"KD temperature must be > 0, got {T}")
    t_logits = teacher.float() if from_logits else torch.log(teacher.float().clamp_min(prob_floor))
    log_t = F.log_softmax(t_logits / T, dim=-1)
    log_s = F.log_softmax(student_logits.float() / T, dim=-1)
    kl = F.kl_div(log_s, log_t.detach(), reduction="batchmean", log_target=True)
    return kl * (T * T) if t_squared else kl


def dbr_objective(
    student_logits: torch.Tensor,
    y: torch.Tensor,
    y_partner: torch.Tensor,
    lam: torch.Tensor | float,
    d_org_t: torch.Tensor,
    d_aug_t: torch.Tensor,
    alpha_dbr: float = 1.0,
    norm: str = STUDENT["dbr_norm"],
) -> torch.Tensor:
    """The student's objective ``L_sce + alpha_dbr * L_dbr`` (a scalar)."""
    sce = sce_loss(student_logits, y, y_partner, lam)
    if alpha_dbr == 0:
        return sce
    dbr = dbr_loss(student_logits, y, y_partner, lam, d_org_t, d_aug_t, norm=norm)
    return sce + alpha_dbr * dbr


MIN_PARTNER_SHARE = 0.1
"""``dbrc`` targets recover the partner class's probability from ``d_aug`` only when the partner holds at least
this share of the view: below it, fp16 rounding of ``d_aug`` is amplified more than 10x."""


def codec_target(
    kind: str,
    num_classes: int,
    ids: torch.Tensor,
    values: torch.Tensor,
    y: torch.Tensor | None = None,
    y_partner: torch.Tensor | None = None,
    lam: torch.Tensor | float = 1.0,
    d_org: torch.Tensor | None = None,
    d_aug: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """The teacher distribution a label codec implies, float32 [B, C], for the KD loss.

    - ``topk``: ``ids`` [B, K] with their probabilities ``values``;
    - ``dbrc``: ``ids`` [B, K] with their distances ``values`` (``-log p``), plus the label's probability
      ``exp(-d_org)`` and, for a mixed view whose partner is not among ``ids``, the partner's from
      ``d_aug = -(lam log p_y + (1-lam) log p_y')`` (``K = 0``: DBR's two numbers alone).

    The mass left over goes to the classes the codec says nothing about: in proportion to the view's class
    prior ``lam * prior[y] + (1-lam) * prior[y']`` when ``prior`` ([C, C], the store's
    ``labels.codecs_prior``) is given, else evenly. Known probabilities that sum past 1 (fp16 rounding) are
    rescaled when some class is unknown.
    """
    b = ids.shape[0]
    dev = ids.device
    q = torch.zeros((b, num_classes), dtype=torch.float32, device=dev)
    known = torch.zeros((b, num_classes), dtype=torch.bool, device=dev)
    p = values.float() if kind == "topk" else torch.exp(-values.float())
    if ids.numel():
        q.scatter_(1, ids.long(), p)
        known.scatter_(1, ids.long(), True)
    if kind == "dbrc":
        if y is None or y_partner is None or d_org is None or d_aug is None:
            raise NrrError(None, "dbrc targets need y, y_partner, lam, d_org and d_aug")
        yl, y2 = y.long().view(-1, 1), y_partner.long().view(-1, 1)
        lam_t = _lam(lam, q).to(dev)
        q.scatter_(1, yl, torch.exp(-d_org.float().to(dev)).view(-1, 1))
        known.scatter_(1, yl, True)
        share = 1.0 - lam_t
        usable = (share >= MIN_PARTNER_SHARE) & ~known.gather(1, y2).squeeze(1)
        lp2 = -(d_aug.float().to(dev) - lam_t * d_org.float().to(dev)) / share.clamp_min(MIN_PARTNER_SHARE)
        p2 = torch.exp(lp2.clamp(max=0.0)) * usable
        q.scatter_add_(1, y2, p2.view(-1, 1))
        known.scatter_(1, y2, usable.view(-1, 1) | known.gather(1, y2))
    total = q.sum(dim=1, keepdim=True)
    # Rescaled only where a rest must be spread: KD normalizes the tempered target anyway, so a codec that stores
    # every class (top-k at K = C) gives exactly the stored soft labels' target, bit for bit.
    q = torch.where((total > 1.0) & (~known).any(dim=1, keepdim=True), q / total, q)
    rest = (1.0 - q.sum(dim=1, keepdim=True)).clamp_min(0.0)
    unknown = (~known).float()
    share = unknown / unknown.sum(dim=1, keepdim=True).clamp_min(1.0)
    if prior is not None:
        if y is None or y_partner is None:
            raise NrrError(None, "a prior fill needs the views' y and y_partner")
        lam_c = _lam(lam, q).to(dev).view(-1, 1)
        pv = (lam_c * prior[y.long()] + (1.0 - lam_c) * prior[y_partner.long()]).float() * unknown
        total_p = pv.sum(dim=1, keepdim=True)
        share = torch.where(total_p > 0, pv / total_p.clamp_min(torch.finfo(torch.float32).tiny), share)
    return q + rest * share


def codec_match_loss(
    logits: torch.Tensor,
    kind: str,
    ids: torch.Tensor,
    values: torch.Tensor,
    y: torch.Tensor,
    y_partner: torch.Tensor,
    lam: torch.Tensor | float,
    d_org: torch.Tensor | None = None,
    d_aug: torch.Tensor | None = None,
    norm: str = STUDENT["dbr_norm"],
) -> torch.Tensor:
    """L_dbr extended to every distance a codec stores: the student's ``-log softmax`` of each stored class
    matched to the teacher's (``-log p``; topk stores p), plus DBR's two distances for ``dbrc``, reduced by
    ``norm`` as :func:`dbr_loss` does. The student's objective is then ``L_sce + alpha_dbr * this``: DBR's own
    recipe, told a few more of the teacher's numbers."""
    _check_norm(norm)
    logp = F.log_softmax(logits.float(), dim=-1)
    t = values.float().detach()
    if kind == "topk":
        t = -torch.log(t.clamp_min(torch.finfo(torch.float32).tiny))
    student, teacher = [-logp.gather(1, ids.long()).flatten()], [t.flatten()]
    if kind == "dbrc":
        if d_org is None or d_aug is None:
            raise NrrError(None, "dbrc needs the teacher's d_org and d_aug")
        s_org, s_aug = distances(logits, y, y_partner, lam)
        student += [s_org, s_aug]
        teacher += [d_org.float().detach(), d_aug.float().detach()]
    return _distance_gap(torch.cat(student), torch.cat(teacher).to(logits.device), norm)

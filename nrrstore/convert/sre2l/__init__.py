"""SRe2L / FKD soft-label folders -> explicit-mode stores (images + DBR distances + view columns).

The input, as SRe2L's relabel step writes it: ``LABELS/epoch_{e}/batch_{b}.tar`` (e, b from 0), each
a ``torch.save``d list ``[coords, flip, partner, lam, box, logits]``:
``coords`` float [B, 4] = (i/H, j/W, h/H, w/W) of each view's RandomResizedCrop; ``flip`` bool [B];
``partner`` int [B], the CutMix/MixUp partner's row in the batch; ``lam`` a float; ``box``
``[x1, y1, x2, y2]`` (x indexes the *height* axis: ``images[:, :, x1:x2, y1:y2]``) or None for
MixUp; ``partner``/``lam``/``box`` are all None without mixing; ``logits`` [B, C], fp16 or fp32.
Which images a batch holds is not in the file (see :mod:`.orders`).

One module per concern: :mod:`.unpickle` (loading the pickles safely), :mod:`.folder` (scanning the
label folder), :mod:`.orders` (replaying SRe2L's sampler), :mod:`.images` (the image source and the
images store), :mod:`.rows` (one epoch's files as store rows), :mod:`.pool` (epochs in parallel)
and :mod:`.convert` (the job: resume, distance files, installation).
"""

from __future__ import annotations

from nrrstore.convert.sre2l.convert import WORK_PREFIX, convert_sre2l
from nrrstore.convert.sre2l.folder import LabelFolder, scan_label_folder
from nrrstore.convert.sre2l.orders import DEFAULT_SAMPLER_SEED, file_orders, sampler_orders
from nrrstore.convert.sre2l.rows import crop_pixels
from nrrstore.convert.sre2l.unpickle import BatchRecord, load_batch, safe_torch_load

__all__ = [
    "DEFAULT_SAMPLER_SEED", "WORK_PREFIX", "BatchRecord", "LabelFolder", "convert_sre2l", "crop_pixels", "file_orders",
    "load_batch", "safe_torch_load", "sampler_orders", "scan_label_folder",
]

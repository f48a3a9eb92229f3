"""Scanning an SRe2L label folder: ``epoch_{e}/batch_{b}.tar``, complete epochs only.

A folder still being written (its last epoch partly there) is refused with the number of complete
epochs to give (``--epochs``). The scan also fingerprints the files (relative paths and sizes), which
is what a resumed conversion checks it is resuming the same input with.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nrrstore.errors import NrrError

_EPOCH_RE = re.compile(r"^epoch_(\d+)$")
_BATCH_RE = re.compile(r"^batch_(\d+)\.tar$")


@dataclass
class LabelFolder:
    root: Path
    epochs: int
    batches: int  # per epoch
    bytes: int  # every file of the epochs used
    files: int
    digest: str  # of the relative paths and sizes of the batch files (the resume fingerprint)

    def path(self, epoch: int, batch: int) -> Path:
        return self.root / f"epoch_{epoch}" / f"batch_{batch}.tar"


def _numbered(folder: Path, pattern: re.Pattern[str], want_dir: bool) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m and (p.is_dir() if want_dir else p.is_file()):
            k = int(m.group(1))
            if k in out:
                raise NrrError(p, f"two entries number {k} ({out[k].name} and {p.name})")
            out[k] = p
    return out


def scan_label_folder(root: str | os.PathLike[str], epochs: int | None = None) -> LabelFolder:
    """Check the ``epoch_{e}/batch_{b}.tar`` layout: epochs 0..E-1, the same batches 0..nb-1 in each.

    ``epochs``: use only the first ``epochs`` epochs, which must be complete; the others may be missing
    or partly written (a relabel run still going, or killed). Without it a partly written folder is
    refused, with the number of complete epochs to give.
    """
    root = Path(root)
    if not root.is_dir():
        raise NrrError(root, "no such folder" if not root.exists() else "not a folder (expected epoch_{e}/batch_{b}.tar)")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise NrrError("--epochs", f"the number of epochs must be a positive integer, got {epochs!r}")
    found = _numbered(root, _EPOCH_RE, True)
    if not found:
        raise NrrError(root, "no epoch_{e} folders (expected SRe2L's epoch_{e}/batch_{b}.tar layout)")
    batches = {e: _numbered(folder, _BATCH_RE, False) for e, folder in found.items()}
    full = max((len(b) for b in batches.values()), default=0)

    def complete(e: int) -> bool:
        return e in batches and len(batches[e]) == full and set(batches[e]) == set(range(full))

    done = 0
    while complete(done):
        done += 1
    use = epochs if epochs is not None else max(found) + 1
    if use > done:
        bad = done
        if bad not in found:
            what = f"missing epoch folder (found epochs {_ranges(sorted(found))})"
        elif not batches[bad]:
            what = "no batch_{b}.tar files (a folder still being written?)"
        else:
            gaps = sorted(set(range(full)) - set(batches[bad]))
            what = (f"missing batch_{gaps[0]}.tar: {len(batches[bad])} of the {full} batch files of a full epoch "
                    "(a folder still being written?)")
        where = root / f"epoch_{bad}"
        if epochs is not None:
            raise NrrError(where, f"{what}; --epochs {epochs} asks for more than the {done} complete epoch(s)")
        hint = f"; convert the {done} complete epoch(s) with --epochs {done}" if done else ""
        raise NrrError(where, f"{what}{hint}")
    sizes: list[str] = []
    for e in range(use):
        sizes.extend(f"{e}/{b}:{batches[e][b].stat().st_size}" for b in range(full))
    total = files = 0
    for e in range(use):
        for dirpath, _, names in os.walk(found[e]):
            for name in names:
                total += os.path.getsize(os.path.join(dirpath, name))
                files += 1
    digest = hashlib.sha256("\n".join(sizes).encode()).hexdigest()
    return LabelFolder(root, use, full, total, files, digest)


def _ranges(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")

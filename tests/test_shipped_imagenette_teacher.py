"""The shipped Imagenette teacher (issue 27): what it records, its size, and that it recognises real photos
of the test part it never saw (the last 150 images of each class, in file order)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nrrstore.models.checkpoint import load_teacher
from nrrstore.sources.encode import resize_square
from tests.conftest import DATA, ROOT

TEACHER = DATA / "teachers" / "resnet18-imagenette.pt"
PART1 = ROOT.parent / "shared" / "data" / "imagenette-train-part1.tar"  # the first five classes
WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042", "n03425413",
         "n03445777", "n03888257"]


def test_it_records_what_distill_needs_and_fits_25_mb() -> None:
    teacher = load_teacher(TEACHER)
    assert teacher.arch == "resnet18" and teacher.image_size == 128 and teacher.in_channels == 3
    assert teacher.classes == WNIDS
    assert TEACHER.stat().st_size <= 25 * 1024 * 1024
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.model.modules())  # NRR's BN loss needs them
    assert teacher.train["crop_scale"] == [0.35, 1.0] and teacher.train["label_smoothing"] == 0.1


@pytest.mark.skipif(not PART1.is_file(), reason="Imagenette is not beside the checkout (../shared/data)")
def test_it_recognises_test_part_photos(single_thread: None) -> None:
    """The last 10 photos of each of the first five classes (inside the 150-image test part), resized as
    `prepare --resize 128 --mode RGB` does (without its JPEG encode): 38 of these 50 are right (76%; chance is
    10%; the whole test part: 78.87%, data/teachers/README.md), so a broken teacher or input path fails."""
    with tarfile.open(PART1) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile() and m.name.endswith(".JPEG"))
        chosen = [n for wnid in WNIDS[:5] for n in [x for x in names if f"/{wnid}/" in x][-10:]]
        images = [np.asarray(Image.open(io.BytesIO(tar.extractfile(n).read())).convert("RGB"))  # type: ignore[union-attr]
                  for n in chosen]
    x = torch.from_numpy(np.stack([resize_square(im, 128) for im in images])).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([WNIDS.index(Path(n).parent.name) for n in chosen])
    teacher = load_teacher(TEACHER)
    with torch.no_grad():
        pred = teacher.model(teacher.normalize(x)).argmax(1)
    assert (pred == y).float().mean() >= 0.7, (pred == y).float().mean()

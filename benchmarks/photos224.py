"""A real 224 px RGB JPEG set for throughput work: crops of scikit-image's sample photos.

Why: at 28 px everything is decode-bound and hides the data path's cost; ImageNet-scale work is
224 px JPEG. No RGB photo set of that kind can be downloaded here, so each class is one of the
photos scikit-image ships, and each image a seeded random square crop of it (a quarter to all of
its shorter side, flipped at random), resized to 224 px with PIL's antialiased bilinear filter and
saved as JPEG (quality 90, 4:2:0, as ImageNet's JPEGs are). It exercises decode, crop and resize
the way ImageNet does; it is no benchmark of accuracy.

    from photos224 import photo_jpegs, write_store, write_imagefolder
"""

from __future__ import annotations

import io
import shutil
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle",
          "hubble_deep_field", "retina")
"""The RGB photos scikit-image ships (no download needed); class i is PHOTOS[i]."""


@cache
def _photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    return np.ascontiguousarray(img[0] if isinstance(img, tuple) else img)


def photo_jpegs(n: int, size: int = 224, classes: int = 6, seed: int = 0, quality: int = 90) -> list[tuple[bytes, int]]:
    """``n`` JPEG-encoded ``size`` px RGB crops, ``(bytes, label)``, classes in turn (image i: class i % classes)."""
    if not 1 <= classes <= len(PHOTOS):
        raise ValueError(f"classes must be in 1..{len(PHOTOS)}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        c = i % classes
        photo = _photo(PHOTOS[c])
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        img = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        out.append((buf.getvalue(), c))
    return out


def class_names(classes: int) -> list[str]:
    return list(PHOTOS[:classes])


def write_store(path: Path, items: list[tuple[bytes, int]], classes: int, shard_size: int = 256,
                normalization: dict | None = None) -> Path:
    """A store holding the JPEG bytes as they are (what `import rded` / `convert-softlabels` make)."""
    from nrrstore.format.writer import StoreWriter

    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # outputs' parent folders must exist
    norm = normalization or {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with StoreWriter(path, class_names(classes), image_format="jpg", shard_size=shard_size, normalization=norm) as w:
        for i, (data, c) in enumerate(items):
            w.add_encoded(f"photo_{i:06d}", data, c)
        w.finalize()
    return path


def write_imagefolder(root: Path, files: list[tuple[bytes, int, str]], classes: int) -> list[Path]:
    """``ROOT/<class>/<name>`` files (bytes as given); returns the paths in ImageFolder order."""
    if root.exists():
        shutil.rmtree(root)
    names = class_names(classes) if classes <= len(PHOTOS) else [f"n{c:05d}" for c in range(classes)]
    paths = []
    for data, c, name in files:
        p = root / names[c] / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths.append(p)
    return sorted(paths, key=lambda p: (p.parent.name, p.name))

"""Image pass-through: converters keep the source bytes (JPEG stays JPEG, byte for byte).

Sources are real photos (scikit-image's) saved as JPEG, the way SRe2L and RDED save theirs.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nrrstore.convert.passthrough import passthrough_format
from nrrstore.convert.rded import import_rded
from nrrstore.convert.sre2l import convert_sre2l
from nrrstore.errors import NrrError
from nrrstore.format.images import decode_image, probe_image
from nrrstore.format.reader import Store
from nrrstore.format.verify import verify_store
from nrrstore.format.writer import StoreWriter
from tests._builders import write_sre2l
from tests._real import photo_crops

pytestmark = pytest.mark.usefixtures("single_thread")
CLASSES = ["astronaut", "coffee", "chelsea"]


def _jpeg(img: np.ndarray, quality: int = 75) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _members(store: Path) -> dict[str, bytes]:
    out = {}
    for shard in sorted((store / "images").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                member = tar.extractfile(info)
                assert member is not None, info.name  # shards hold regular files only
                out[info.name] = member.read()
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_import_rded_keeps_the_jpeg_bytes(tmp_path: Path) -> None:
    syn = tmp_path / "syn"
    sources = {}
    for i, (img, c) in enumerate(photo_crops(9, size=40)):
        path = syn / f"{c:05d}" / f"class{c:05d}_id{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(img))
        sources[f"c{c:05d}_{i:06d}.jpg"] = path
    summary = import_rded(syn, tmp_path / "s")
    assert summary["images_stored"] == "as is (jpg)"
    members = _members(tmp_path / "s")
    assert {k for k in members if k.endswith(".jpg")} == set(sources)
    for name, path in sources.items():
        assert _sha(members[name]) == _sha(path.read_bytes())  # the member is the source file
    m = Store(tmp_path / "s").manifest
    assert (m.image.encoding, m.image.quality, m.image.channels) == ("jpg", None, 3)
    assert verify_store(tmp_path / "s") == []
    # asked to re-encode, it does
    again = import_rded(syn, tmp_path / "png", image_format="png")
    assert again["images_stored"] == "re-encoded as png: --image-format png"
    st = Store(tmp_path / "png")
    first = min(sources)
    assert np.array_equal(st.get(first.removesuffix(".jpg")).pixels, decode_image(sources[first].read_bytes()))


def test_convert_softlabels_keeps_the_jpeg_bytes(tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    crops = photo_crops(12, size=28)
    written = []
    for i, (img, c) in enumerate(crops):
        path = images_dir / CLASSES[c] / f"img{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(img, quality=90))
        written.append((c, path))
    ordered = sorted(written, key=lambda t: (sorted(CLASSES).index(CLASSES[t[0]]), t[1].name))  # ImageFolder order
    pixels = [decode_image(p.read_bytes()) for _, p in ordered]
    labels = np.array([sorted(CLASSES).index(CLASSES[c]) for c, _ in ordered])
    grey = [p[:, :, 0] for p in pixels]  # the writer only needs shapes (its logits are random without a teacher)
    write_sre2l(tmp_path / "labels", grey, labels, ["cutmix", "cutmix"], batch=4, dtype=torch.float16, num_classes=3)
    summary = convert_sre2l(tmp_path / "labels", images_dir, tmp_path / "s", workers=0)
    assert summary["images_stored"] == "as is (jpg)"
    members = _members(tmp_path / "s")
    st = Store(tmp_path / "s")
    for row in st.index.to_pylist():
        source = images_dir / st.get(row["image"]).meta["source"]
        assert _sha(members[f"{row['key']}.jpg"]) == _sha(source.read_bytes())
    assert verify_store(tmp_path / "s") == []
    from nrrstore.train.loader import make_loader

    batch = next(iter(make_loader(tmp_path / "s", 1, 4)))  # replay decodes the stored JPEGs
    assert batch["images"].shape == (4, 3, 28, 28)


def test_sources_that_cannot_pass_through_are_re_encoded(tmp_path: Path) -> None:
    img = photo_crops(1, size=16)[0][0]
    png = io.BytesIO()
    Image.fromarray(img).save(png, format="PNG")
    rgba = io.BytesIO()
    Image.fromarray(np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])).save(rgba, format="PNG")
    pal = io.BytesIO()
    Image.fromarray(img).convert("P").save(pal, format="PNG")
    assert passthrough_format([("a", _jpeg(img)), ("b", _jpeg(img))], "keep") == ("jpg", "")
    assert passthrough_format([("a", _jpeg(img)), ("b", png.getvalue())], "keep")[1] == "the images mix jpg and png (b)"
    assert "b is not an 8-bit" in passthrough_format([("a", png.getvalue()), ("b", rgba.getvalue())], "keep")[1]
    assert probe_image(pal.getvalue()) is None and probe_image(b"not an image") is None
    assert passthrough_format([("a", _jpeg(img))], "L")[1] == "a is RGB and --mode asks for L"
    syn = tmp_path / "syn"
    (syn / "00000").mkdir(parents=True)
    (syn / "00000" / "class00000_id00000.png").write_bytes(png.getvalue())
    (syn / "00000" / "class00000_id00001.png").write_bytes(rgba.getvalue())
    summary = import_rded(syn, tmp_path / "s")
    assert summary["images_stored"].startswith("re-encoded as png:")
    assert verify_store(tmp_path / "s") == []


def test_add_encoded_checks_format_and_size(tmp_path: Path) -> None:
    a, b = (img for img, _ in photo_crops(2, size=16))
    with StoreWriter(tmp_path / "s", ["x"], image_format="jpg") as w:
        w.add_encoded("a", _jpeg(a), 0)
        with pytest.raises(NrrError, match="not a jpg image"):
            buf = io.BytesIO()
            Image.fromarray(b).save(buf, format="PNG")
            w.add_encoded("b", buf.getvalue(), 0)
        with pytest.raises(NrrError, match="differs from the store's"):
            w.add_encoded("c", _jpeg(np.zeros((8, 8, 3), np.uint8)), 0)
        w.finalize()
    assert Store(tmp_path / "s").manifest.image.quality is None  # not encoded here: unknown
    with StoreWriter(tmp_path / "q", ["x"], image_format="jpg") as w:
        w.add_image("a", a, 0)
        w.finalize()
    assert Store(tmp_path / "q").manifest.image.quality == 95  # the quality really used


def test_import_rded_with_a_teacher_stages_the_passed_through_store(tmp_path: Path) -> None:
    """Pass-through (perf) inside the staged import (rel): JPEG bytes kept, relabelled, put in place only
    when both succeed; a grey teacher needs grey images, so RGB JPEGs are re-encoded, and says so."""
    from nrrstore.models import load_teacher
    from tests._teacher import teacher_path

    syn = tmp_path / "syn"
    for i, (img, c) in enumerate(photo_crops(6, size=32)):
        path = syn / f"{c:05d}" / f"class{c:05d}_id{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(img))
    rgb = load_teacher("convnet3", num_classes=3, image_size=32, arch_kwargs={"width": 8},
                       normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    summary = import_rded(syn, tmp_path / "s", teacher=rgb, epochs=2, relabel_options={"batch_size": 4})
    assert summary["images_stored"] == "as is (jpg)" and summary["relabel"]["store"] == str(tmp_path / "s")
    assert Store(tmp_path / "s").manifest.labels["distances"]["epochs"] == 2 and verify_store(tmp_path / "s") == []
    assert not list(tmp_path.glob(".import-*")) and not list(tmp_path.glob(".lock-*"))
    # a relabel that fails after the images are written leaves no store at all (and no stage)
    with pytest.raises(NrrError, match="unknown precision 'fp8'"):
        import_rded(syn, tmp_path / "f", teacher=rgb, epochs=1, relabel_options={"precision": "fp8"})
    assert not (tmp_path / "f").exists() and not list(tmp_path.glob(".import-*"))
    grey = load_teacher(teacher_path())
    names = ["0", "1", "2"] + [f"c{k}" for k in range(3, 10)]
    summary = import_rded(syn, tmp_path / "g", classes=names, teacher=grey, epochs=1, relabel_options={"batch_size": 4})
    assert summary["images_stored"].startswith("re-encoded as png: ") and "--mode asks for L" in summary["images_stored"]

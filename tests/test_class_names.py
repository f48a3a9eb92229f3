"""No silent class mapping (issue 17): shards or a store whose class names differ from the teacher's are
labelled by index with a warning that shows the mapping used."""

from __future__ import annotations

from pathlib import Path

import pytest

from nrrstore.errors import NrrWarning
from nrrstore.format.writer import StoreWriter
from nrrstore.labels.relabel import relabel
from nrrstore.models.checkpoint import class_mapping_warning
from nrrstore.replay.recipe import AugRecipe
from tests._real import fmnist


def test_relabel_warns_with_the_mapping_it_uses(tmp_path: Path, teacher) -> None:
    store = tmp_path / "s"
    with StoreWriter(store, [str(i) for i in range(10)], shard_size=16) as w:  # `prepare idx` without --classes
        for key, img, label in fmnist("train", 2):
            w.add_image(key, img, label, {"source": key})
        w.finalize()
    with pytest.warns(NrrWarning, match=r"class i was taken as the teacher's class i: '0' -> '"):
        relabel(store, teacher, 1, AugRecipe(size=28, group_size=10, seed=0), batch_size=20)


def test_no_warning_when_names_agree_or_are_missing(teacher) -> None:
    assert class_mapping_warning(teacher, list(teacher.classes), "x") is None
    assert class_mapping_warning(teacher, None, "x") is None
    text = class_mapping_warning(teacher, [f"c{i}" for i in range(teacher.num_classes)], "the shards")
    assert text is not None and "(10 differ)" in text and text.count("->") == 3

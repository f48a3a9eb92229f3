"""size-report: bytes per component, label-scheme costs, extrapolation, source size and the chart."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nrrstore.convert.rded import import_rded
from nrrstore.convert.size_report import _report_figure, label_costs, plot_report, size_report
from nrrstore.convert.sre2l import convert_sre2l
from nrrstore.errors import NrrError
from tests._builders import du, make_app, make_fixture, write_rded
from tests._teacher import one_thread


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("sr")
    with one_thread():
        fx = make_fixture(root / "fx", ["cutmix"] * 4, per_class=3, batch=8, dtype=torch.float16)
        convert_sre2l(fx.labels_dir, fx.images_dir, root / "s", keep_full=True, epochs_per_file=3)
    return root / "s", fx


def test_components_costs_and_source(converted) -> None:
    store, fx = converted
    r = size_report(store, ipc=[10, 50, 200], epochs=300, topk=5)
    files = {p.relative_to(store).as_posix(): p.stat().st_size for p in store.rglob("*") if p.is_file()}
    assert r["total_bytes"] == sum(files.values())
    assert r["components"]["manifest"] == files["manifest.json"]
    assert r["components"]["distances"] == sum(v for k, v in files.items() if k.endswith(".parquet") and "labels/" in k)
    assert r["components"]["softlabels"] == sum(v for k, v in files.items() if "softlabels.zarr" in k)
    assert r["components"]["images"] == files["images/shard-000000.tar"]
    n, e, c = 30, 4, 10
    assert (r["num_images"], r["epochs"], r["views"]) == (n, e, n * e)
    assert r["label_costs"] == {"full_fp32": n * e * c * 4, "full_fp16": n * e * c * 2, "topk": n * e * 5 * 4,
                                "dbr_fp16": n * e * 4, "dbr_int8": n * e * 2, "onehot": n * 2,
                                "stored": r["components"]["distances"]}
    assert r["stored_bytes_per_view"] == pytest.approx(r["components"]["distances"] / (n * e))
    in50 = next(x for x in r["extrapolation"] if x["ipc"] == 50)
    assert in50["views"] == 1000 * 50 * 300
    assert in50["label_costs"]["full_fp16"] == 30_000_000_000  # SRe2L/FKD soft labels: 30 GB
    assert in50["label_costs"]["dbr_fp16"] == 60_000_000 and in50["label_costs"]["onehot"] == 100_000
    assert in50["label_costs"]["topk"] == 15_000_000 * 5 * 4
    src = r["source"]
    assert src["folder_bytes"] == du(fx.labels_dir) and src["images_bytes"] == du(fx.images_dir)
    assert src["total_bytes"] == src["folder_bytes"] + src["images_bytes"]
    assert src["store_vs_source"] == pytest.approx(r["total_bytes"] / src["total_bytes"])


def test_label_costs_index_width_and_bad_arguments(converted) -> None:
    assert label_costs(10, 2, 40000, topk=3)["topk"] == 20 * 3 * (2 + 4)  # int32 indices beyond 32768 classes
    assert label_costs(10, 2, 40000)["onehot"] == 40
    with pytest.raises(NrrError, match="IPC values"):
        size_report(converted[0], ipc=[0])


def test_store_without_labels_uses_the_epochs_option(tmp_path: Path) -> None:
    write_rded(tmp_path / "syn", [0, 1], ipc=2)
    import_rded(tmp_path / "syn", tmp_path / "s")
    r = size_report(tmp_path / "s", epochs=7, ipc=[1])
    assert (r["epochs_stored"], r["epochs"], r["views"]) == (0, 7, 28)
    assert "stored" not in r["label_costs"] and r["stored_bytes_per_view"] is None
    assert r["source"]["format"] == "rded" and r["source"]["images_bytes"] == 0
    assert r["source"]["folder_bytes"] == sum(p.stat().st_size for p in (tmp_path / "syn").rglob("*.jpg"))


def test_plot_is_a_log_scale_bar_chart(converted, tmp_path: Path) -> None:
    from matplotlib.container import BarContainer

    r = size_report(converted[0], ipc=[10, 200])
    fig = _report_figure(r)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    bars = {c.get_label(): [p.get_width() for p in c.patches] for c in ax.containers if isinstance(c, BarContainer)}
    titles = ["full fp32", "full fp16", f"top-{r['topk']}", "DBR fp16", "DBR int8", "one-hot", "stored (measured)"]
    assert list(bars) == titles and all(len(v) == 3 for v in bars.values())  # this store + 2 extrapolations
    schemes = ("full_fp32", "full_fp16", "topk", "dbr_fp16", "dbr_int8", "onehot")
    assert [bars[t][0] for t in titles[:6]] == [r["label_costs"][s] for s in schemes]  # bar length = bytes
    at_scale = [bars[t][-1] for t in titles[:6]]  # IPC 200 of 1000 classes: full fp32 > fp16 > top-k > DBR > one-hot
    assert at_scale == [r["extrapolation"][-1]["label_costs"][s] for s in schemes]
    assert at_scale == sorted(at_scale, reverse=True) and len(set(at_scale)) == 6
    assert next(t.get_text() for t in ax.get_yticklabels()) == "this store"


@pytest.mark.parametrize(("ext", "magic"), [("png", b"\x89PNG\r\n\x1a\n"), ("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_plot_format_follows_the_extension_and_is_reproducible(converted, tmp_path: Path, ext, magic) -> None:
    r = size_report(converted[0], ipc=[10, 200])
    first = plot_report(r, tmp_path / f"chart.{ext}").read_bytes()
    assert first.startswith(magic)
    assert plot_report(r, tmp_path / f"chart.{ext}", overwrite=True).read_bytes() == first  # same inputs, same bytes
    assert [p.name for p in tmp_path.iterdir()] == [f"chart.{ext}"]  # written under a temporary name, renamed
    if ext == "svg":
        text = first.decode()
        assert "<svg" in text and "label bytes per scheme" in text
        for title in ("full fp32", "DBR int8", "one-hot", "stored (measured)", "this store", "IPC 200"):
            assert f">{title}<" in text, title  # the legend and the groups, as text


@pytest.mark.parametrize("name", ["chart.jpg", "chart", "chart.PNG.txt"])
def test_plot_refuses_other_extensions_before_writing(converted, tmp_path: Path, name) -> None:
    r = size_report(converted[0], ipc=[10])
    with pytest.raises(NrrError) as err:
        plot_report(r, tmp_path / name)
    assert str(tmp_path / name) in err.value.message and ".png, .pdf, .svg" in err.value.message
    assert "\n" not in err.value.message and not any(tmp_path.iterdir())
    assert plot_report(r, tmp_path / "chart.PNG").read_bytes()[:4] == b"\x89PNG"  # the case does not matter


def test_plot_without_matplotlib_is_one_line_before_any_work(converted, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails, as when not installed
    r = size_report(converted[0], ipc=[10])  # the report itself needs no matplotlib
    with pytest.raises(NrrError, match=r"the chart needs matplotlib: pip install 'nrrstore\[plots\]'"):
        plot_report(r, tmp_path / "c.png")
    res = CliRunner().invoke(make_app(), ["size-report", str(converted[0]), "--plot", str(tmp_path / "c.png")])
    assert res.exit_code == 1 and res.stdout == "" and "Traceback" not in res.output
    assert res.stderr.strip().splitlines() == [
        f"nrrstore: {tmp_path / 'c.png'}: the chart needs matplotlib: pip install 'nrrstore[plots]'"]
    res = CliRunner().invoke(make_app(), ["size-report", str(converted[0])])
    assert res.exit_code == 0 and "this store" in res.stdout  # everything but the chart still works
    assert not any(tmp_path.iterdir())


def test_cli_size_report(converted, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(make_app(), ["size-report", str(converted[0]), "--ipc", "10", "--ipc", "50", "--json",
                                     "--plot", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.stdout)
    assert [x["ipc"] for x in r["extrapolation"]] == [10, 50] and (tmp_path / "c.png").is_file()
    res = runner.invoke(make_app(), ["size-report", str(converted[0])])
    assert res.exit_code == 0, res.stderr
    assert "converted from sre2l" in res.stdout and "IPC 200" in res.stdout and "30.0 GB" in res.stdout
    res = runner.invoke(make_app(), ["size-report", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and res.stderr.strip().endswith("no such store")

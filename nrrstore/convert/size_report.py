"""What a store costs on disk, and what its labels would cost stored the ways other methods store them.

Label schemes compared, for V views (images x epochs) of N images and C classes:
- ``full_fp32`` / ``full_fp16``: the whole soft label of every view (SRe2L/FKD, KD): V*C*4 / V*C*2;
- ``topk``: FKD's compressed form, k fp16 values + k class indices (int16 when C <= 32768, else
  int32) per view: V*k*(2+2|4);
- ``dbr_fp16`` / ``dbr_int8``: DBR's two distances per view: V*4 / V*2;
- ``onehot``: one class index per *image* (int16 or int32), whatever the epochs: N*2|4.
These are the label values alone, without container overhead or augmentation metadata (seeded stores
need none; explicit-mode stores carry view columns, which the measured ``stored`` figure includes).
The same schemes are extrapolated to ImageNet-1K (by default) at several IPC and 300 epochs.

The measured ``stored`` figure is extrapolated in two parts, read from the Parquet metadata: the
*value* data (distances, and the view columns of explicit stores) scales per view; the rest (file
footers, page headers, the ``epoch`` and ``image`` columns) is a *fixed* cost per stored epoch.
Scaling the total per view instead made a tiny store's fixed overhead look like a per-view cost: from
20 images x 20 epochs it predicted 5.8x the distance bytes of 1000 images x 20 epochs; this split
predicts 1.13x (tiny stores still compress their values worse than large ones).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nrrstore.errors import NrrError
from nrrstore.format import fs
from nrrstore.format.codecs import codec_bytes, full_bytes_per_view, parse_codec
from nrrstore.format.distances import split_bytes
from nrrstore.format.reader import Store
from nrrstore.units import human_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCHEMES = ("full_fp32", "full_fp16", "topk", "dbr_fp16", "dbr_int8", "onehot")


def label_costs(images: int, epochs: int, classes: int, topk: int = 10) -> dict[str, int]:
    """Bytes of each label scheme for ``images`` images seen for ``epochs`` epochs over ``classes`` classes."""
    views = images * epochs
    index_bytes = 2 if classes <= 32768 else 4
    k = min(topk, classes)
    return {
        "full_fp32": views * classes * 4, "full_fp16": views * classes * 2, "topk": views * k * (2 + index_bytes),
        "dbr_fp16": views * 4, "dbr_int8": views * 2, "onehot": images * index_bytes,
    }


def size_report(
    store: str | os.PathLike[str],
    *,
    classes: int = 1000,
    ipc: Sequence[int] = (10, 50, 200),
    epochs: int = 300,
    topk: int = 10,
) -> dict[str, Any]:
    """Bytes per component of ``store``, its labels' cost in every scheme, and an extrapolation.

    The store's own views are its stored epochs (distances, else soft labels), or ``epochs`` when
    it stores none. Extrapolation: ``classes`` classes at each ``ipc`` for ``epochs`` epochs, with
    the store's measured distance bytes per view scaled up as ``stored`` (an estimate: Parquet
    overhead per file and per row group shrinks with more images).
    """
    for name, v in (("classes", classes), ("epochs", epochs), ("top-k", topk)):
        if v < 1:
            raise NrrError(None, f"{name} must be at least 1, got {v}")
    if not ipc or min(ipc) < 1:
        raise NrrError(None, f"IPC values must be at least 1, got {list(ipc)}")
    st = Store(store)
    m = st.manifest
    components: dict[str, int] = {}
    for f in m.files:
        components[f.kind] = components.get(f.kind, 0) + f.bytes
    manifest_bytes = fs.file_size(st.manifest_path)
    components["manifest"] = manifest_bytes
    total = sum(components.values())
    dist = m.labels.get("distances") or {}
    soft = m.labels.get("softlabels") or {}
    stored_epochs = int(dist.get("epochs") or (soft.get("shape") or [0])[0] or 0)
    n_epochs = stored_epochs or epochs
    views = m.num_images * n_epochs
    costs = label_costs(m.num_images, n_epochs, m.num_classes, topk)
    stored_label_bytes = components.get("distances", 0)
    if stored_label_bytes:
        costs["stored"] = stored_label_bytes
    per_view = stored_label_bytes / views if stored_label_bytes and stored_epochs else None
    value_per_view = fixed_per_epoch = None
    if per_view is not None and dist:
        value, fixed = split_bytes(st)
        value_per_view, fixed_per_epoch = value / views, fixed / stored_epochs
    extrapolation = []
    for n_ipc in ipc:
        images = classes * int(n_ipc)
        row = label_costs(images, epochs, classes, topk)
        if value_per_view is not None and fixed_per_epoch is not None:
            row["stored"] = round(value_per_view * images * epochs + fixed_per_epoch * epochs)
        extrapolation.append({"classes": classes, "ipc": int(n_ipc), "epochs": epochs, "images": images,
                              "views": images * epochs, "label_costs": row})
    codecs = codec_report(m, views, classes, [classes * int(n) * epochs for n in ipc])
    source = None
    if m.source.get("bytes") is not None:
        total_src = int(m.source.get("total_bytes", m.source["bytes"]))
        source = {"format": m.source.get("format"), "path": m.source.get("path"), "folder_bytes": int(m.source["bytes"]),
                  "images_bytes": int((m.source.get("images") or {}).get("bytes", 0)), "total_bytes": total_src,
                  "store_vs_source": total / total_src if total_src else None}
    return {
        "store": str(store), "num_images": m.num_images, "num_classes": m.num_classes,
        "epochs": n_epochs, "epochs_stored": stored_epochs, "views": views, "topk": topk,
        "components": components, "total_bytes": total,
        "label_costs": costs, "stored_bytes_per_view": per_view,
        "stored_value_bytes_per_view": value_per_view, "stored_fixed_bytes_per_epoch": fixed_per_epoch,
        "distances": {k: dist.get(k) for k in ("precision", "mode")} if dist else None,
        "source": source, "extrapolation": extrapolation, "codecs": codecs,
    }


def codec_report(m: Any, views: int, classes: int, extrapolated_views: list[int]) -> list[dict[str, Any]]:
    """Per label codec the store holds: measured bytes (per view and per store), and the formula's bytes per
    view at this store's classes and at ``classes`` (with the store total at each extrapolated view count),
    against fp16 full soft labels at ``classes`` (LPLD's yardstick is 1/40 of it)."""
    out = []
    for name, measured in codec_bytes(m).items():
        c = parse_codec(name)
        at = c.raw_bytes_per_view(classes)
        out.append({"codec": name, "measured_bytes": measured, "measured_bytes_per_view": measured / max(1, views),
                    "formula_bytes_per_view": c.raw_bytes_per_view(m.num_classes), "formula_bytes_per_view_at": at,
                    "classes_at": classes, "vs_full_fp16_at": at / full_bytes_per_view(classes),
                    "extrapolated_bytes": [round(at * v) for v in extrapolated_views]})
    return out


def format_report(r: dict[str, Any]) -> str:
    """The report as aligned text (decimal units: 1 MB = 10^6 bytes, see `nrrstore.units`)."""
    k = r["topk"]
    lines = [f"store {r['store']}: {r['num_images']} images, {r['num_classes']} classes, {r['epochs']} epochs"
             + ("" if r["epochs_stored"] else " (none stored: --epochs assumed)") + f" = {r['views']} views"]
    lines.append("  on disk: " + ", ".join(f"{kind} {human_bytes(b)}" for kind, b in sorted(r["components"].items()))
                 + f"; total {human_bytes(r['total_bytes'])}")
    if r["source"]:
        s = r["source"]
        ratio = f" (store is {s['store_vs_source'] * 100:.2f}% of it)" if s["store_vs_source"] else ""
        images = f" + images {human_bytes(s['images_bytes'])}" if s["images_bytes"] else ""
        lines.append(f"  converted from {s['format']} {s['path']}: {human_bytes(s['folder_bytes'])}{images}, "
                     f"total {human_bytes(s['total_bytes'])}{ratio}")
    header = ["", *_scheme_titles(k)]
    rows = [["this store", *(_cell(r["label_costs"], s) for s in (*SCHEMES, "stored"))]]
    for e in r["extrapolation"]:
        rows.append([f"{e['classes']} cls IPC {e['ipc']} x {e['epochs']} ep",
                     *(_cell(e["label_costs"], s) for s in (*SCHEMES, "stored"))])
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
    lines.append("  labels stored as:")
    for row in [header, *rows]:
        lines.append("    " + "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    if r["stored_bytes_per_view"] is not None:
        d = r["distances"] or {}
        lines.append(f"  stored distances ({d.get('precision')}, {d.get('mode')}): {r['stored_bytes_per_view']:.2f} B/view "
                     f"in this store = {r['stored_value_bytes_per_view']:.2f} B/view of values + a fixed "
                     f"{human_bytes(r['stored_fixed_bytes_per_epoch'])} per epoch (Parquet footers, epoch and image columns)")
        lines.append("  'stored' extrapolates the values per view and the fixed part per epoch (an estimate: "
                     "compression varies with the data)")
    lines += _codec_lines(r)
    return "\n".join(lines)


def _codec_lines(r: dict[str, Any]) -> list[str]:
    if not r.get("codecs"):
        return []
    at = r["codecs"][0]["classes_at"]
    ipcs = [e["ipc"] for e in r["extrapolation"]]
    header = ["codec", "measured", "B/view", "formula B/view", f"at {at} cls", "of full fp16",
              *(f"IPC {n}" for n in ipcs)]
    rows = [[c["codec"], human_bytes(c["measured_bytes"]), f"{c['measured_bytes_per_view']:.2f}",
             f"{c['formula_bytes_per_view']:g}", f"{c['formula_bytes_per_view_at']:g}",
             f"1/{1 / c['vs_full_fp16_at']:.0f}" if c["vs_full_fp16_at"] < 1 else "1",
             *(human_bytes(b) for b in c["extrapolated_bytes"])] for c in r["codecs"]]
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
    lines = [f"  label codecs held (measured, and the formula at {at} classes, {r['extrapolation'][0]['epochs']} "
             "epochs, values only):" if r["extrapolation"] else "  label codecs held:"]
    for row in [header, *rows]:
        lines.append("    " + "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                                       for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return lines


def _scheme_titles(k: int) -> list[str]:
    return ["full fp32", "full fp16", f"top-{k}", "DBR fp16", "DBR int8", "one-hot", "stored (measured)"]


def _cell(costs: dict[str, int], scheme: str) -> str:
    return human_bytes(costs[scheme]) if scheme in costs else "-"


# -- the chart ------------------------------------------------------------------------------------------
# One colour per scheme, in SCHEMES order then "stored" (colour-blind safe: Okabe-Ito, grey for one-hot).
_COLORS = ["#0072b2", "#56b4e9", "#e69f00", "#009e73", "#cc79a7", "#999999", "#d55e00"]


def plot_report(r: dict[str, Any], path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Grouped horizontal bars of label bytes (log scale), one group per scenario (this store, then each
    extrapolation), one bar per scheme; the format comes from ``path``'s extension (.png, .pdf, .svg).

    An existing ``path`` is refused unless ``overwrite``. Log scale: the schemes differ by orders of
    magnitude (one-hot vs full soft labels), which a linear axis would flatten to nothing.
    """
    from nrrstore.plots import draw_chart

    return draw_chart(path, overwrite, lambda: _report_figure(r))


def _report_figure(r: dict[str, Any]) -> Figure:
    from nrrstore.plots import log_tick_labels, new_figure

    schemes = [*SCHEMES, "stored"]
    titles = _scheme_titles(r["topk"])
    groups = [("this store", r["label_costs"])] + [(f"IPC {e['ipc']}\n({e['classes']} classes, {e['epochs']} epochs)",
                                                    e["label_costs"]) for e in r["extrapolation"]]
    step = len(schemes) + 1  # a blank row between groups
    fig = new_figure(9.0, 1.2 + 0.17 * step * len(groups))
    ax = fig.subplots()
    values = []
    for s, (scheme, title) in enumerate(zip(schemes, titles, strict=True)):
        rows = [(g * step + s, v) for g, (_, costs) in enumerate(groups) if (v := costs.get(scheme))]
        if not rows:
            continue
        ys, vs = [y for y, _ in rows], [v for _, v in rows]
        ax.barh(ys, vs, height=0.85, color=_COLORS[s], label=title, zorder=2)
        for y, v in rows:
            ax.annotate(human_bytes(v), (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        values.extend(vs)
    lo = math.floor(math.log10(max(1.0, min(values) * 0.8)))  # the shortest bar keeps a visible length
    hi = math.ceil(math.log10(max(values) + 1))
    ax.set_xscale("log")
    ax.set_xlim(10 ** lo, 10 ** max(hi, lo + 1) * 1.5)  # room for the value written after the longest bar
    log_tick_labels(ax.xaxis, [10 ** lo, 10 ** hi], lambda v: human_bytes(v).replace(".0 ", " "))
    ax.set_yticks([g * step + (len(schemes) - 1) / 2 for g in range(len(groups))], [name for name, _ in groups])
    ax.set_ylim(len(groups) * step - 1, -1)  # the first group on top, in the legend's order
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", alpha=0.3, zorder=0)
    ax.set_xlabel("label bytes (log scale)")
    store = str(r["store"])
    ax.set_title(f"label bytes per scheme: {store if len(store) <= 70 else '...' + store[-67:]}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="scheme")
    return fig

"""Charts: `evaluate`'s accuracy chart, and what every chart writer shares (formats, style, atomic save).

Drawn with matplotlib, an optional extra (``pip install 'nrrstore[plots]'``): it is imported only inside
the functions that draw, so the rest of nrrstore works without it, and asking for a chart without it is
one `NrrError` line before any work. The file extension decides the format (.png, .pdf, .svg); any other
is refused at the door, never written as PNG bytes under a misleading name.

`evaluate`'s chart. Left: bars of top-1 per label kind and image set, error bars the std over seeds.
Right, when the store was evaluated with two or more label kinds that cost bytes: top-1 against label
bytes per view on a log axis, one point per kind (error bar = std over seeds), the accuracy-per-byte
front joined, one-hot labels (no bytes per view) as a dashed line.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nrrstore.errors import NrrError, os_errors_name
from nrrstore.format.atomic import atomic_open
from nrrstore.format.outputs import check_output_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Extension -> matplotlib format name. Raster PNG for viewing, PDF and SVG for papers (vector, text kept).
CHART_FORMATS: Mapping[str, str] = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
NEEDS_MATPLOTLIB = "the chart needs matplotlib: pip install 'nrrstore[plots]'"
PNG_DPI = 150

# matplotlib stamps its version and the time into every file; without them the same inputs give the same
# bytes (a chart can be checked in and diffed). SVG ids are hashed from svg.hashsalt (random otherwise).
_METADATA: Mapping[str, Mapping[str, Any]] = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}
_RC: dict[Any, Any] = {  # keys: matplotlib's typed rcParams names
    "svg.hashsalt": "nrrstore",
    "svg.fonttype": "none",  # text stays text: searchable and selectable, and much smaller than glyph paths
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
_SET_COLOURS = {"store": "#3465a4", "random": "#cc7926"}
_SET_NAMES = {"store": "distilled store", "random": "random real images"}
_FRONT, _BEATEN = "#3465a4", "#cc7926"


def output_format(path: str | os.PathLike[str], formats: Mapping[str, str] = CHART_FORMATS,
                  what: str = "chart") -> str:
    """The format ``path``'s extension names, or an `NrrError` listing the extensions ``formats`` allows."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        allowed = ", ".join(formats)
        got = f"'{suffix}'" if suffix else "no extension"
        raise NrrError(path, f"the file extension decides the {what}'s format: give one of {allowed} (not {got})")
    return formats[suffix]


def require_matplotlib(path: str | os.PathLike[str] | None = None) -> None:
    """One line naming the extra to install, instead of an ImportError traceback after the work."""
    try:
        import matplotlib  # noqa: F401 - only whether it imports
    except ImportError:
        raise NrrError(path, NEEDS_MATPLOTLIB) from None


def check_chart_output(path: str | os.PathLike[str], overwrite: bool, *,
                       inputs: Sequence[Any] | Mapping[str, Any] = ()) -> str:
    """Everything a chart path must pass before any work (its format, matplotlib, the file checks of
    `check_output_file`); returns the format. Commands call it at the door, the writers again."""
    fmt = output_format(path)
    require_matplotlib(path)
    check_output_file(path, overwrite, inputs=inputs, option="--plot")
    return fmt


@contextlib.contextmanager
def chart_style() -> Iterator[None]:
    """matplotlib's defaults plus ours, whatever the user's matplotlibrc says: the same chart everywhere.

    Scoped (restored on exit) rather than set globally: nrrstore is also a library in someone's notebook.
    """
    import matplotlib as mpl
    from matplotlib import style

    with style.context("default"), mpl.rc_context(dict(_RC)):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (no pyplot, no GUI, no global figure list), laid out so nothing overlaps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], fmt: str) -> Path:
    """Write ``fig`` atomically (a temporary name, then a rename) in ``fmt``, without volatile metadata.

    ``bbox_inches="tight"`` grows the saved area to every title, label and legend: nothing is clipped.
    Call inside `chart_style` (the SVG writer reads its hash salt at save time).
    """
    path = Path(path)
    with os_errors_name(path), atomic_open(path) as f:
        fig.savefig(f, format=fmt, dpi=PNG_DPI, bbox_inches="tight", pad_inches=0.1,
                    metadata=dict(_METADATA[fmt]))
    return path


def draw_chart(path: str | os.PathLike[str], overwrite: bool, draw: Callable[[], Figure], *,
               inputs: Sequence[Any] | Mapping[str, Any] = ()) -> Path:
    """Check ``path``, build the figure with ``draw`` and save it: the one procedure of every chart."""
    fmt = check_chart_output(path, overwrite, inputs=inputs)
    with chart_style():
        return save_figure(draw(), path, fmt)


def log_tick_labels(axis: Any, values: Sequence[float], fmt: Callable[[float], str]) -> None:
    """Plain numbers on a log axis (``20``, not ``2 x 10^1``), and the 2 and 5 between powers of ten when
    the data spans too few decades for the powers alone to be read."""
    from matplotlib.ticker import FuncFormatter

    span = math.log10(max(values) / min(values)) if values and min(values) > 0 else 0.0
    minor = set(range(2, 10)) if span < 0.5 else {2, 3, 5} if span < 1.2 else {2, 5} if span < 2.5 else set()

    def label_minor(v: float, _pos: Any) -> str:
        return fmt(v) if v > 0 and round(v / 10 ** math.floor(math.log10(v) + 1e-9)) in minor else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v)))
    axis.set_minor_formatter(FuncFormatter(label_minor))


# -- evaluate's chart --------------------------------------------------------------------------------------

def plot_result(result: dict[str, Any], path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """The chart of an `evaluate` result (format from the extension); an existing ``path`` needs ``overwrite``."""
    return draw_chart(path, overwrite, lambda: _result_figure(result))


def _result_figure(result: dict[str, Any]) -> Figure:
    per_view = (result.get("label_bytes") or {}).get("codecs") or {}
    store = result["table"].get("store", {})
    points = [(k, float(per_view[k]), c["mean"], c["std"]) for k, c in store.items() if per_view.get(k)]
    bars_w = 2.6 + 1.1 * max(1, len(result["labels"]))
    if len(points) < 2:
        fig = new_figure(bars_w, 4.2)
        _draw_bars(fig.subplots(), result)
        return fig
    fig = new_figure(bars_w + 6.2, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[bars_w, 4.4])
    _draw_bars(left, result)
    onehot = store.get("onehot")
    _draw_front(right, points, None if onehot is None else onehot["mean"],
                f"accuracy per label byte, IPC {result['ipc']}")
    return fig


def _draw_bars(ax: Axes, result: dict[str, Any]) -> None:
    """Bars of top-1 (mean, %) with std error bars per label kind and image set, the mean written above."""
    kinds = list(result["labels"])
    sets = list(result["table"])
    width = 0.8 / max(1, len(sets))
    top = 0.0
    for j, images in enumerate(sets):
        cells = [(g, result["table"][images][k]) for g, k in enumerate(kinds) if k in result["table"][images]]
        if not cells:
            continue
        xs = [g + (j - (len(sets) - 1) / 2) * width for g, _ in cells]
        means = [c["mean"] * 100 for _, c in cells]
        stds = [c["std"] * 100 for _, c in cells]
        ax.bar(xs, means, width * 0.9, yerr=stds, capsize=3, color=_SET_COLOURS.get(images, "0.55"),
               error_kw={"elinewidth": 1, "ecolor": "black"}, label=_SET_NAMES.get(images, images), zorder=2)
        for x, m, s in zip(xs, means, stds, strict=True):
            ax.annotate(f"{m:.1f}", (x, m + s), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7)
            top = max(top, m + s)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_xlim(-0.6, len(kinds) - 0.4)
    ax.set_ylim(0, max(100.0, top) * 1.08)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_xlabel("label kind")
    ax.set_ylabel("student top-1 (%)")
    ax.set_title(f"student top-1, IPC {result['ipc']}, {result['seeds']} seed(s) (mean ± std)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def front_of(points: list[tuple[str, float, float, float]]) -> list[str]:
    """The label kinds no other kind beats: none costs at most their bytes per view with a higher mean."""
    return [n for n, b, m, _ in points if not any(b2 <= b and m2 > m for n2, b2, m2, _ in points if n2 != n)]


def plot_front(points: list[tuple[str, float, float, float]], onehot: float | None, title: str,
               path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Top-1 against bytes per view (log x) alone, as a file: ``points`` are (name, bytes per view, mean,
    std), fractions; ``onehot`` the one-hot mean (a dashed line), if known."""
    def draw() -> Figure:
        fig = new_figure(6.4, 4.2)
        _draw_front(fig.subplots(), points, onehot, title)
        return fig

    return draw_chart(path, overwrite, draw)


def _draw_front(ax: Axes, points: list[tuple[str, float, float, float]], onehot: float | None, title: str) -> None:
    on_front = set(front_of(points))
    front = sorted((b, m * 100) for n, b, m, _ in points if n in on_front)
    ax.plot([b for b, _ in front], [m for _, m in front], "-", color=_FRONT, lw=1.5, zorder=2,
            label="front: no kind costs less and scores higher")
    for on, colour, label in ((True, _FRONT, "on the front"), (False, _BEATEN, "beaten by a kind costing no more")):
        group = [p for p in points if (p[0] in on_front) == on]
        if group:
            ax.errorbar([b for _, b, _, _ in group], [m * 100 for _, _, m, _ in group],
                        yerr=[s * 100 for _, _, _, s in group], fmt="o", color=colour, ecolor="black",
                        elinewidth=1, capsize=3, label=label, zorder=3)
    for name, b, m, _ in points:
        ax.annotate(f"{name} {m * 100:.1f}", (b, m * 100), xytext=(5, 4), textcoords="offset points", fontsize=7)
    if onehot is not None:
        ax.axhline(onehot * 100, ls="--", lw=1, color="0.45", zorder=1,
                   label=f"one-hot {onehot * 100:.1f} (no label bytes)")
    ax.set_xscale("log")
    log_tick_labels(ax.xaxis, [b for _, b, _, _ in points], lambda v: f"{v:g}")
    ax.margins(x=0.15, y=0.12)
    ax.grid(which="major", alpha=0.3)
    ax.set_xlabel("label bytes per view (log scale)")
    ax.set_ylabel("student top-1 (%)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

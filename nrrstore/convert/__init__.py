"""Bringing existing distilled data into nrrstore (SRe2L soft labels, RDED images) and out again."""

from __future__ import annotations

from nrrstore.convert.export import export_imagefolder, folder_names
from nrrstore.convert.rded import import_rded, list_rded
from nrrstore.convert.size_report import (
    format_report,
    label_costs,
    plot_report,
    size_report,
)
from nrrstore.convert.sre2l import (
    convert_sre2l,
    load_batch,
    safe_torch_load,
    scan_label_folder,
)

__all__ = [
    "convert_sre2l",
    "export_imagefolder",
    "folder_names",
    "format_report",
    "import_rded",
    "label_costs",
    "list_rded",
    "load_batch",
    "plot_report",
    "safe_torch_load",
    "scan_label_folder",
    "size_report",
]

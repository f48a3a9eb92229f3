"""The layers (issue 16, A1): no module imports from a layer above its own, and packages of one layer form no
cycle. Function-level (lazy) imports count too: they are still dependencies, only deferred.

    base (errors, progress, units, devices, ranks, limits, processes, ordered_pool) < format
    < sampling / models / sources < replay
    < labels / distill / train < evaluation / convert / inspect < cli
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS: list[set[str]] = [
    {"errors", "progress", "units", "devices", "ranks", "limits", "processes", "ordered_pool", "kept"},
    {"format"},
    {"sampling", "models", "sources"},
    {"replay"},
    {"labels", "distill", "train"},
    {"evaluation", "convert", "inspect", "plots"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str | None:
    """``nrrstore.format.reader`` -> ``format``; the package root (the lazy facade) -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "nrrstore" and len(parts) > 1 else None


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every nrrstore module a file imports, at any depth (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = ".".join(path.relative_to(root).with_suffix("").parts)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: -node.level]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # "from nrrstore import x" names a module
    return {m for m in out if m.split(".")[0] == "nrrstore"}


def _edges() -> list[tuple[str, str, str]]:
    """(file, importing unit, imported unit) for every import between units."""
    edges = []
    for path in sorted((ROOT / "nrrstore").rglob("*.py")):
        if path == ROOT / "nrrstore" / "__init__.py":
            continue  # the public facade: lazy names over every layer, by design
        unit = _unit(".".join(path.relative_to(ROOT).with_suffix("").parts))
        assert unit in RANK, f"{path}: {unit!r} belongs to no layer; add it to LAYERS"
        for mod in _imports(path):
            dep = _unit(mod)
            if dep is not None and dep != unit and dep in RANK:
                edges.append((str(path.relative_to(ROOT)), unit, dep))
    return edges


def test_every_unit_is_in_a_layer() -> None:
    units = {p.stem if p.is_file() else p.name for p in (ROOT / "nrrstore").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert units == set(RANK), units ^ set(RANK)


def test_no_upward_imports() -> None:
    upward = [f"{f}: {u} imports {d}" for f, u, d in _edges() if RANK[d] > RANK[u]]
    assert not upward, "\n".join(upward)


def test_no_cycles_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for _, u, d in _edges():
        graph.setdefault(u, set()).add(d)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    cycles = sorted(f"{u} <-> {d}" for u, ds in graph.items() for d in ds if reaches(d, u, {d}))
    assert not cycles, cycles


def test_the_library_never_imports_the_cli_or_typer() -> None:
    for path in sorted((ROOT / "nrrstore").rglob("*.py")):
        mods = _imports(path)
        assert not any(m.startswith("nrrstore_cli") for m in mods), path
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.split(".")[0] == "typer" for m in names), path


def test_the_checker_sees_a_lazy_upward_import(tmp_path: Path) -> None:
    """The check can fail: a format module importing the trainer inside a function is an upward import."""
    bad = tmp_path / "nrrstore" / "format" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from ..train.student import train_student\n")
    deps = {_unit(m) for m in _imports(bad, tmp_path)}
    assert "train" in deps and RANK["train"] > RANK["format"]


def test_small_pieces() -> None:
    """A2: no function over 80 lines and no module over 500 lines in nrrstore/ (docstrings included)."""
    big = []
    for path in sorted((ROOT / "nrrstore").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 500:
            big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None \
                    and node.end_lineno - node.lineno + 1 > 80:
                big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}")
    assert not big, "\n".join(big)

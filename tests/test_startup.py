"""Start-up cost: `import nrrstore` and every `--help` page load no torch (help answers at once)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT


def test_import_and_help_pages_do_not_import_torch() -> None:
    code = textwrap.dedent("""
        import sys
        import nrrstore
        assert "torch" not in sys.modules, "import nrrstore imported torch"
        from typer.main import get_command
        from typer.testing import CliRunner
        from nrrstore_cli.main import app
        def paths(cmd, prefix):
            yield prefix
            for name, sub in getattr(cmd, "commands", {}).items():
                yield from paths(sub, [*prefix, name])
        pages = list(paths(get_command(app), []))
        for p in pages:
            r = CliRunner().invoke(app, [*p, "--help"])
            assert r.exit_code == 0, (p, r.output)
        assert "torch" not in sys.modules, "a --help page imported torch"
        print(len(pages))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 15  # every command and group was asked


def test_top_level_entry_points_are_the_library_functions() -> None:
    import nrrstore
    import nrrstore.distill
    from nrrstore.distill.pipeline import distill
    from nrrstore.evaluation import evaluate_store
    from nrrstore.format.reader import Store
    from nrrstore.train.loader import make_loader, open_store

    assert nrrstore.distill.distill is distill and nrrstore.Store is Store and nrrstore.evaluate is evaluate_store
    assert nrrstore.make_loader is make_loader and nrrstore.open_store is open_store
    assert all(hasattr(nrrstore, name) for name in nrrstore.__all__)

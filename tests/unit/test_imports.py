"""The science never imports Ray (docs/architecture.md: Ray lives under platform/ only), and
neither does the report: it runs on a laptop over a copied sweep directory."""

import shutil
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sweep_rows"


def test_trainers_and_search_spaces_do_not_import_ray():
    code = ("import sys, vldistill.trainers.loop, vldistill.search_spaces, vldistill.platform.cli; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_report_package_imports_no_ray_and_builds_without_it(tmp_path):
    """Every module of ``platform/report/`` imported, a whole report built: still no ray."""
    shutil.copytree(FIXTURE, tmp_path / "sweep")
    code = ("import importlib, pkgutil, sys, vldistill.platform.report as r\n"
            "mods = [m.name for m in pkgutil.iter_modules(r.__path__, r.__name__ + '.')]\n"
            "assert len(mods) >= 7, mods\n"
            "for m in mods: importlib.import_module(m)\n"
            "assert 'ray' not in sys.modules, 'ray imported'\n"
            f"files = r.build_report({str(tmp_path / 'sweep')!r}, {str(tmp_path / 'out')!r})\n"
            "assert files['report.md'].is_file()\n"
            "assert 'ray' not in sys.modules, 'ray imported while building'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

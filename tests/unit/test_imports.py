"""The science never imports Ray (docs/architecture.md: Ray lives under platform/ only)."""

import subprocess
import sys


def test_trainers_and_search_spaces_do_not_import_ray():
    code = ("import sys, vldistill.trainers.loop, vldistill.search_spaces, vldistill.platform.cli; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)

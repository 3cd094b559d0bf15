"""Run ``vldistill ARGS`` with a hook on the sweep driver's first trial row (for tests).

    python tests/driver_hook.py signal SIGKILL -- sweep search_space=... out_dir=...
    python tests/driver_hook.py wait /path/to/release-file -- sweep ...

The hook is a logging handler on the ``vldistill`` logger: the driver logs
``[i/n] trial ... completed`` right after it appended the trial's row to ``trials.jsonl``
(and before W&B or Tune's experiment snapshot hear of it). On that first line it either sends
the driver itself a signal (``signal NAME``: the interruption lands at a known point, not after a
sleep) or blocks until a file exists (``wait PATH``: the sweep cannot finish before the test
released it). Nothing of the hook is pickled with the experiment, so ``--resume`` runs the
plain driver.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from vldistill.platform.sweep import ROW_LOG as ROW_LOGGED  # RowWriter's line per trial row


class _OnFirstRow(logging.Handler):
    def __init__(self, action: str, arg: str):
        super().__init__()
        self.action, self.arg, self.fired = action, arg, False

    def emit(self, record: logging.LogRecord) -> None:
        if self.fired or record.msg != ROW_LOGGED:
            return
        self.fired = True
        if self.action == "signal":
            os.kill(os.getpid(), getattr(signal, self.arg))
        elif self.action == "wait":
            release = Path(self.arg)
            deadline = time.monotonic() + 900  # never hang a test run forever
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)


def main() -> int:
    action, arg, sep, *argv = sys.argv[1:]
    assert action in ("signal", "wait") and sep == "--", sys.argv
    logging.getLogger("vldistill").addHandler(_OnFirstRow(action, arg))
    from vldistill.platform.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())

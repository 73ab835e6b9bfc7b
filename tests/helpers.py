"""Helpers shared by tests that drive the real `csetrain` command."""

import subprocess
import sys


def csetrain_cli(*args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `csetrain ARGS` in a fresh interpreter, as a user would; output captured as text."""
    cmd = [sys.executable, "-m", "csetrain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)

"""The `csetrain` command (also `python -m csetrain`): train, eval, list, validate, runs, ui, export, mine."""

import importlib

from csetrain.app.cli.common import app

# Each module registers its commands on `app`; `--help` lists them in this order.
for _module in ("run", "configs", "runs", "export", "mine"):
    importlib.import_module(f"csetrain.app.cli.{_module}")

__all__ = ["app"]

"""`python -m csetrain` (and `torchrun -m csetrain`): the `csetrain` command."""

from csetrain.app.cli import app

app()

"""``python -m entangle``: the Hydra app (and ``python -m entangle store ...``)."""

from entangle.cli import main

main()

"""``python -m entangle``: the Hydra app."""

from entangle.cli import main

main()

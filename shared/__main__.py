"""``python -m stagewise``: the ``stagewise`` command."""

from stagewise.cli import main

main()

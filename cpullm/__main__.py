"""``python -m cpullm``: the same as the ``cpullm`` command."""

from cpullm.cli import main

main()

"""``python -m supsup_fin.cli``: the same command line as the ``supsup-fin`` script."""

from supsup_fin.cli import main

main()

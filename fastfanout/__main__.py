"""``python -m fastfanout``: the command line (see ``fastfanout --help``)."""

from fastfanout.cli import main

main()

"""``python -m fastfanout``: the command line (see ``fastfanout --help``)."""

from fastfanout.entry import main

main()

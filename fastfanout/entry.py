"""The ``fastfanout`` command's entry point: its first line holds the stop signals.

The console script and ``python -m fastfanout`` call ``main()``. Importing the command
line (click, the native core, ZeroMQ) takes a good part of a second; a SIGTERM in that
time killed the process with Python's default (exit -15, nothing cleaned up, and for
``fastfanout serve`` no clean stop). ``main()`` blocks SIGTERM, SIGINT and SIGHUP
before it imports anything heavy (``fastfanout`` itself loads its names on first use),
so that a signal sent while the command starts waits until the command handles it
(``fastfanout.interrupts``).
"""

from fastfanout.interrupts import hold_stop_signals

__all__ = ["main"]


def main() -> None:
    """Run the command line (``fastfanout.cli.main``), the stop signals held first."""
    hold_stop_signals()
    from fastfanout.cli import main as run_command_line

    run_command_line()

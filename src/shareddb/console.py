"""The `shareddb` command: the command line, loaded so that a Ctrl-C at any moment ends it quietly.

A console script imports its entry point before any code of ours runs, and the command line takes
a few tenths of a second to import (click, httpx and the client). A Ctrl-C in that time printed
Python's traceback; it now ends the command as a Ctrl-C does later on (`cli.main`): exit status
130, nothing printed. This module imports nothing else before that.
"""

import sys

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C


def main() -> None:
    try:
        from shareddb.cli import main as run
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    run()

"""The one command-line error path and logging set-up every entry point uses.

Bad input (:class:`~tevatron.files.InputError`) and user mistakes that are not a malformed file
(:class:`CommandError`: an unreachable download, an unknown source, conflicting arguments) become one
``error: FILE[:LINE]: message`` line on stderr and exit status 2, never a traceback: tracebacks are
for bugs.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable

from tevatron.files import InputError

EXIT_BAD_INPUT = 2


class CommandError(RuntimeError):
    """A problem the user has to fix that is not a malformed file (the message says what to do)."""


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped log lines: the stages are long and their timings matter."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=level)


def error_exit(message: str) -> int:
    """Print ``error: message`` on stderr, a multi-line message folded onto one line; return the
    bad-input exit status."""
    message = str(message)
    if "\n" in message:
        message = " ".join(message.split())
    print(f"{_end_of_open_bar()}error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _end_of_open_bar() -> str:
    """A newline when a progress bar is still open (an error in a training or scoring loop): its line ends
    without one, and the error must start a line of its own."""
    tqdm_std = sys.modules.get("tqdm.std")
    return "\n" if tqdm_std is not None and getattr(tqdm_std.tqdm, "_instances", None) else ""


def command(main: Callable) -> Callable:
    """Decorate a command line's ``main(argv=None)``: logging is configured, bad input ends in one
    ``error:`` line and exit status 2, and the return value (``None`` = 0) is the exit status."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        configure_logging()
        try:
            status = main(*args, **kwargs)
        except (InputError, CommandError) as err:
            return error_exit(str(err))
        return 0 if status is None else int(status)
    return wrapped

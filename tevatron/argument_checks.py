"""Range checks for command-line numbers, applied when the arguments are parsed (no torch here).

A batch size of 0, a NaN temperature or a shard index past the shard count would otherwise fail deep
inside a long run, or worse, run and produce a wrong number.  Every entry point checks its numbers up
front and stops with one line and exit status 2:

* argparse parsers use the ``type=`` callables :func:`int_arg` / :func:`float_arg` (argparse's own
  ``usage: ... error: argument --n_splits: must be at least 1, not 0``);
* dataclass arguments (``HfArgumentParser``) call :func:`check_ranges` from ``__post_init__`` (a
  ``ValueError``, right for library use too), and the command line parses them with
  :func:`parse_dataclasses`, which turns that ``ValueError`` into the one-line ``error:`` of
  :class:`tevatron.cli.CommandError`.

Every float must be finite (argparse's ``float`` accepts ``nan`` and ``inf``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, fields
from typing import Callable, Mapping

from tevatron.cli import CommandError

# Token lengths beyond any model's positions; bigger numbers overflow the tokenizer's native integers.
MAX_TOKENS = 1_000_000
# numpy/torch seeds are 32-bit unsigned.
MAX_SEED = 2 ** 32 - 1


@dataclass(frozen=True)
class Bound:
    """An allowed range: ``accepts(value)`` and the words that describe it (``must be at least 1``)."""
    accepts: Callable[[float], bool]
    text: str


def at_least(low, high=None) -> Bound:
    if high is None:
        return Bound(lambda value: value >= low, f"must be at least {low}")
    return Bound(lambda value: low <= value <= high, f"must be between {low} and {high}")


def above(low) -> Bound:
    return Bound(lambda value: value > low, f"must be greater than {low}")


def fraction(high_open: bool = False) -> Bound:
    """[0, 1], or [0, 1) with ``high_open``."""
    if high_open:
        return Bound(lambda value: 0 <= value < 1, "must be in [0, 1)")
    return Bound(lambda value: 0 <= value <= 1, "must be in [0, 1]")


def positive_or_minus_one() -> Bound:
    return Bound(lambda value: value >= 1 or value == -1, "must be positive (or -1: not set)")


POSITIVE = at_least(1)
NON_NEGATIVE = at_least(0)
TOKEN_LENGTH = at_least(1, MAX_TOKENS)
SEED = at_least(0, MAX_SEED)


def out_of_range(name: str, value, bound: Bound | None) -> str | None:
    """Why ``value`` is not allowed for flag ``--name`` (None when it is)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"--{name} must be a finite number, not {value}"
    if bound is not None and value is not None and not isinstance(value, bool) and not bound.accepts(value):
        return f"--{name} {bound.text}, not {value}"
    return None


def check_ranges(arguments, bounds: Mapping[str, Bound]) -> None:
    """Raise ``ValueError`` for the first field of dataclass ``arguments`` out of its bound (or not finite)."""
    for item in fields(arguments):
        problem = out_of_range(item.name, getattr(arguments, item.name), bounds.get(item.name))
        if problem:
            raise ValueError(problem)


def parse_dataclasses(parser, argv=None, json_file: str | None = None):
    """``parser.parse_args_into_dataclasses`` (or ``parse_json_file``) where an argument rejected by a
    dataclass's ``__post_init__`` ends in one ``error:`` line, not a traceback."""
    try:
        if json_file is not None:
            return parser.parse_json_file(json_file=json_file)
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        raise CommandError(" ".join(str(err).split())) from None


def parse_command_line(parser, argv=None):
    """The dataclasses of a training driver from ``argv`` (default ``sys.argv[1:]``), or from the one JSON
    file given instead of flags, as Hugging Face's example scripts accept."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parse_dataclasses(parser, json_file=os.path.abspath(argv[0]))
    return parse_dataclasses(parser, argv)


def int_arg(bound: Bound) -> Callable[[str], int]:
    """argparse ``type=`` for an integer within ``bound``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not bound.accepts(value):
            raise argparse.ArgumentTypeError(f"{bound.text}, not {value}")
        return value
    return parse


def float_arg(bound: Bound | None = None) -> Callable[[str], float]:
    """argparse ``type=`` for a finite float (within ``bound`` where given)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if bound is not None and not bound.accepts(value):
            raise argparse.ArgumentTypeError(f"{bound.text}, not {value}")
        return value
    return parse

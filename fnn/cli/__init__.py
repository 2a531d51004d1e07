"""The ``fnn`` command: ``fnn train``, ``fnn check``, ``fnn lr-find``.

Each subcommand is a module of this package (:mod:`fnn.cli.train`, :mod:`fnn.cli.check`,
:mod:`fnn.cli.lrfind`) exposing ``add_parser(subparsers)`` and ``run(args) -> int``; the
flags and outputs they share are in :mod:`fnn.cli.common`. This module dispatches and maps
errors to exit statuses:

* 0 done; 1 a failed check, a NaN/inf, a full disk (one line naming the path);
* 2 bad flags or input, one line ``fnn <command>: error: ...`` (``--debug`` shows the
  traceback instead);
* 130 Ctrl-C and 143 SIGTERM, after ``fnn train`` saved its newest epoch.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys

import fnn
from fnn import files
from fnn.cli import check, common, lrfind, train
from fnn.cli.common import Terminated, UsageError

#: subcommand name -> module implementing it
COMMANDS = {"train": train, "check": check, "lr-find": lrfind}

#: Errors that are the user's input, not a defect: one line, exit status 2.
USAGE_ERRORS = (
    UsageError,
    ValueError,
    TypeError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    files.FolderBusyError,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``fnn`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fnn",
        description="fnn: functional neural networks in JAX with hand-written, verified backprop.",
    )
    parser.add_argument("--version", action="version", version=f"fnn {fnn.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run ``fnn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM is handled as Ctrl-C
    try:
        return int(COMMANDS[args.command].run(args) or 0)
    except files.DiskFullError as err:
        if args.debug:
            raise
        print(f"fnn {args.command}: error: {err.strerror}", file=sys.stderr)
        return 1
    except USAGE_ERRORS as err:
        if args.debug:
            raise
        print(f"fnn {args.command}: error: {common.one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # an output that could not be written, after the primary ones
        if args.debug:
            raise
        if err.errno in (errno.ENOSPC, errno.EDQUOT):  # one not written by fnn.files
            err = files.disk_full(err.filename or "an output", None)
        text = err.strerror if isinstance(err, files.DiskFullError) else common.one_line(err)
        print(f"fnn {args.command}: error: {text}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"fnn {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"fnn {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

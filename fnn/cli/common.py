"""Flags, checks and messages the ``fnn`` subcommands share.

One policy for every output: JSON is strict (:func:`fnn.files.dumps`: NaN and inf are
written as ``null``) and written atomically; every output path is checked before any work.
"""

from __future__ import annotations

import argparse
import datetime
import os

from fnn import activations, data, files, losses

#: The largest seed: data splits take a uint32 seed.
SEED_MAX = 2**32 - 1

#: The datasets, as ``--data`` takes them (``mnist:PATH`` is a folder or ``.npz``).
DATA_HELP = "one of " + ", ".join(data.NAMES)


class UsageError(Exception):
    """Bad flags or input: printed as one line, exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (exit status 143)."""


def one_line(err: BaseException) -> str:
    """An error's message on one line (the first; tracebacks and tables stay out)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def add_model_flags(p: argparse.ArgumentParser, defaults: dict) -> None:
    """``--data``, ``--hidden``, ``--activation``, ``--loss`` with their choices."""
    p.add_argument("--data", default=None, help=f"{DATA_HELP} (default {defaults['data']})")
    p.add_argument(
        "--hidden",
        default=None,
        help=f"hidden layer widths, comma separated, '' for a linear model "
        f"(default {defaults['hidden']})",
    )
    p.add_argument(
        "--activation",
        default=None,
        metavar="NAME",
        help=f"hidden activation: {', '.join(activations.NAMES)} "
        f"(default {defaults['activation']})",
    )
    p.add_argument(
        "--loss",
        default=None,
        metavar="NAME",
        help=f"{', '.join(losses.NAMES)} (default: the dataset's loss)",
    )


def add_common_flags(p: argparse.ArgumentParser, json_what: str) -> None:
    """``--json``, ``--debug``."""
    p.add_argument("--json", default=None, metavar="PATH", help=f"also write {json_what} here")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one line")


def given(args, defaults: dict) -> set:
    """The keys of ``defaults`` whose flags were given (parsed value not None)."""
    return {k for k in defaults if getattr(args, k, None) is not None}


def value(args, defaults: dict, key: str):
    """The flag's value, or its default when not given."""
    v = getattr(args, key, None)
    return defaults[key] if v is None else v


def parse_hidden(text: str) -> list[int]:
    """``"128,64"`` -> ``[128, 64]``; ``""`` -> ``[]``."""
    if text.strip() == "":
        return []
    out = []
    for part in text.split(","):
        try:
            n = int(part)
        except ValueError:
            raise UsageError(
                f"--hidden: expected comma-separated positive ints such as 128,64, got {text!r}"
            ) from None
        if n < 1:
            raise UsageError(f"--hidden: every width must be a positive int, got {n} in {text!r}")
        out.append(n)
    return out


def check_choice(v: str | None, names, flag: str) -> str | None:
    """``v`` if it is one of ``names`` (or None); else a message listing them."""
    if v is not None and v not in names:
        raise UsageError(f"{flag}: unknown {v!r}; expected one of: {', '.join(names)}")
    return v


def check_model_flags(args) -> None:
    """``--activation`` and ``--loss`` name known records."""
    check_choice(args.activation, activations.NAMES, "--activation")
    check_choice(args.loss, losses.NAMES, "--loss")


def check_seed(seed: int, flag: str = "--seed") -> int:
    """A seed in ``0..2**32-1``."""
    if not 0 <= seed <= SEED_MAX:
        raise UsageError(f"{flag}: expected an int in 0..{SEED_MAX}, got {seed}")
    return seed


def check_positive(v: int, flag: str, least: int = 1, most: int | None = None) -> int:
    """An int ``least <= v <= most``."""
    if v < least or (most is not None and v > most):
        if most is not None:
            bound = f"an int in {least}..{most}"
        else:
            bound = "a positive int" if least == 1 else f"an int >= {least}"
        raise UsageError(f"{flag}: expected {bound}, got {v}")
    return v


def default_out(prefix: str = "") -> str:
    """``runs/<prefix><date-time>``."""
    return os.path.join("runs", prefix + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def check_outputs(out: str | None = None, json_path: str | None = None) -> None:
    """Refuse an ``--out`` folder or ``--json`` file that cannot be written; creates nothing."""
    if out is not None:
        files.check_writable(out, "--out", folder=True)
    if json_path is not None:
        files.check_writable(json_path, "--json")


__all__ = [
    "DATA_HELP",
    "SEED_MAX",
    "Terminated",
    "UsageError",
    "add_common_flags",
    "add_model_flags",
    "check_choice",
    "check_model_flags",
    "check_outputs",
    "check_positive",
    "check_seed",
    "default_out",
    "given",
    "one_line",
    "parse_hidden",
    "value",
]

"""``fnn check``: build an MLP from flags and verify its hand-written backward three ways.

Example::

    fnn check --sizes 64,32,10 --activation tanh --loss softmax_cross_entropy --dtype float64

prints the per-leaf table of :func:`fnn.check.check_model` (manual vs ``jax.grad`` vs finite
differences) and exits 1 when a leaf fails, 0 when all pass, 2 on bad flags.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from fnn import activations, check, experiment, files, losses, models
from fnn.cli import common
from fnn.cli.common import UsageError

DTYPES = ("float64", "float32")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check",
        help="verify the hand-written backward of an MLP against jax.grad and finite differences",
        description="Build an MLP from flags and check its hand-written backward pass against "
        "jax.grad and finite differences; exit 1 when a leaf fails.",
    )
    p.add_argument(
        "--sizes",
        default="64,32,10",
        help="layer sizes, input first, comma separated (default 64,32,10)",
    )
    p.add_argument(
        "--activation",
        default="tanh",
        choices=activations.NAMES,
        help="hidden activation (default tanh)",
    )
    p.add_argument(
        "--loss",
        default="softmax_cross_entropy",
        choices=losses.NAMES,
        help="loss (default softmax_cross_entropy)",
    )
    p.add_argument(
        "--dtype",
        default="float64",
        choices=DTYPES,
        help="parameter dtype (default float64; finite differences always run in float64)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for parameters and data, 0..2**32-1 (default 0)"
    )
    p.add_argument("--batch", type=int, default=8, help="examples in the random batch (default 8)")
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout rate (checked in training mode with a fixed key) (default 0)",
    )
    p.add_argument(
        "--max-coords",
        type=int,
        default=256,
        help="leaves up to this size are differenced coordinate by coordinate (default 256)",
    )
    p.add_argument(
        "--directions",
        type=int,
        default=8,
        help="random directions per larger leaf, at least 1 (default 8)",
    )
    common.add_common_flags(p, "the report as JSON")
    return p


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise UsageError(
            f"--sizes: expected comma-separated positive ints such as 64,32,10, got {text!r}"
        ) from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise UsageError(
            f"--sizes: expected at least two positive ints such as 64,32,10, got {text!r}"
        )
    return sizes


def run(args) -> int:
    # Before any array exists: float64 parameters need it, and with it the finite-difference
    # witness runs in float64 for float32 models too (every array below has an explicit dtype).
    jax.config.update("jax_enable_x64", True)
    sizes = _sizes(args.sizes)
    common.check_positive(args.batch, "--batch")
    common.check_positive(args.directions, "--directions")
    common.check_positive(args.max_coords, "--max-coords", least=0)
    common.check_seed(args.seed)
    common.check_outputs(json_path=args.json)
    if not 0.0 <= args.dropout < 1.0:
        raise UsageError(f"--dropout: expected a rate in [0, 1), got {args.dropout}")
    dtype = jnp.dtype(args.dtype)
    model = models.mlp(sizes, activation=args.activation, dropout=args.dropout, dtype=dtype)
    k_init, k_x, k_y, k_drop = jax.random.split(jax.random.key(args.seed), 4)
    params = model.init(k_init)
    x = jax.random.normal(k_x, (args.batch, sizes[0]), dtype)
    n_out = sizes[-1]
    if args.loss == "softmax_cross_entropy":
        y = jax.random.randint(k_y, (args.batch,), 0, n_out)
    elif args.loss == "binary_cross_entropy":
        y = jax.random.bernoulli(k_y, 0.5, (args.batch, n_out)).astype(dtype)
    else:
        y = jax.random.normal(k_y, (args.batch, n_out), dtype)
    key = k_drop if args.dropout else None
    report = check.check_model(
        model,
        args.loss,
        params,
        x,
        y,
        key=key,
        max_coords=args.max_coords,
        directions=args.directions,
    )
    print(report)
    if args.json:
        config = {
            k: getattr(args, k)
            for k in (
                "sizes",
                "activation",
                "loss",
                "dtype",
                "seed",
                "batch",
                "dropout",
                "max_coords",
                "directions",
            )
        }
        config["sizes"] = sizes
        out = {
            **report.as_dict(),
            "config": config,
            "versions": experiment.versions(),
            "device": experiment.device_text(1),
        }
        files.write_json(args.json, out)
    return 0 if report.ok else 1

"""Time a K-run sweep in one program (``fnn.many.fit_many``) against K sequential ``fit`` runs.

The small config of the issue: MLP 64-128-128-10 (ReLU), Adam 1e-3, batch 32, one epoch of
the 1,797 digits (scikit-learn's train and test parts stacked; synthetic 1,797 x 64 data when
scikit-learn is missing). The runs differ in seed (initialisation and data order).

Two ratios per K, each the median over interleaved rounds (both sides compiled first):

* **call**: wall time of one ``fit_many(..., seeds=range(K), epochs=1)`` call / wall time of
  K calls of ``fit(..., key=key(k), epochs=1)`` (what a Python loop over seeds costs:
  checks, initialisation, the epoch, the metric read);
* **epoch**: the sweep's epoch time / the sum of the K runs' epoch times (``history
  ["seconds"]``: the compiled epoch plus its host read, no set-up).

It also prints the **compute floor**: the FLOPs of the K epochs (``6 * batch * sum(fan_in *
fan_out)`` per step) over the float32 matmul rate of this machine (``jnp.dot`` 2048 x 2048,
measured in the same run), divided by the sequential time: no schedule of the same
arithmetic on this machine can go below it.

With ``--devices N`` (N > 1) the script makes N CPU devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=N``, set before JAX starts) and also times the sweep
split over them (``fit_many(..., devices=N)``, one core each): the *split* ratios. The
sequential baseline and the one-device sweep still run on one device.

Usage::

    python benchmarks/many_ratio.py [--ks 1,8,32,128] [--rounds 3] [--devices 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _devices_flag(argv) -> int:
    for i, a in enumerate(argv):
        if a == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--devices="):
            return int(a.split("=", 1)[1])
    return 1


if __name__ == "__main__" and _devices_flag(sys.argv[1:]) > 1:  # before JAX starts
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
        f"device_count={_devices_flag(sys.argv[1:])}"
    ).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import fnn  # noqa: E402
from fnn import many, train  # noqa: E402

SIZES = [64, 128, 128, 10]
BATCH = 32
LOSS = "softmax_cross_entropy"


def dataset():
    try:
        from fnn import data

        ds = data.digits(seed=0)
        x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float32)
        y = np.concatenate([ds.y_train, ds.y_test]).astype(np.int32)
        return x, y, "digits (train + test)"
    except ImportError:
        r = np.random.default_rng(0)
        return (
            r.normal(size=(1797, 64)).astype(np.float32),
            r.integers(0, 10, 1797).astype(np.int32),
            "synthetic 1797 x 64",
        )


def matmul_rate() -> float:
    """float32 FLOP/s of a 2048 x 2048 matmul (best of 5, after a warm-up)."""
    a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = min(_timed(lambda: dot(a, a).block_until_ready()) for _ in range(5))
    return 2 * 2048**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(k: int, rounds: int, model, opt, x, y, devices: int) -> dict:
    keys = [jax.random.key(i) for i in range(k)]

    def sequential():
        seconds = 0.0
        for key in keys:
            state, hist = train.fit(
                model, LOSS, opt, (x, y), epochs=1, batch_size=BATCH, key=key, progress=False
            )
            seconds += hist["seconds"][0]
        jax.block_until_ready(state)
        return seconds

    def sweep(split=None):
        states, hists = many.fit_many(
            model,
            LOSS,
            opt,
            (x, y),
            epochs=1,
            batch_size=BATCH,
            keys=keys,
            progress=False,
            devices=split,
        )
        jax.block_until_ready(states)
        return hists[0]["seconds"][0]

    variants = {"sequential": sequential, "sweep": sweep}
    if devices > 1 and k % devices == 0:
        variants["split"] = lambda: sweep(devices)
    for fn in variants.values():  # compile everything first (fit's epoch serves every K)
        fn()
    times = {name: [] for name in variants}
    for r in range(rounds):  # interleaved, alternating order: drift hits every variant alike
        for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            t0 = time.perf_counter()
            ep = variants[name]()
            times[name].append((time.perf_counter() - t0, ep))
    row = {"K": k}
    for name, ts in times.items():
        row[f"{name}_s"] = statistics.median(t for t, _ in ts)
        if name != "sequential":
            base = times["sequential"]
            row[f"{name}_call_ratio"] = statistics.median(
                a / b for (a, _), (b, _) in zip(ts, base, strict=True)
            )
            row[f"{name}_epoch_ratio"] = statistics.median(
                a / b for (_, a), (_, b) in zip(ts, base, strict=True)
            )
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,8,32,128", help="sweep sizes, comma separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="also time the sweep split over this many CPU devices",
    )
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    ks = [int(v) for v in args.ks.split(",")]
    x, y, source = dataset()
    model = fnn.mlp(SIZES, activation="relu")
    opt = optax.adam(1e-3)
    steps = len(x) // BATCH
    flops_epoch = 6 * BATCH * sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:], strict=True)) * steps
    rate = matmul_rate()
    rows = []
    print(
        f"fnn.many sweep vs sequential fit: MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, "
        f"1 epoch of {len(x)} ({source}), adam; {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} cores, {len(jax.devices())} device(s); matmul "
        f"{rate / 1e9:.0f} GFLOP/s"
    )
    split = args.devices > 1
    head = f"{'K':>5} {'sequential':>11} {'sweep':>9} {'call':>7} {'epoch':>7}"
    if split:
        head += f" {'split':>9} {'call':>7} {'epoch':>7}"
    print(head + f" {'floor':>7}")
    for k in ks:
        row = bench(k, args.rounds, model, opt, x, y, args.devices)
        row["compute_floor_ratio"] = k * flops_epoch / rate / row["sequential_s"]
        rows.append(row)
        line = (
            f"{k:>5} {row['sequential_s'] * 1e3:>9.1f}ms {row['sweep_s'] * 1e3:>7.1f}ms "
            f"{row['sweep_call_ratio']:>7.3f} {row['sweep_epoch_ratio']:>7.3f}"
        )
        if split:
            line += (
                f" {row['split_s'] * 1e3:>7.1f}ms {row['split_call_ratio']:>7.3f} "
                f"{row['split_epoch_ratio']:>7.3f}"
                if "split_s" in row
                else f" {'n/a':>9} {'':>7} {'':>7}"
            )
        print(line + f" {row['compute_floor_ratio']:>7.3f}")
    print(
        "call: whole calls (sweep / K fits); epoch: epoch times only; floor: the K epochs' "
        "FLOPs at the matmul rate / sequential time"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "config": {
                        "sizes": SIZES,
                        "batch": BATCH,
                        "examples": len(x),
                        "data": source,
                        "optimizer": "adam(1e-3)",
                        "rounds": args.rounds,
                        "devices": args.devices,
                    },
                    "matmul_flops": rate,
                    "results": rows,
                    "device": jax.devices()[0].device_kind,
                    "cpu_count": os.cpu_count(),
                    "versions": {
                        "jax": jax.__version__,
                        "fnn": fnn.__version__,
                        "python": platform.python_version(),
                    },
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

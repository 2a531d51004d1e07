"""Time the manual reverse sweep against ``jax.value_and_grad`` on the same MLP.

For each size, both functions are jit-compiled, warmed up, then timed in interleaved rounds
(manual, autodiff, autodiff, manual, ... so that drift from other processes hits both alike);
each timing runs enough calls to last ``--min-time`` seconds and blocks on the result. The
ratio reported is the median over rounds of (manual time / autodiff time) from the same
round; the target is <= 1.10.

Usage::

    python benchmarks/backprop_ratio.py [--quick] [--only small,medium] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import jax
import jax.numpy as jnp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _timing  # noqa: E402

import fnn  # noqa: E402
from fnn import backprop, losses  # noqa: E402

# name: (sizes, batch) -- relu MLPs, float32, softmax cross-entropy over the last size
SIZES = {
    "small": ([64, 128, 128, 10], 32),
    "medium": ([784, 512, 512, 10], 128),
    "large": ([1024, 4096, 4096, 1024], 512),
}


def bench(name: str, rounds: int, min_time: float) -> dict:
    sizes, batch = SIZES[name]
    model = fnn.mlp(sizes, activation="relu", dtype=jnp.float32)
    loss = losses.get("softmax_cross_entropy")
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = model.init(k1)
    x = jax.random.normal(k2, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(k3, (batch,), 0, sizes[-1])

    manual = jax.jit(backprop.value_and_grad(model, loss))
    autodiff = jax.jit(jax.value_and_grad(lambda p, xx, yy: loss.fn(model.apply(p, xx), yy)))
    runners = {"manual": _timing.calls_of(manual, params, x, y)}
    runners["autodiff"] = _timing.calls_of(autodiff, params, x, y)
    times, calls = _timing.interleave(runners, rounds, min_time, warmup=3)
    t_manual, t_auto = times["manual"], times["autodiff"]
    ratio = _timing.median_ratios(times, "autodiff")["manual"]
    return {
        "sizes": sizes,
        "batch": batch,
        "rounds": rounds,
        "calls_per_timing": calls,
        "manual_ms": 1e3 * statistics.median(t_manual),
        "autodiff_ms": 1e3 * statistics.median(t_auto),
        "ratio": ratio,
        "ratio_of_medians": statistics.median(t_manual) / statistics.median(t_auto),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    p.add_argument("--only", default=",".join(SIZES), help="comma-separated subset of sizes")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(SIZES))
    if unknown:
        p.error(f"--only: unknown sizes {unknown}; expected some of {list(SIZES)}")
    rounds, min_time = (5, 0.05) if args.quick else (15, 0.2)

    device = jax.devices()[0]
    print("fnn backprop ratio: jit(fnn.backprop.value_and_grad) / jit(jax.value_and_grad)")
    print(
        f"device {device.platform} ({device.device_kind}), {os.cpu_count()} cpus, "
        f"jax {jax.__version__}, {rounds} rounds; target ratio <= 1.10"
    )
    results = {}
    for name in names:
        res = bench(name, rounds, min_time)
        results[name] = res
        sizes = "-".join(map(str, res["sizes"]))
        print(
            f"{name:>6} {sizes:>22} batch {res['batch']:>4}: manual "
            f"{res['manual_ms']:9.3f} ms  autodiff {res['autodiff_ms']:9.3f} ms  "
            f"ratio {res['ratio']:.3f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "results": results,
                    "device": str(device),
                    "platform": device.platform,
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "versions": {"fnn": fnn.__version__, "jax": jax.__version__},
                    "quick": args.quick,
                },
                fh,
                indent=2,
            )
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

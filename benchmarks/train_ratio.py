"""Time fnn's training step and scan-fused epoch against hand-written raw JAX.

Three ratios, each measured in one run with warm-up, ``block_until_ready`` and interleaved
rounds (variants alternate order each round, so drift from other processes hits all alike);
the reported number is the median over rounds of the per-round ratio:

1. **step**: ``fnn.train.make_step`` (autodiff and manual gradients) / a raw JAX step (params a
   list of ``{"w", "b"}`` dicts, ``jax.jit`` with donation, ``optax.adam``), same MLP, same
   optimizer, for small (64-128-128-10, batch 32), medium (784-512-512-10, batch 128) and
   large (1024-4096-4096-1024, batch 512). Target <= 1.10 for make_step's default (the loss
   only, as raw); the ``_metrics`` variants (``make_step(..., accuracy=True,
   grad_norm=True)``) show what the accuracy and the norm's reductions cost.
2. **epoch**: one epoch of ``fnn.train.fit`` (its own per-epoch wall time, which includes the
   host shuffle and the metric read) / a Python loop of the raw jitted step over the same
   shuffled minibatches, pre-sliced on the device. Target <= 0.80 on small, <= 1.00 on medium.
3. **FLOP/s** on the large config: ``6 * batch * sum(fan_in * fan_out)`` per step over the
   step time, divided by the float32 ``jnp.dot`` 4096x4096 rate timed in the same rounds.

Usage::

    python benchmarks/train_ratio.py [--quick] [--only small,medium] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _timing  # noqa: E402

import fnn  # noqa: E402
from fnn import train  # noqa: E402

# name: (sizes, batch, examples in the fit epoch)
CONFIGS = {
    "small": ([64, 128, 128, 10], 32, 8192),
    "medium": ([784, 512, 512, 10], 128, 8192),
    "large": ([1024, 4096, 4096, 1024], 512, 0),
}
LR = 1e-3


def raw_step_fn(opt):
    """The hand-written baseline: relu MLP, softmax cross-entropy, optax update, donation."""

    def forward(params, x):
        for i, layer in enumerate(params):
            x = x @ layer["w"] + layer["b"]
            if i < len(params) - 1:
                x = jax.nn.relu(x)
        return x

    def loss_fn(params, x, y):
        logp = jax.nn.log_softmax(forward(params, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def bench_step(name: str, rounds: int, min_time: float) -> dict:
    sizes, batch, _ = CONFIGS[name]
    model = fnn.mlp(sizes, activation="relu")
    params = model.init(jax.random.key(0))
    opt = optax.adam(LR)
    pool = 4  # cycle through a few batches so no step reuses the last one's input buffer
    xs = jax.random.normal(jax.random.key(1), (pool, batch, sizes[0]), jnp.float32)
    ys = jax.random.randint(jax.random.key(2), (pool, batch), 0, sizes[-1])
    xs, ys = [xs[i] for i in range(pool)], [ys[i] for i in range(pool)]

    raw = raw_step_fn(opt)
    dense = [p for p in params if p]  # the raw baseline keeps only the dense layers' dicts
    raw_state = [_copy(dense), opt.init(dense)]

    def run_raw(calls):
        p, s = raw_state
        for i in range(calls):
            p, s, loss = raw(p, s, xs[i % pool], ys[i % pool])
        jax.block_until_ready(p)
        raw_state[:] = [p, s]

    variants = {"raw": run_raw}
    metrics = {"accuracy": True, "grad_norm": True}
    for grad, opts in (
        ("autodiff", {}),
        ("manual", {}),
        ("autodiff", metrics),
        ("manual", metrics),
    ):
        step = train.make_step(model, "softmax_cross_entropy", opt, grad=grad, **opts)
        box = [train.init_state(_copy(params), opt, jax.random.key(3))]

        def run(calls, step=step, box=box):
            st = box[0]
            for i in range(calls):
                st, metrics = step(st, xs[i % pool], ys[i % pool])
            jax.block_until_ready(st)
            box[0] = st

        variants[f"{grad}_metrics" if opts else grad] = run

    if name == "large":  # the peak, timed in the same interleaved rounds as the steps
        n = 4096
        a = jax.random.normal(jax.random.key(4), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(5), (n, n), jnp.float32)
        dot = jax.jit(jnp.dot)

        def run_dot(calls):
            out = None
            for _ in range(calls):
                out = dot(a, b)
            jax.block_until_ready(out)

        variants["dot"] = run_dot

    times, calls = _timing.interleave(variants, rounds, min_time, warmup=3)
    dot_times = times.pop("dot", None)
    ratios = _timing.median_ratios(times, "raw")
    out = {
        "sizes": sizes,
        "batch": batch,
        "rounds": rounds,
        "calls_per_timing": calls,
        **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()},
        **{f"ratio_{k}": v for k, v in ratios.items()},
    }
    if dot_times is not None:
        flops = 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
        out["step_gflops"] = flops / 1e9
        out["dot_tflops"] = 2 * 4096**3 / statistics.median(dot_times) / 1e12
        for k, v in times.items():
            out[f"{k}_tflops"] = flops / statistics.median(v) / 1e12
            # per round: (flops / step time) / (dot flops / dot time)
            out[f"flops_ratio_{k}"] = statistics.median(
                (flops / t) / (2 * 4096**3 / d) for t, d in zip(v, dot_times, strict=True)
            )
    return out


def bench_epoch(name: str, rounds: int) -> dict:
    sizes, batch, n = CONFIGS[name]
    return epoch_ratio(sizes, batch, n, rounds)


def epoch_ratio(sizes, batch: int, n: int, rounds: int) -> dict:
    """fit's scan-fused epoch against a Python loop of the raw step over the same batches."""
    model = fnn.mlp(sizes, activation="relu")
    opt = optax.adam(LR)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=n).astype(np.int32)
    key = jax.random.key(0)
    run_key = train.run_key(key)  # the key fit gives its state, hence its shuffle
    steps = n // batch
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    raw = raw_step_fn(opt)
    params0 = [p for p in model.init(jax.random.key(5)) if p]
    raw_state = [_copy(params0), opt.init(params0)]

    def loop(epoch):
        # the very batches fit draws in this epoch, sliced on the device beforehand
        idx = jnp.asarray(train.epoch_indices(run_key, epoch, n, batch))
        xb = [xd[idx[i]] for i in range(steps)]
        yb = [yd[idx[i]] for i in range(steps)]
        jax.block_until_ready((xb, yb))
        p, s = raw_state
        start = time.perf_counter()
        for i in range(steps):
            p, s, loss = raw(p, s, xb[i], yb[i])
        jax.block_until_ready(p)
        raw_state[:] = [p, s]
        return time.perf_counter() - start

    epochs_per_fit = 4

    def fit_epochs():
        _, hist = train.fit(
            model,
            "softmax_cross_entropy",
            opt,
            (x, y),
            epochs=epochs_per_fit,
            batch_size=batch,
            key=key,
            progress=False,
        )
        return hist["seconds"]

    fit_epochs()  # compile
    loop(0)
    t_fit, t_loop = [], []
    for r in range(rounds):
        first = r % 2 == 0
        if first:
            t_fit.extend(fit_epochs()[1:])
        t_loop.extend(loop(e) for e in range(1, epochs_per_fit))
        if not first:
            t_fit.extend(fit_epochs()[1:])
    ratios = [a / b for a, b in zip(t_fit, t_loop, strict=True)]
    return {
        "sizes": sizes,
        "batch": batch,
        "examples": n,
        "steps": steps,
        "epochs_timed": len(t_fit),
        "fit_epoch_ms": 1e3 * statistics.median(t_fit),
        "loop_epoch_ms": 1e3 * statistics.median(t_loop),
        "ratio": statistics.median(ratios),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter timings")
    parser.add_argument("--only", default="small,medium,large", help="comma-separated configs")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    names = [s for s in args.only.split(",") if s]
    for s in names:
        if s not in CONFIGS:
            parser.error(f"--only: unknown config {s!r}; expected {', '.join(CONFIGS)}")
    # many short interleaved rounds: the median shrugs off bursts of other processes' load
    rounds, min_time = (3, 0.3) if args.quick else (15, 0.4)
    results = {
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "step": {},
        "epoch": {},
    }
    for name in names:
        res = bench_step(name, rounds, min_time if name != "large" else 0.0)
        results["step"][name] = res
        print(
            f"step  {name:6s} raw {res['raw_ms']:.4g} ms; / raw: "
            + ", ".join(f"{k[6:]} {v:.3f}" for k, v in res.items() if k.startswith("ratio_")),
            flush=True,
        )
    for name in ("small", "medium"):
        if name in names:
            res = bench_epoch(name, rounds)
            results["epoch"][name] = res
            print(
                f"epoch {name:6s} fit {res['fit_epoch_ms']:8.3f} ms  loop "
                f"{res['loop_epoch_ms']:8.3f} ms  ratio {res['ratio']:.3f}",
                flush=True,
            )
    if "large" in names:
        large = results["step"]["large"]
        print(
            f"flops large: dot 4096^2 {large['dot_tflops']:.3f} TFLOP/s; achieved / dot: "
            + ", ".join(
                f"{k[12:]} {v:.3f}" for k, v in large.items() if k.startswith("flops_ratio_")
            ),
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

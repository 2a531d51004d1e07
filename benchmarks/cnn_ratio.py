"""Time one CNN training step: fnn's hand-written backward, fnn with autodiff, raw JAX, flax.

The model is :func:`fnn.recipes.cnn` (without dropout) on digits rows (8x8x1, 10 classes, float32):
reshape, conv 3x3 + ReLU + max pool 2 per block, dense head. Every step is
value-and-gradient of the softmax cross-entropy plus a plain SGD update, jit-compiled,
carried from call to call. The variants:

* ``manual``: :func:`fnn.backprop.value_and_grad` (the hand-written rules of fnn.layers);
* ``autodiff``: ``jax.value_and_grad`` of ``model.apply`` (fnn's forward, JAX's backward);
* ``raw``: the same network written directly with ``lax.conv_general_dilated`` and
  ``lax.reduce_window``, differentiated by ``jax.value_and_grad``: no fnn at all;
* ``flax``: ``flax.linen`` (``nn.Conv``, ``nn.max_pool``, ``nn.Dense``), when installed.

Runners are timed in interleaved rounds (``_timing.interleave``); ratios are medians over
rounds of per-round ratios, all from this one run. Targets (issue 17): manual / autodiff
<= 1.10, manual / raw <= 1.05.

Usage::

    python benchmarks/cnn_ratio.py [--quick] [--batch 32] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _timing  # noqa: E402

from fnn import backprop, losses, recipes  # noqa: E402

CHANNELS, HIDDEN, LR = (32,), 256, 0.05


def sgd(params, grads):
    return jax.tree.map(lambda p, g: p - LR * g, params, grads)


def runner(step, params, x, y):
    """``run(calls)``: ``calls`` jitted steps, carrying the parameters; blocks at the end."""
    box = [params]

    def run(calls):
        p = box[0]
        for _ in range(calls):
            p, value = step(p, x, y)
        jax.block_until_ready(value)
        box[0] = p

    return run


def fnn_steps(model):
    loss = losses.get("softmax_cross_entropy")
    manual_vg = backprop.value_and_grad(model, loss)

    @jax.jit
    def manual(params, x, y):
        value, grads = manual_vg(params, x, y)
        return sgd(params, grads), value

    @jax.jit
    def autodiff(params, x, y):
        value, grads = jax.value_and_grad(lambda p: loss.fn(model.apply(p, x), y))(params)
        return sgd(params, grads), value

    return manual, autodiff


def raw_params(fnn_params):
    """The raw network's parameters: the same arrays, in a flat dict."""
    conv, dense1, dense2 = fnn_params[1], fnn_params[5], fnn_params[7]
    return {
        "cw": conv["w"],
        "cb": conv["b"],
        "w1": dense1["w"],
        "b1": dense1["b"],
        "w2": dense2["w"],
        "b2": dense2["b"],
    }


def raw_loss(p, x, y):
    h = jnp.reshape(x, (x.shape[0], 8, 8, 1))
    h = lax.conv_general_dilated(
        h, p["cw"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jax.nn.relu(h + p["cb"].reshape(1, 1, 1, -1))
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = jnp.reshape(h, (h.shape[0], -1))
    h = jax.nn.relu(h @ p["w1"] + p["b1"].reshape(1, -1))
    logits = h @ p["w2"] + p["b2"].reshape(1, -1)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


@jax.jit
def raw_step(params, x, y):
    value, grads = jax.value_and_grad(raw_loss)(params, x, y)
    return sgd(params, grads), value


def flax_runner(x, y):
    """A runner for the same CNN in flax.linen, or ``None`` when flax is not installed."""
    try:
        import flax.linen as nn
    except ImportError:
        return None

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.reshape(x, (x.shape[0], 8, 8, 1))
            h = nn.max_pool(nn.relu(nn.Conv(CHANNELS[0], (3, 3))(h)), (2, 2), (2, 2))
            h = nn.relu(nn.Dense(HIDDEN)(jnp.reshape(h, (h.shape[0], -1))))
            return nn.Dense(10)(h)

    net = CNN()
    params = net.init(jax.random.key(0), x)

    @jax.jit
    def step(p, x, y):
        def loss(p):
            logp = jax.nn.log_softmax(net.apply(p, x))
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        value, grads = jax.value_and_grad(loss)(p)
        return sgd(p, grads), value

    return runner(step, params, x, y)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few short rounds (a smoke run)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    rounds, min_time = (3, 0.05) if args.quick else (15, 0.5)

    # the default recipe without its dropout, so that every variant computes the same thing
    model = recipes.cnn((8, 8, 1), 10, channels=CHANNELS, hidden=HIDDEN, dropout=0.0)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (args.batch, 64), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
    manual, autodiff = fnn_steps(model)
    # the raw network computes what the fnn model computes, on the same parameters
    v_fnn = losses.get("softmax_cross_entropy").fn(model.apply(params, x), y)
    v_raw = raw_loss(raw_params(params), x, y)
    assert abs(float(v_fnn) - float(v_raw)) <= 1e-4 * abs(float(v_raw)), (v_fnn, v_raw)

    runners = {
        "raw": runner(raw_step, raw_params(params), x, y),
        "manual": runner(manual, params, x, y),
        "autodiff": runner(autodiff, params, x, y),
    }
    flax_run = flax_runner(x, y)
    if flax_run is not None:
        runners["flax"] = flax_run
    compile_s = {k: _timing.first_call(r) for k, r in runners.items()}
    times, calls = _timing.interleave(runners, rounds, min_time)
    vs_raw = _timing.median_ratios(times, "raw")
    vs_auto = _timing.median_ratios({k: times[k] for k in ("autodiff", "manual")}, "autodiff")
    res = {
        "batch": args.batch,
        "model": model.name,
        "ms": {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()},
        "compile_s": compile_s,
        "ratio_to_raw": vs_raw,
        "manual_over_autodiff": vs_auto["manual"],
        "rounds": rounds,
        "calls_per_timing": calls,
        "flax": "included" if flax_run is not None else "not installed (pip install flax)",
        "machine": _timing.machine(),
        "device": str(jax.devices()[0]),
    }
    print(f"CNN step, batch {args.batch}, {res['device']}, load {res['machine']['loadavg']}")
    for k, v in res["ms"].items():
        print(f"  {k:9s} {v:8.3f} ms/step   (first call {compile_s[k]:.2f} s)")
    print(f"  manual / autodiff = {res['manual_over_autodiff']:.3f}   (target <= 1.10)")
    for k, v in vs_raw.items():
        print(f"  {k} / raw = {v:.3f}" + ("   (target <= 1.05)" if k == "manual" else ""))
    if flax_run is None:
        print("  flax: " + res["flax"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()

"""Time attention's hand-written backward against ``jax.value_and_grad`` of the same forward.

One "step" is the loss and its gradient for a causal self-attention layer (and for a whole
pre-norm transformer block), float32: ``jit(fnn.backprop.value_and_grad)`` (manual) against
``jit(jax.value_and_grad)`` of ``loss(model.apply(...))`` (autodiff). Both are compiled,
warmed up, then timed in interleaved rounds; the ratio is the median over rounds of manual /
autodiff from the same round. Target: <= 1.10 at sequence lengths 64 and 256. ``keep="lse"``
(the backward rebuilds the softmax instead of keeping it) is timed too, as the price of its
memory saving.

Usage::

    python benchmarks/attention_ratio.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _timing  # noqa: E402

from fnn import backprop, layers, models  # noqa: E402

FEATURES, HEADS, BATCH = 64, 4, 8


def build(kind: str, seq: int, keep: str):
    att = layers.attention(HEADS, causal=True, keep=keep)
    if kind == "attention":
        net = models.serial(att)
    else:
        net = models.serial(
            models.residual(layers.layer_norm(), att),
            models.residual(
                layers.layer_norm(),
                layers.dense(4 * FEATURES),
                layers.activation("gelu"),
                layers.dense(FEATURES),
            ),
        )
    return models.build(net, (seq, FEATURES), jnp.float32)


def bench(kind: str, seq: int, keep: str, rounds: int, min_time: float) -> dict:
    model = build(kind, seq, keep)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = model.init(k1)
    x = jax.random.normal(k2, (BATCH, seq, FEATURES), jnp.float32)
    y = jax.random.normal(k3, (BATCH, seq, FEATURES), jnp.float32)
    manual = jax.jit(backprop.value_and_grad(model, "mse"))
    autodiff = jax.jit(
        jax.value_and_grad(lambda p, xx, yy: jnp.mean((model.apply(p, xx) - yy) ** 2))
    )
    runners = {"manual": _timing.calls_of(manual, params, x, y)}
    runners["autodiff"] = _timing.calls_of(autodiff, params, x, y)
    times, calls = _timing.interleave(runners, rounds, min_time, warmup=3)
    t_manual, t_auto = times["manual"], times["autodiff"]
    ratio = _timing.median_ratios(times, "autodiff")["manual"]
    return {
        "manual_ms": 1e3 * statistics.median(t_manual),
        "autodiff_ms": 1e3 * statistics.median(t_auto),
        "ratio": ratio,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    rounds, min_time = (5, 0.05) if args.quick else (11, 0.2)
    device = jax.devices()[0]
    print(
        f"attention step, manual / autodiff: batch {BATCH}, features {FEATURES}, heads {HEADS}, "
        f"causal, float32; {device.platform} ({device.device_kind}), {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.1f}; {rounds} rounds; target <= 1.10"
    )
    results = {}
    for kind in ("attention", "block"):
        for keep in ("probs", "lse"):
            for seq in (64, 256):
                r = bench(kind, seq, keep, rounds, min_time)
                results[f"{kind}/{keep}/{seq}"] = r
                print(
                    f"{kind:>9} keep={keep:<5} seq {seq:>3}: manual {r['manual_ms']:8.3f} ms  "
                    f"autodiff {r['autodiff_ms']:8.3f} ms  ratio {r['ratio']:.3f}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "device": str(device)}, fh, indent=2)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

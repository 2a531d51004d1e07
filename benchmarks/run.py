"""fnn against hand-written raw JAX and the peers: one entry point, one table, one JSON.

Per config (small 64-128-128-10 batch 32, medium 784-512-512-10 batch 128, large
1024-4096-4096-1024 batch 512; float32 ReLU MLP, softmax cross-entropy, Adam 1e-3, synthetic data
from fixed seeds), all in one process and in interleaved rounds (see ``_timing.py``):

* **step**: ``fnn.train.make_step`` (autodiff and manual gradients; its default, the loss only;
  "metrics": ``accuracy=True, grad_norm=True``; and "bare": fnn's engine on the raw step's own
  arithmetic, a loss record holding raw's ``jax.nn.log_softmax`` cross-entropy, so that its
  ratio is the engine's cost alone) against the raw JAX step
  (params a list of ``{"w", "b"}`` dicts, ``jax.jit`` with donation, ``optax.adam``), and
  every installed peer (``peers.py``). Ratios are medians over rounds of the per-round time /
  raw's time; below 1 is faster than raw.
* **first step**: wall time of the first call (trace + compile + one step) of each variant.
* **epoch** (small, medium): one ``fnn.train.fit`` epoch (a compiled ``lax.scan``) against a
  Python loop of the raw jitted step over the very same shuffled minibatches.
* **peak memory** (large): peak RSS (``VmHWM``) of a fresh subprocess per implementation that
  builds the large model and runs three steps, next to the same process's peak after imports.
* **FLOP/s** (large): ``6 * batch * sum(fan_in * fan_out)`` per step over the step time, as a
  fraction of the float32 ``jnp.dot`` 4096x4096 rate timed in the same rounds.
* **scaling**: step time and FLOP/s of fnn and raw over widths 64-4096 and batches 1-1024
  (``scaling.png``).

Usage::

    python benchmarks/run.py [--quick | --smoke] [--json PATH] [--no-peers] [--no-write]
    python benchmarks/run.py --report PATH   # RESULTS.md and scaling.png from a saved JSON
    python benchmarks/run.py --report A.json --before-after B1.json A1.json [B2.json A2.json]

``--quick`` takes about 5 minutes on 2 cores; ``--smoke`` (tiny configs, for the tests) a few
seconds. Without ``--no-write`` a full or quick run rewrites ``RESULTS.md`` and ``scaling.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _timing  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import peers as _peers  # noqa: E402
from train_ratio import epoch_ratio, raw_step_fn  # noqa: E402  (one raw baseline)

import fnn  # noqa: E402
from fnn import losses, train  # noqa: E402

LR = 1e-3
POOL = 4  # distinct input batches cycled through, so no step reads the previous step's output
# name: (sizes, batch, examples of the fit epoch; 0 = no epoch benchmark)
CONFIGS = {
    "small": ([64, 128, 128, 10], 32, 8192),
    "medium": ([784, 512, 512, 10], 128, 8192),
    "large": ([1024, 4096, 4096, 1024], 512, 0),
}
SMOKE_CONFIGS = {"tiny": ([8, 16, 4], 4, 64)}
# mode: rounds, min seconds per timing, warm-up steps, (widths, batches, max GFLOP per step)
MODES = {
    "full": dict(
        rounds=7,
        min_time=0.25,
        warmup=2,
        large_rounds=5,
        dot=4096,
        large_peers=True,
        scaling=([64, 256, 1024, 4096], [1, 8, 64, 256, 1024], 350),
    ),
    "quick": dict(
        rounds=5,
        min_time=0.1,
        warmup=1,
        large_rounds=2,
        dot=4096,
        large_peers=False,
        scaling=([64, 1024], [1, 64], 3),
    ),
    "smoke": dict(
        rounds=2,
        min_time=0.005,
        warmup=1,
        large_rounds=1,
        dot=128,
        large_peers=True,
        scaling=([8], [1, 4], 1),
    ),
}
# name: (grad, make_step's metric options, accuracy kept on the loss record). fnn_autodiff and
# fnn_manual are make_step's default (the loss only); "_metrics" asks for the accuracy and the
# gradient norm (make_step's default until issue 15); "bare" swaps fnn's softmax cross-entropy
# (issue 13's limits at +-inf and ulp-level log-probabilities: 3-7 more small kernels) for
# raw's own formula, i.e. exactly raw's arithmetic, so it measures the engine alone.
FNN_VARIANTS = {
    "fnn_autodiff": ("autodiff", {}, True),
    "fnn_manual": ("manual", {}, True),
    "fnn_autodiff_metrics": ("autodiff", {"accuracy": True, "grad_norm": True}, True),
    "fnn_manual_metrics": ("manual", {"accuracy": True, "grad_norm": True}, True),
    "fnn_autodiff_bare": ("autodiff", {}, False),
    "fnn_manual_bare": ("manual", {}, False),
}


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def _data(sizes, batch):
    xs = jax.random.normal(jax.random.key(1), (POOL, batch, sizes[0]), jnp.float32)
    ys = jax.random.randint(jax.random.key(2), (POOL, batch), 0, sizes[-1])
    return [xs[i] for i in range(POOL)], [ys[i] for i in range(POOL)]


def raw_runner(params, xs, ys):
    """The raw JAX step over the dense layers' ``{"w", "b"}`` dicts."""
    opt = optax.adam(LR)
    step = raw_step_fn(opt)
    dense = _copy([p for p in params if p])
    box = [(dense, opt.init(dense))]

    def run(calls):
        p, s = box[0]
        for i in range(calls):
            p, s, _ = step(p, s, xs[i % POOL], ys[i % POOL])
        jax.block_until_ready(p)
        box[0] = (p, s)

    return run


def raw_loss() -> losses.Loss:
    """The raw step's softmax cross-entropy (``jax.nn.log_softmax``, ``take_along_axis``) as a
    :class:`fnn.losses.Loss` record with its textbook gradient and no accuracy."""

    def fn(pred, labels):
        logp = jax.nn.log_softmax(pred)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    def grad(pred, labels):
        onehot = jax.nn.one_hot(labels, pred.shape[-1], dtype=pred.dtype)
        return (jax.nn.softmax(pred) - onehot) / pred.shape[0]

    sce = losses.get("softmax_cross_entropy")
    return sce._replace(name="raw_softmax_cross_entropy", fn=fn, grad=grad, accuracy=None)


def fnn_runner(model, params, xs, ys, grad, options=None, fnn_loss=True):
    """``fnn.train.make_step(..., **options)`` from its own :func:`fnn.train.init_state`, with
    fnn's softmax cross-entropy or (``fnn_loss=False``) :func:`raw_loss`."""
    opt = optax.adam(LR)
    loss = losses.get("softmax_cross_entropy") if fnn_loss else raw_loss()
    step = train.make_step(model, loss, opt, grad=grad, **(options or {}))
    box = [train.init_state(_copy(params), opt, jax.random.key(3))]

    def run(calls):
        st = box[0]
        for i in range(calls):
            st, _ = step(st, xs[i % POOL], ys[i % POOL])
        jax.block_until_ready(st)
        box[0] = st

    return run


def dot_runner(n):
    a = jax.random.normal(jax.random.key(4), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(5), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)

    def run(calls):
        out = None
        for _ in range(calls):
            out = dot(a, b)
        jax.block_until_ready(out)

    return run


def bench_step(sizes, batch, mode, peer_names, with_dot, rounds, fnn_names=None):
    """Interleaved step timings of raw, the fnn variants, the peers (and jnp.dot)."""
    cfg = MODES[mode]
    model = fnn.mlp(sizes, activation="relu", dtype=jnp.float32)
    params = model.init(jax.random.key(0))
    xs, ys = _data(sizes, batch)
    builders = {"raw": lambda: raw_runner(params, xs, ys)}
    smoke = {"fnn_autodiff", "fnn_manual_bare"}  # --smoke compiles two of them: fast tests
    for name, (grad, opts, acc) in FNN_VARIANTS.items():
        if (mode == "smoke" and name not in smoke) or (fnn_names and name not in fnn_names):
            continue
        builders[name] = lambda g=grad, o=opts, a=acc: fnn_runner(model, params, xs, ys, g, o, a)
    for name in peer_names:
        builders[name] = lambda f=_peers.PEERS[name]: f(sizes, xs, ys, LR)
    if with_dot:
        builders["dot"] = lambda: dot_runner(cfg["dot"])
    runners, first, failed = {}, {}, {}
    for name, build in builders.items():
        start = time.perf_counter()
        try:
            run = build()
            run(1)
        except Exception as e:  # a peer that breaks on this version is reported, not fatal
            if name not in _peers.PEERS:
                raise
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            continue
        first[name] = time.perf_counter() - start
        runners[name] = run
    times, calls = _timing.interleave(runners, rounds, cfg["min_time"], cfg["warmup"])
    dot_times = times.pop("dot", None)
    out = {
        "sizes": sizes,
        "batch": batch,
        "rounds": rounds,
        "calls_per_timing": calls,
        "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "ratio": _timing.median_ratios(times, "raw"),
        "first_step_s": first,
        "failed": failed,
    }
    if dot_times is not None:
        flops = _timing.mlp_flops(sizes, batch)
        dot_flops = 2 * cfg["dot"] ** 3
        out["step_gflop"] = flops / 1e9
        out["dot_n"] = cfg["dot"]
        out["dot_gflops"] = dot_flops / statistics.median(dot_times) / 1e9
        out["gflops"] = {k: flops / statistics.median(v) / 1e9 for k, v in times.items()}
        out["peak_fraction"] = {
            k: statistics.median(
                (flops / t) / (dot_flops / d) for t, d in zip(v, dot_times, strict=True)
            )
            for k, v in times.items()
        }
    return out


def _peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM, which a fresh exec starts afresh (ru_maxrss
    can keep the parent's peak from before the exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _memory_child(config: str, impl: str) -> None:
    """Run in a fresh process: build ``impl`` on ``config``, three steps, print peak RSS."""
    base = _peak_rss_mib()
    sizes, batch, _ = {**CONFIGS, **SMOKE_CONFIGS}[config]
    model = fnn.mlp(sizes, activation="relu", dtype=jnp.float32)
    params = model.init(jax.random.key(0))
    xs, ys = _data(sizes, batch)
    if impl == "raw":
        run = raw_runner(params, xs, ys)
    elif impl in FNN_VARIANTS:
        run = fnn_runner(model, params, xs, ys, *FNN_VARIANTS[impl])
    else:
        run = _peers.PEERS[impl](sizes, xs, ys, LR)
    del params
    run(3)
    print(json.dumps({"base_mib": base, "peak_mib": _peak_rss_mib()}))


def bench_memory(config: str, impls) -> dict:
    out = {}
    for impl in impls:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", config, impl],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            out[impl] = {"error": proc.stderr.strip().splitlines()[-1][:200]}
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["delta_mib"] = res["peak_mib"] - res["base_mib"]
        out[impl] = res
    return out


def bench_scaling(mode: str) -> dict:
    widths, batches, max_gflop = MODES[mode]["scaling"]
    points = []
    for w in widths:
        for b in batches:
            sizes = [w, w, w, w]
            flops = _timing.mlp_flops(sizes, b)
            if flops / 1e9 > max_gflop:
                continue
            model = fnn.mlp(sizes, activation="relu", dtype=jnp.float32)
            params = model.init(jax.random.key(0))
            xs, ys = _data(sizes, b)
            runners = {
                "raw": raw_runner(params, xs, ys),
                "fnn_autodiff": fnn_runner(model, params, xs, ys, "autodiff"),
                "fnn_autodiff_bare": fnn_runner(model, params, xs, ys, "autodiff", None, False),
            }
            for run in runners.values():
                run(1)
            heavy = flops > 20e9
            times, _ = _timing.interleave(
                runners,
                2 if heavy else 3,
                0.0 if heavy else MODES[mode]["min_time"] / 3,
                warmup=0 if heavy else 1,
            )
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            points.append(
                {
                    "width": w,
                    "batch": b,
                    "gflop": flops / 1e9,
                    "ms": ms,
                    "gflops": {k: flops / v / 1e6 for k, v in ms.items()},
                    "ratio": _timing.median_ratios(times, "raw"),
                }
            )
    return {"widths": widths, "batches": batches, "max_gflop": max_gflop, "points": points}


def available_peers(no_peers: bool, mode: str):
    """(peers to run, {skipped peer: why})."""
    if no_peers:
        return [], {k: "--no-peers" for k in _peers.PEERS}
    run, skipped = [], {}
    mods = {"flax": "flax", "equinox": "equinox", "haiku": "haiku", "torch": "torch"}
    for name in _peers.PEERS:
        mod = mods[next(m for m in mods if name.startswith(m))]
        try:
            __import__(mod)
        except ImportError:
            skipped[name] = f"{mod} not installed (pip install -e .[bench])"
            continue
        if name == "torch_compile" and mode != "full":
            skipped[name] = f"left out of --{mode} (its first step compiles for about a minute)"
            continue
        run.append(name)
    return run, skipped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="fewer rounds, coarser sweep (~5 min)")
    group.add_argument("--smoke", action="store_true", help="tiny configs (tests)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--no-peers", action="store_true", help="fnn and raw JAX only")
    parser.add_argument(
        "--no-write", action="store_true", help="do not rewrite RESULTS.md and scaling.png"
    )
    parser.add_argument(
        "--report",
        metavar="JSON",
        help="only rewrite RESULTS.md and scaling.png from a saved --json file",
    )
    parser.add_argument(
        "--before-after",
        nargs="+",
        metavar="BEFORE.json AFTER.json",
        help="with --report: append a before/after table of these pairs of --json runs",
    )
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("CONFIG", "IMPL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(*args.memory_child)
        return 0
    if args.report:
        with open(args.report) as f:
            results = json.load(f)
        pairs = []
        names = args.before_after or []
        for i in range(0, len(names) - 1, 2):
            with open(names[i]) as fb, open(names[i + 1]) as fa:
                pairs.append((f"run {i // 2 + 1}", json.load(fb), json.load(fa)))
        _write(results, _timing.before_after(pairs) if pairs else "")
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = MODES[mode]
    configs = SMOKE_CONFIGS if args.smoke else CONFIGS
    t0 = time.perf_counter()
    peer_names, skipped = available_peers(args.no_peers, mode)
    results = {
        "mode": mode,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _timing.machine(),
        "device": str(jax.devices()[0]),
        "platform": jax.devices()[0].platform,
        "versions": _timing.versions(),
        "peers_run": peer_names,
        "peers_skipped": skipped,
        "step": {},
        "epoch": {},
        "memory": {},
    }
    big = "large" if "large" in configs else list(configs)[-1]
    sections = results["section_seconds"] = {}
    mark = [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        sections[name] = round(now - mark[0], 1)
        mark[0] = now

    for name, (sizes, batch, _) in configs.items():
        rounds = cfg["large_rounds"] if name == "large" else cfg["rounds"]
        names = peer_names if name != "large" or cfg["large_peers"] else []
        if name == "large":  # its minute of compilation buys nothing where matmuls dominate
            names = [p for p in names if p != "torch_compile"]
        lean = name == "large" and mode == "quick"  # --quick: the large steps take 0.6 s
        res = bench_step(
            sizes,
            batch,
            mode,
            names,
            name == big,
            rounds,
            ("fnn_autodiff", "fnn_autodiff_bare", "fnn_manual_bare") if lean else None,
        )
        results["step"][name] = res
        print(_timing.step_line(name, res), flush=True)
        lap(f"step {name}")
    for name, (sizes, batch, n) in configs.items():
        if n:
            res = epoch_ratio(sizes, batch, n, cfg["rounds"])
            results["epoch"][name] = res
            print(
                f"epoch {name}: fit {res['fit_epoch_ms']:.2f} ms, raw loop "
                f"{res['loop_epoch_ms']:.2f} ms, ratio {res['ratio']:.3f}",
                flush=True,
            )
            lap(f"epoch {name}")
    impls = ["raw"] if mode == "smoke" else ["raw", "fnn_autodiff"]
    if mode == "full":
        impls += ["fnn_manual"] + [p for p in peer_names if p != "torch_compile"]
    results["memory"] = {"config": big, **bench_memory(big, impls)}
    lap("memory")
    results["scaling"] = bench_scaling(mode)
    lap("scaling")
    results["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    results["seconds"] = time.perf_counter() - t0
    text = _timing.markdown(results)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if not args.no_write and mode != "smoke":
        _write(results)
    return 0


def _write(results: dict, extra: str = "") -> None:
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write(_timing.markdown(results) + ("\n" + extra if extra else ""))
    _timing.plot_scaling(results["scaling"], os.path.join(HERE, "scaling.png"))


if __name__ == "__main__":
    sys.exit(main())

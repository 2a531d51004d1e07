"""Helpers shared by the benchmarks: interleaved timing, machine facts, and the report.

A *runner* is ``run(calls) -> None``: it performs ``calls`` training steps back to back, carrying
its own state from call to call, and blocks on the last result before returning. Runners are
timed in rounds; each round times every runner once, in forward order on even rounds and in
reverse order on odd ones, so load from other processes (this machine is shared) hits all of them
alike. The reported ratio is the median over rounds of the per-round ratio, which shrugs off
bursts that a ratio of medians would not.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax

Runner = Callable[[int], None]


def timed(run: Runner, calls: int) -> float:
    """Seconds per step of ``run(calls)``."""
    start = time.perf_counter()
    run(calls)
    return (time.perf_counter() - start) / calls


def calls_of(fn: Callable, *args) -> Runner:
    """The runner that calls ``fn(*args)`` back to back (a function without state to carry,
    such as a jitted gradient) and blocks on the last result."""

    def run(calls: int) -> None:
        out = None
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)

    return run


def first_call(run: Runner) -> float:
    """Seconds of the very first step: tracing, compilation and one step."""
    return timed(run, 1)


def interleave(
    runners: dict[str, Runner], rounds: int, min_time: float, warmup: int = 2, max_calls: int = 1000
) -> tuple[dict[str, list[float]], int]:
    """Time every runner once per round, alternating the order; returns per-step seconds.

    Args:
        runners: name -> runner, already compiled (see :func:`first_call`).
        rounds: number of rounds.
        min_time: seconds the slowest runner should take per timing; every runner gets the
            same number of calls so one round covers the same work for each.
        warmup: untimed steps per runner before the rounds (caches, thread pools).
        max_calls: cap on the calls per timing.

    Returns:
        ``(times, calls)``: name -> one per-step time per round, and the calls per timing.
    """
    for run in runners.values():
        if warmup:
            run(warmup)
    once = max(timed(run, 1) for run in runners.values())
    calls = max(1, min(max_calls, int(min_time / max(once, 1e-7))))
    times = {k: [] for k in runners}
    order = list(runners)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            times[k].append(timed(runners[k], calls))
    return times, calls


def median_ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """name -> median over rounds of ``times[name][r] / times[base][r]`` (``base`` left out)."""
    return {
        k: statistics.median(a / b for a, b in zip(v, times[base], strict=True))
        for k, v in times.items()
        if k != base
    }


def mlp_flops(sizes, batch: int) -> int:
    """FLOPs of one training step of a dense MLP: 2 per multiply-add, forward plus the two
    backward matmuls (dx and dw), so ``6 * batch * sum(fan_in * fan_out)``."""
    return 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """What ran the benchmark: CPU, cores, load average, Python and platform."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg": [round(v, 2) for v in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------- reporting (run.py's output)

_PACKAGES = ("jax", "jaxlib", "optax", "numpy", "flax", "equinox", "dm-haiku", "torch")


def versions() -> dict:
    """Installed versions of the benchmarked packages (absent ones left out)."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def step_line(name: str, res: dict) -> str:
    """One progress line: raw's step time and every variant's ratio to it."""
    return f"step {name}: raw {res['ms']['raw']:.4g} ms; / raw: " + ", ".join(
        f"{k} {v:.3f}" for k, v in res["ratio"].items()
    )


def _f(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def _targets(r: dict) -> list[str]:
    """The issue's targets against this run's numbers (reported, never asserted)."""
    out = [
        "## targets (this run)",
        "",
        "| config | fnn bare autodiff / manual (<= 1.05) | fnn default autodiff / manual "
        "(<= 1.10) | fastest peer | fit epoch / raw loop (small <= 0.80, medium <= 1.00) |",
        "|---|---|---|---|---|",
    ]
    for name, res in r["step"].items():
        q = res["ratio"]
        peers = {k: v for k, v in q.items() if not k.startswith("fnn")}
        best = min(peers, key=peers.get) if peers else None
        ep = r["epoch"].get(name)
        out.append(
            f"| {name} | {_f(q.get('fnn_autodiff_bare'))} / {_f(q.get('fnn_manual_bare'))}"
            f" | {_f(q.get('fnn_autodiff'))} / {_f(q.get('fnn_manual'))} | "
            + (f"{best} {peers[best]:.3f}" if best else "-")
            + " | "
            + (f"{ep['ratio']:.3f}" if ep else "-")
            + " |"
        )
    return out + [""]


def _accelerator_line(r: dict) -> str:
    """What ``jax.devices()`` found: the numbers are from that device, whatever it is."""
    platform = r.get("platform", "cpu")
    if platform == "cpu":
        return f"- accelerator: none found (jax.devices()[0] is {r['device']}); CPU numbers only"
    return f"- accelerator: {r['device']} ({platform}); the timings above are from it"


def markdown(r: dict) -> str:
    """RESULTS.md from run.py's results dict."""
    m = r["machine"]
    lines = [
        "# fnn benchmarks",
        "",
        f"Generated by `python benchmarks/run.py{'' if r['mode'] == 'full' else ' --' + r['mode']}`"
        f" on {r['date']} in {r['seconds']:.0f} s. Do not edit by hand.",
        "",
        "Seconds per section: "
        + ", ".join(f"{k} {v:.0f}" for k, v in r.get("section_seconds", {}).items()),
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({r['device']}); {m['platform']}, "
        f"Python {m['python']}",
        f"- load average (1, 5, 15 min) at start {m['loadavg']}, at end {r['loadavg_end']}: "
        "other jobs shared these cores, which is why every ratio is a median of per-round "
        "ratios from interleaved rounds",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "- peers run: " + (", ".join(r["peers_run"]) or "none"),
        "- peers skipped: "
        + (", ".join(f"{k} ({v})" for k, v in r["peers_skipped"].items()) or "none"),
        _accelerator_line(r),
        *(
            [
                "- --quick: the large config runs without the peers and with three fnn variants, "
                "the memory table has raw and "
                "fnn_autodiff only, and the sweep is coarse"
            ]
            if r["mode"] == "quick"
            else []
        ),
        *(
            [
                "- torch_compile runs on small and medium only: on large its minute of compilation "
                "buys nothing where the matmuls dominate"
            ]
            if "torch_compile" in r["peers_run"]
            else []
        ),
        "",
        "Model: float32 ReLU MLP, softmax cross-entropy on integer labels, `optax.adam(1e-3)`, "
        "synthetic data from fixed seeds. `raw` is the hand-written JAX step (params a list of "
        "`{w, b}` dicts, `jax.jit` with donation). `ratio` = median over rounds of the "
        "variant's step time / raw's in the same round (< 1 is faster than raw). `fnn_*` is "
        "`make_step`'s default, which reports the loss only (since issue 15); "
        "`fnn_*_metrics` asks for `accuracy=True, grad_norm=True` (the old default); "
        "`fnn_*_bare` runs fnn's engine on raw's own arithmetic (a loss record holding raw's "
        "`jax.nn.log_softmax` cross-entropy): its ratio is the engine's cost alone, and the gap "
        "between default and bare is fnn's more precise loss (issue 13). `first step` is the "
        "wall time of the first call: tracing, compilation and one step.",
        "",
    ]
    lines += _targets(r)
    for name, res in r["step"].items():
        lines += [
            f"## step: {name} {'-'.join(map(str, res['sizes']))}, batch {res['batch']} "
            f"({res['rounds']} rounds x {res['calls_per_timing']} steps)",
            "",
            "| variant | ms / step | ratio to raw | first step (s) |"
            + (" FLOP/s (G) | of jnp.dot peak |" if "gflops" in res else ""),
            "|---|---:|---:|---:|" + ("---:|---:|" if "gflops" in res else ""),
        ]
        for k, ms in sorted(res["ms"].items(), key=lambda kv: kv[1]):
            row = (
                f"| {k} | {ms:.4g} | {_f(res['ratio'].get(k, 1.0))} | "
                f"{_f(res['first_step_s'].get(k), '.2f')} |"
            )
            if "gflops" in res:
                row += f" {res['gflops'][k]:.1f} | {res['peak_fraction'][k]:.3f} |"
            lines.append(row)
        if "dot_gflops" in res:
            lines += [
                "",
                f"jnp.dot float32 {res['dot_n']}^2 in the same rounds: "
                f"{res['dot_gflops']:.1f} GFLOP/s; one step is {res['step_gflop']:.1f} "
                "GFLOP (6 x batch x sum(fan_in x fan_out)).",
            ]
        for k, why in res["failed"].items():
            lines.append(f"- {k} failed: {why}")
        lines.append("")
    if r["epoch"]:
        lines += [
            "## epoch: `fit` (one compiled `lax.scan`) vs a Python loop of the raw step",
            "",
            "Same shuffled minibatches (fit's own `epoch_indices`), the loop's pre-sliced "
            "on the device before its clock starts; fit's time is its own per-epoch wall "
            "time (history `seconds`, which includes the host shuffle and the metric read).",
            "",
            "| config | steps | fit epoch (ms) | raw loop epoch (ms) | ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, e in r["epoch"].items():
            lines.append(
                f"| {name} | {e['steps']} | {e['fit_epoch_ms']:.2f} | "
                f"{e['loop_epoch_ms']:.2f} | {e['ratio']:.3f} |"
            )
        lines.append("")
    mem = dict(r["memory"])
    config = mem.pop("config", "")
    lines += [
        f"## peak resident memory: {config}",
        "",
        "Peak RSS (`VmHWM`) of a fresh process per implementation that builds the model, its "
        "optimizer state and data, and runs three steps; `after imports` is the same "
        "process's peak before building anything (XLA's CPU buffers live in the process "
        "heap, so RSS counts them; tracemalloc would not).",
        "",
        "| implementation | peak RSS (MiB) | after imports (MiB) | difference (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for k, v in mem.items():
        if "error" in v:
            lines.append(f"| {k} | error: {v['error']} | | |")
        else:
            lines.append(
                f"| {k} | {v['peak_mib']:.0f} | {v['base_mib']:.0f} | {v['delta_mib']:.0f} |"
            )
    sc = r["scaling"]
    lines += [
        "",
        "## scaling: width x batch (`scaling.png`)",
        "",
        f"MLP width-width-width-width, widths {sc['widths']}, batches {sc['batches']} "
        f"(points over {sc['max_gflop']} GFLOP per step left out).",
        "",
        "| width | batch | raw ms | fnn ms | fnn / raw | fnn bare / raw | raw GFLOP/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in sc["points"]:
        lines.append(
            f"| {p['width']} | {p['batch']} | {p['ms']['raw']:.4g} | "
            f"{p['ms']['fnn_autodiff']:.4g} | {p['ratio']['fnn_autodiff']:.3f} | "
            f"{p['ratio']['fnn_autodiff_bare']:.3f} | {p['gflops']['raw']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def before_after(runs: list[tuple[str, dict, dict]]) -> str:
    """A markdown section comparing runs of the code before and after a change.

    Args:
        runs: ``(label, before results, after results)`` from ``run.py --json``, taken one
            after the other on the same machine (each ratio is within its own run).
    """
    lines = [
        "## before / after (issue 15)",
        "",
        "Each column pair is two `run.py --quick --no-peers` runs taken back to back, first "
        "the code before issue 15, then after; ratios are to raw JAX in the same run. "
        "`default` is `make_step`'s default (before: loss, accuracy and gradient norm; "
        "after: the loss only), `bare` does raw's work in both.",
        "",
        "| measurement | target | "
        + " | ".join(f"{lb} before | {lb} after" for lb, _, _ in runs)
        + " |",
        "|---|---|" + "---:|---:|" * len(runs),
    ]

    def row(label, target, get):
        cells = []
        for _, b, a in runs:
            for r in (b, a):
                try:
                    cells.append(f"{get(r):.3f}")
                except (KeyError, TypeError, IndexError):
                    cells.append("-")
        lines.append(f"| {label} | {target} | " + " | ".join(cells) + " |")

    for name in ("small", "medium", "large"):
        row(
            f"step {name}: default",
            "<= 1.10",
            lambda r, n=name: r["step"][n]["ratio"]["fnn_autodiff"],
        )
        row(
            f"step {name}: bare",
            "<= 1.05",
            lambda r, n=name: r["step"][n]["ratio"]["fnn_autodiff_bare"],
        )
    for name, target in (("small", "<= 0.80"), ("medium", "<= 1.00")):
        row(f"fit epoch / raw loop, {name}", target, lambda r, n=name: r["epoch"][n]["ratio"])
    points = runs[0][2]["scaling"]["points"]
    for p in points:
        w, bt = p["width"], p["batch"]

        def pick(r, w=w, bt=bt, k="fnn_autodiff"):
            (q,) = [q for q in r["scaling"]["points"] if (q["width"], q["batch"]) == (w, bt)]
            return q["ratio"][k]

        row(f"scaling w{w} b{bt}: default", "<= 1.10", pick)
        row(f"scaling w{w} b{bt}: bare", "<= 1.05", lambda r, p=pick: p(r, k="fnn_autodiff_bare"))
    return "\n".join(lines) + "\n"


def plot_scaling(sc: dict, path: str) -> None:
    """Step time and achieved GFLOP/s against batch, one line per width, fnn vs raw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, w in enumerate(sc["widths"]):
        pts = [p for p in sc["points"] if p["width"] == w]
        if not pts:
            continue
        b = [p["batch"] for p in pts]
        for impl, style in (("raw", "--"), ("fnn_autodiff", "-"), ("fnn_autodiff_bare", ":")):
            label = f"{impl.replace('_autodiff', '')} w={w}"
            c = colors[i % len(colors)]
            axes[0].plot(b, [p["ms"][impl] for p in pts], style, color=c, marker="o", label=label)
            axes[1].plot(
                b, [p["gflops"][impl] for p in pts], style, color=c, marker="o", label=label
            )
    for ax, ylabel in zip(axes, ("ms per step", "achieved GFLOP/s"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=6, ncol=3)
    fig.suptitle(
        "fnn make_step default (solid), fnn bare (dotted: fnn engine, raw's loss formula) "
        "vs raw JAX (dashed); width^4 MLP, Adam, float32",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

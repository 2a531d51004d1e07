"""Smoke tests of benchmarks/run.py: the tiny mode runs and its JSON has every section.

Times are never asserted (they depend on the machine and its load); only structure and sanity.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)

import _timing  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "smoke.json"
    before = {
        f: os.stat(os.path.join(BENCH, f)).st_mtime_ns
        for f in ("RESULTS.md", "scaling.png")
        if os.path.exists(os.path.join(BENCH, f))
    }
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCH, "run.py"),
            "--smoke",
            "--no-peers",
            "--json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {f: os.stat(os.path.join(BENCH, f)).st_mtime_ns for f in before}
    return json.loads(path.read_text()), proc.stdout, before, after


def _positive(v):
    return isinstance(v, float) and math.isfinite(v) and v > 0


def test_smoke_json_has_every_section(smoke):
    res, _, _, _ = smoke
    assert res["mode"] == "smoke"
    for key in (
        "date",
        "machine",
        "versions",
        "peers_run",
        "peers_skipped",
        "step",
        "epoch",
        "memory",
        "scaling",
        "seconds",
        "loadavg_end",
    ):
        assert key in res, key
    assert res["peers_run"] == []
    assert set(res["peers_skipped"]) >= {"flax_linen", "equinox", "haiku", "torch_eager"}
    assert res["machine"]["cores"] >= 1 and len(res["machine"]["loadavg"]) == 3
    assert "jax" in res["versions"] and "optax" in res["versions"]


def test_smoke_step_ratios_and_flops(smoke):
    step = smoke[0]["step"]["tiny"]
    assert set(step["ms"]) == {"raw", "fnn_autodiff", "fnn_manual_bare"}
    assert set(step["ratio"]) == {"fnn_autodiff", "fnn_manual_bare"}  # raw is the base
    assert all(_positive(v) for v in [*step["ms"].values(), *step["ratio"].values()])
    assert all(_positive(v) for v in step["first_step_s"].values())
    assert step["failed"] == {}
    # the last config carries the jnp.dot peak, timed in the same rounds
    assert _positive(step["dot_gflops"]) and set(step["peak_fraction"]) == set(step["ms"])


def test_smoke_epoch_memory_scaling(smoke):
    res = smoke[0]
    epoch = res["epoch"]["tiny"]
    assert epoch["steps"] == epoch["examples"] // epoch["batch"]
    assert _positive(epoch["ratio"]) and epoch["epochs_timed"] >= 3
    mem = res["memory"]["raw"]
    assert "error" not in mem, mem
    assert mem["peak_mib"] >= mem["base_mib"] > 0
    points = res["scaling"]["points"]
    assert [(p["width"], p["batch"]) for p in points] == [(8, 1), (8, 4)]
    assert all(_positive(p["ratio"]["fnn_autodiff"]) for p in points)


def test_smoke_prints_table_and_leaves_results_alone(smoke):
    _, out, before, after = smoke
    assert "# fnn benchmarks" in out and "| raw |" in out
    # the device line reports what jax.devices() found in the child, not a fixed sentence
    res = smoke[0]
    assert res["platform"] in ("cpu", "gpu", "tpu") and res["device"]
    if res["platform"] == "cpu":
        assert f"accelerator: none found (jax.devices()[0] is {res['device']})" in out
    else:
        assert f"accelerator: {res['device']} ({res['platform']})" in out
    assert before == after  # --smoke never rewrites RESULTS.md or scaling.png


def test_markdown_from_json_has_targets_and_every_config(smoke):
    res = smoke[0]
    text = _timing.markdown(res)  # what --report writes from a saved JSON
    assert "## targets (this run)" in text
    assert "| tiny |" in text and "## step: tiny 8-16-4, batch 4" in text
    assert f"{res['step']['tiny']['ratio']['fnn_autodiff']:.3f}" in text


def test_median_ratios_is_median_of_per_round_ratios():
    times = {"raw": [1.0, 2.0, 4.0], "a": [2.0, 2.0, 100.0]}
    # per round 2, 1, 25 -> median 2 (a ratio of medians would say 1)
    assert _timing.median_ratios(times, "raw") == {"a": 2.0}


def test_interleave_alternates_order():
    seen = []
    runners = {k: (lambda calls, k=k: seen.append(k)) for k in "ab"}
    times, calls = _timing.interleave(runners, rounds=2, min_time=0.0, warmup=0)
    assert calls == 1 and len(times["a"]) == len(times["b"]) == 2
    assert seen[-4:] == ["a", "b", "b", "a"]


def test_mlp_flops():
    assert _timing.mlp_flops([3, 4, 2], 5) == 6 * 5 * (3 * 4 + 4 * 2)


def test_before_after_table_pairs_runs_and_marks_missing_configs(smoke):
    res = smoke[0]
    text = _timing.before_after([("run 1", res, res)])
    r = res["scaling"]["points"][0]["ratio"]["fnn_autodiff"]
    assert "| run 1 before | run 1 after |" in text
    assert f"| scaling w8 b1: default | <= 1.10 | {r:.3f} | {r:.3f} |" in text
    assert "| step small: default | <= 1.10 | - | - |" in text  # smoke has no small config

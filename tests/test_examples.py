"""Every example in ``examples/`` runs in its ``--quick`` mode and its numbers support its claim.

Each script is loaded from its path and its ``main(argv)`` called in this process (the test
session has x64 on; the examples keep float32 paths float32 with explicit dtypes and run their
gradient checks in float64). Figures go to ``tmp_path``.
"""

import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
PNG = b"\x89PNG\r\n\x1a\n"


def run_example(name, tmp_path):
    spec = importlib.util.spec_from_file_location(
        f"fnn_example_{name}", os.path.join(EXAMPLES, f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--out", str(tmp_path)])
    figure = result["figure"]
    assert figure == os.path.join(str(tmp_path), f"{name}.png")
    with open(figure, "rb") as f:
        assert f.read(8) == PNG
    assert 5_000 < os.path.getsize(figure) < 100_000  # a real picture, small enough to commit
    return result


def test_xor_needs_a_hidden_layer(tmp_path):
    r = run_example("xor", tmp_path)
    assert r["mlp_accuracy"] == 1.0
    assert r["mlp_loss"] < 0.05
    # A line separates at most 3 of the 4 points; trained, the linear model gives up at 50/50.
    assert r["linear_accuracy"] <= 0.75
    assert r["linear_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert r["linear_max_confidence"] < 0.51


def test_sigmoid_gradients_vanish_relu_do_not(tmp_path, capsys):
    r = run_example("activations", tmp_path)
    first, last = r["first"], r["last"]
    assert set(first) == {"sigmoid", "tanh", "relu", "leaky_relu"}
    assert all(len(v) == 11 for v in r["norms"].values())  # 10 hidden + output dense layers
    assert first["sigmoid"] <= first["relu"] / 10
    assert first["sigmoid"] / last["sigmoid"] < 1e-3  # shrinks towards the input
    assert first["relu"] / last["relu"] > 0.1
    # Same budget: the sigmoid network has not left the starting loss (ln 10), relu has.
    assert r["losses"]["sigmoid"] > 0.95 * math.log(10)
    assert r["losses"]["relu"] < 0.5 * r["losses"]["sigmoid"]
    assert "claim: sigmoid's first-layer gradient" in capsys.readouterr().out


def test_large_learning_rate_kills_relu_not_leaky_relu(tmp_path):
    r = run_example("dead_relu", tmp_path)
    relu, leaky = r["relu"], r["leaky_relu"]
    assert len(relu["inactive"]) == r["epochs"] + 1  # init, then every epoch
    assert relu["inactive"][0] < 0.05  # healthy at init: the learning rate kills them
    assert relu["inactive"][-1] > leaky["inactive"][-1] + 0.1
    assert relu["frozen"] > 0.2  # dead relu units get exactly zero gradient
    assert leaky["frozen"] == 0.0  # every leaky unit still gets some
    assert relu["recovered"] < leaky["recovered"]
    assert leaky["test_accuracy"][-1] > relu["test_accuracy"][-1]
    assert leaky["test_accuracy"][-1] > 0.9


def test_softmax_probabilities_and_fused_gradient(tmp_path):
    r = run_example("softmax", tmp_path)
    w = r["worked"]
    z = np.array([2.0, 1.0, 0.1])
    np.testing.assert_allclose(w["probabilities"], np.exp(z) / np.exp(z).sum(), rtol=1e-6)
    assert w["sum"] == pytest.approx(1.0, abs=1e-6)
    assert w["shift_max_diff"] < 1e-6
    # float32 logits near 1000 are spaced 6e-5 apart: equal up to that rounding, and finite
    assert w["huge_max_diff"] < 1e-4
    h = w["entropy"]
    assert h["T = 0.5"] < h["T = 1"] < h["T = 2"]  # temperature flattens
    g = r["gradients"]
    assert g["dtype"] == "float64" and g["ok"]
    assert set(g["witnesses"]) == {
        "hand-written loss.grad",
        "chain through softmax's VJP",
        "jax.grad",
        "finite differences",
    }
    assert g["witnesses"]["jax.grad"]["max_rel_err"] < 1e-12
    row = r["one_example"]
    np.testing.assert_allclose(row["jax.grad"], np.subtract(row["p"], row["onehot"]), atol=1e-6)


def test_momentum_and_adaptive_optimizers_beat_gd(tmp_path):
    r = run_example("optimizers", tmp_path)
    loss = r["loss"]
    gd, minibatch = loss["GD (full batch)"], loss["mini-batch SGD (32)"]
    assert gd > 1.0  # hardly left ln 3 = 1.099 at this learning rate
    for name in ("momentum 0.9 (32)", "RMSprop (32)", "Adam (32)"):
        assert loss[name] < 0.9 * gd, name
        assert loss[name] < 0.9 * minibatch, name
    assert loss["Adam (32)"] < 0.5 * gd
    assert all(len(c) == r["epochs"] for c in r["curves"].values())


def test_learning_rate_too_high_too_low_and_the_range_test_pick(tmp_path):
    r = run_example("learning_rate", tmp_path)
    high, low, pick = (r["runs"][k] for k in ("too high", "too low", "range-test pick"))
    assert high["lr"] > pick["lr"] > low["lr"]
    assert pick["lr"] == pytest.approx(r["suggested_lr"])
    # too high: the loss explodes (and turns NaN, which stops the run)
    assert high["nonfinite_at"] is not None or high["losses"][-1] > 10 * high["losses"][0]
    assert max(high["losses"]) > 100 * high["losses"][0]
    # too low: barely moves
    assert low["losses"][-1] > 0.9 * low["losses"][0]
    # the pick: the best of the three, and a real descent
    assert r["final"]["range-test pick"] < 0.1 * r["final"]["too low"]
    assert pick["losses"][-1] < 0.2 * pick["losses"][0]


def test_manual_backward_matches_autodiff_and_finite_differences(tmp_path, capsys):
    r = run_example("manual_vs_autodiff", tmp_path)
    assert r["ok"] and r["verdict"].startswith("PASS")
    assert r["dtype"] == "float64" and r["fd_dtype"] == "float64"
    assert r["leaves"] == 6
    assert r["max_rel_err"] < 1e-10
    assert r["fd_max_rel_err"] < 1e-5
    t = r["timing"]
    assert t["ratio"] > 0 and math.isfinite(t["ratio"])  # printed, not asserted: speed varies
    out = capsys.readouterr().out
    assert "manual vs autodiff" in out and "manual/autodiff = " in out


def test_a_script_runs_standalone_and_switches_x64_on(tmp_path):
    # As a script, softmax.py turns float64 on at start-up for its checks.
    res = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "softmax.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert res.returncode == 0, res.stderr
    assert "for every witness (float64): ok" in res.stdout
    assert "vs finite differences" in res.stdout
    assert (tmp_path / "softmax.png").read_bytes()[:8] == PNG


def test_attention_reverses_a_sequence_a_per_token_network_cannot(tmp_path):
    r = run_example("transformer", tmp_path)
    assert r["accuracy"] >= 0.99
    # Without attention no position sees another: held-out accuracy stays near 1/10.
    assert r["baseline_accuracy"] < 0.2
    assert 0.8 < r["baseline_params"] / r["params"] < 1.25  # similar size


def test_convolution_compares_a_parameter_matched_mlp_and_shows_kernels(tmp_path):
    r = run_example("convolution", tmp_path)
    assert abs(r["cnn_params"] - r["mlp_params"]) <= 0.01 * r["cnn_params"]
    assert r["kernels"].shape == (3, 3, 1, 16)  # the first layer's kernels, as drawn
    # a few quick epochs already learn digits with both models
    assert r["cnn_accuracy"][-1] > 0.8 and r["mlp_accuracy"][-1] > 0.8  # per-epoch curves

"""Every public name fixed in DESIGN.md imports and has the documented shape."""

import importlib
import subprocess
import sys

import pytest

FIXED = {
    "fnn": ["mlp"],
    "fnn.activations": ["sigmoid", "tanh", "relu", "leaky_relu", "softmax", "get"],
    "fnn.losses": ["get"],
    "fnn.backprop": ["value_and_grad", "grad", "manual_vjp"],
    "fnn.check": ["compare", "assert_grads_close", "numerical_grad", "check_model"],
    "fnn.train": ["init_state", "make_step", "fit", "evaluate", "TrainState", "fit_many"],
    "fnn.optim": ["get"],
    "fnn.data": ["load", "xor", "moons", "circles", "spirals", "digits", "mnist"],
    "fnn.checkpoint": ["save", "restore", "latest"],
    "fnn.diagnostics": ["grad_norms", "unit_stats", "update_ratios", "lr_find"],
    "fnn.parallel": ["make_mesh"],
    "fnn.cli": ["main"],
}


@pytest.mark.parametrize("module", sorted(FIXED))
def test_fixed_names_import(module):
    mod = importlib.import_module(module)
    for name in FIXED[module]:
        assert callable(getattr(mod, name)), f"{module}.{name}"


def test_registries_hold_the_fixed_names():
    from fnn import activations, losses

    for name in ["sigmoid", "tanh", "relu", "leaky_relu", "softmax", "identity"]:
        rec = activations.get(name)
        assert callable(rec.fn) and callable(rec.vjp)
    for name in ["mse", "binary_cross_entropy", "softmax_cross_entropy"]:
        rec = losses.get(name)
        assert callable(rec.fn) and callable(rec.grad)


def test_train_state_fields():
    from fnn import train

    assert train.TrainState._fields == ("params", "opt_state", "step", "key", "model_state")


def test_console_script_lists_the_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "fnn.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for name in ("train", "check"):
        assert name in out.stdout
    for name in ("train", "check"):
        sub = subprocess.run(
            [sys.executable, "-m", "fnn.cli", name, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sub.returncode == 0 and "--json" in sub.stdout


def test_import_fnn_does_not_import_matplotlib():
    code = "import sys, fnn, fnn.backprop; print('matplotlib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "fnn.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    assert "usage: fnn" in out.stdout

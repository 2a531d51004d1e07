"""Every public name fixed in DESIGN.md imports and has the documented shape."""

import importlib
import subprocess
import sys

import pytest

FIXED = {
    "fnn": ["mlp"],
    "fnn.activations": ["sigmoid", "tanh", "relu", "leaky_relu", "softmax", "get"],
    "fnn.losses": ["get"],
    "fnn.backprop": ["value_and_grad", "grad"],
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


def test_import_fnn_does_not_import_matplotlib():
    code = "import sys, fnn, fnn.backprop; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "fnn.cli", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    assert "usage: fnn" in out.stdout

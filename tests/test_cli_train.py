"""``fnn train`` end to end: the default run, every flag, the JSON, and clean errors."""

import json
import os
import subprocess
import sys

import pytest

from fnn import activations, cli, losses, optim

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def fnn_train(*flags, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "fnn.cli", "train", *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def test_default_run_reaches_097_on_digits(tmp_path):
    out = tmp_path / "run"
    res = fnn_train("--out", str(out), "--json", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["test_accuracy"] >= 0.97
    assert result["config"]["data"] == "digits" and result["epochs"] == 60
    hist = result["history"]
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "seconds"):
        assert len(hist[key]) == 60, key
    assert hist["train_loss"][-1] < hist["train_loss"][0] / 10
    assert hist["lr"][0] > hist["lr"][-1]  # cosine decay
    assert len(result["params_digest"]) == 64
    assert result["device"].startswith("cpu")
    assert {"fnn", "jax", "optax", "python"} <= set(result["versions"])
    for name in ("metrics.json", "curves.png", "params.npz"):
        assert (out / name).stat().st_size > 0, name
    assert [p.name for p in out.glob("ckpt-*.npz")] == [f"ckpt-{60 * 44:08d}.npz"]
    assert "test accuracy" in res.stdout and "device" in res.stdout  # the summary table
    assert (
        json.loads((out / "metrics.json").read_text())["params_digest"] == result["params_digest"]
    )


def test_every_flag_end_to_end(tmp_path):
    flags = [
        "--data",
        "moons",
        "--hidden",
        "8,8",
        "--activation",
        "tanh",
        "--loss",
        "binary_cross_entropy",
        "--optimizer",
        "momentum",
        "--lr",
        "0.05",
        "--schedule",
        "step",
        "--batch-size",
        "full",
        "--epochs",
        "4",
        "--seed",
        "3",
        "--grad",
        "manual",
        "--devices",
        "1",
        "--quiet",
        "--on-nonfinite",
        "skip",
    ]
    a = fnn_train(*flags, "--out", str(tmp_path / "a"), "--json", str(tmp_path / "a.json"))
    assert a.returncode == 0, a.stderr
    assert a.stdout.strip() == ""  # --quiet
    ra = json.loads((tmp_path / "a.json").read_text())
    assert ra["config"]["hidden"] == [8, 8] and ra["config"]["batch_size"] == "full"
    assert ra["config"]["grad"] == "manual" and ra["config"]["lr"] == [0.05]
    assert len(ra["history"]["train_loss"]) == 4
    assert ra["skipped"] == 0
    # Same flags, autodiff gradients: same learning, digest equal up to round-off only.
    b = fnn_train(
        *[f if f != "manual" else "autodiff" for f in flags],
        "--out",
        str(tmp_path / "b"),
        "--json",
        str(tmp_path / "b.json"),
    )
    assert b.returncode == 0, b.stderr
    rb = json.loads((tmp_path / "b.json").read_text())
    assert rb["history"]["train_loss"] == pytest.approx(ra["history"]["train_loss"], rel=1e-4)
    # Same seed, same flags: bitwise identical parameters.
    c = fnn_train(*flags, "--out", str(tmp_path / "c"), "--json", str(tmp_path / "c.json"))
    assert c.returncode == 0
    assert json.loads((tmp_path / "c.json").read_text())["params_digest"] == ra["params_digest"]


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        (["--data", "cifar"], r"--data: unknown dataset 'cifar'.*digits"),
        (["--data", "mnist:/nonexistent/mnist"], r"--data: .*/nonexistent/mnist"),
        (["--hidden", "0"], r"--hidden: every width must be a positive int, got 0"),
        (["--hidden", "12,x"], r"--hidden: expected comma-separated positive ints"),
        (["--lr", "-0.1"], r"--lr: expected a positive finite number, got -0.1"),
        (["--lr", "0"], r"--lr: expected a positive finite number, got 0"),
        (["--batch-size", "0"], r"--batch-size: expected a positive int or 'full', got 0"),
        (["--batch-size", "100000"], r"--batch-size: expected at most 1438 \(the training"),
        (["--epochs", "0"], r"--epochs: expected a positive number, got 0"),
        (["--activation", "relux"], r"--activation: unknown 'relux'; expected one of"),
        (["--loss", "hinge"], r"--loss: unknown 'hinge'"),
        (["--optimizer", "lion"], r"unknown 'lion'|lion"),
        (["--schedule", "linear"], r"--schedule: unknown 'linear'"),
        (["--devices", "0"], r"--devices: expected a positive int or 'all', got 0"),
        (["--devices", "64"], r"devices: expected 1\.\.1"),
        (["--resume"], r"--resume needs --out"),
    ],
)
def test_bad_flags_exit_2_with_one_message(flags, pattern, capsys, tmp_path):
    if "--resume" not in flags:
        flags = [*flags, "--out", str(tmp_path / "o")]
    code = cli.main(
        ["train", "--quiet", "--epochs", "1", *flags]
        if "--epochs" not in flags
        else ["train", "--quiet", *flags]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fnn train: error: ")
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, err), err


def test_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("precious")
    assert cli.main(["train", "--quiet", "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "exists and is a file, expected a folder" in err
    assert f.read_text() == "precious"


def test_bad_flag_through_the_console_has_no_traceback(tmp_path):
    res = fnn_train("--hidden", "0", "--out", str(tmp_path / "o"), timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        "fnn train: error: --hidden: every width must be a positive int, got 0 in '0'"
    )


def test_backward_check_is_in_the_json_and_the_table(tmp_path, capsys):
    out = tmp_path / "o"
    code = cli.main(
        [
            "train",
            "--data",
            "xor",
            "--hidden",
            "4",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["config"]["grad"] == "manual"  # the hand-written sweep is the default
    assert result["backward_check"]["ok"] is True
    assert 0 <= result["backward_check"]["max_rel_err"] < 1e-4  # float32 round-off
    assert "ok (manual vs jax.grad, max rel err" in capsys.readouterr().out


def test_a_wrong_backward_rule_stops_the_run_with_exit_1(tmp_path, monkeypatch, capsys):
    sce = losses.get("softmax_cross_entropy")
    # A planted bug: the gradient of the loss halved. jax.grad of .fn is still right.
    monkeypatch.setitem(
        losses._REGISTRY,
        "softmax_cross_entropy",
        sce._replace(grad=lambda pred, target: 0.5 * sce.grad(pred, target)),
    )
    out = tmp_path / "o"
    code = cli.main(["train", "--quiet", "--data", "xor", "--hidden", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "fnn train: error: the hand-written backward disagrees with jax.grad" in err
    for leaf in ("[0]['w']", "[0]['b']", "[2]['w']", "[2]['b']"):  # the per-leaf table
        assert leaf in err
    assert "FAIL" in err
    assert not out.exists()  # checked before the folder is claimed or anything trained


@pytest.mark.parametrize("command", ["train", "check", "lr-find"])
def test_help_lists_every_choice_and_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks
    names = [*activations.NAMES, *losses.NAMES]
    if command != "check":
        names += ["xor", "moons", "circles", "spirals", "digits", "mnist:PATH"]
        names += [n for n in optim.NAMES if command == "train" or n != "gd"]
    if command == "train":
        names += [*optim.SCHEDULES, "manual", "autodiff", "raise", "skip"]
    for name in names:
        assert name in text, name
    assert "(default: None)" not in text
    for chunk in text.split(" --")[1:]:  # each flag's help states its default at most once
        assert chunk.count("default") <= 1, chunk


def test_the_application_layer_imports_one_way():
    """cli -> experiment/sweep -> runfolder -> checkpoint -> files; no private names across
    modules; no imports inside functions but rich's (read with ast, nothing imported)."""
    import ast
    import pathlib

    root = pathlib.Path(cli.__file__).parents[1]
    layer = {"files": 0, "checkpoint": 1, "runfolder": 2, "experiment": 3, "sweep": 4, "cli": 5}
    paths = [*(root / "cli").glob("*.py")] + [root / f"{m}.py" for m in layer if m != "cli"]
    for path in paths:
        me = "cli" if path.parent.name == "cli" else path.stem
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for mod in mods:
                parts = mod.split(".")
                if parts[0] != "fnn":
                    continue
                names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
                target = parts[1] if len(parts) > 1 else None
                for name in names or [None]:
                    assert not (name or "").startswith("_"), f"{path.name}: private {mod}.{name}"
                    t = target or name
                    if t in layer:
                        assert layer[t] <= layer[me], f"{path.name}: upward import of {t}"
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import | ast.ImportFrom):
                        mod = (
                            node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                        )
                        assert mod.split(".")[0] == "rich", f"{path.name}:{fn.name} imports {mod}"

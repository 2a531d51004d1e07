"""A run folder: the one run it belongs to, and what may change when that run resumes.

``run.json`` names the run (``run_id``, 12 random hex digits, and its config); the id is also
in every checkpoint's metadata and in ``metrics.json``. A fresh run refuses a folder holding
another run unless told to replace it (:func:`claim`); ``--resume`` continues only the run
the folder names, with its saved config (:func:`resume_point`, :func:`resume_config`).
Everything here reads; only :func:`claim` writes, under the folder's lock.
"""

from __future__ import annotations

import json
import os
import secrets

import numpy as np
from jax.experimental import multihost_utils

from fnn import checkpoint, files

#: The keys of a run's config (what ``fnn train`` records in ``run.json`` and checkpoints).
CONFIG_KEYS = (
    "data",
    "hidden",
    "activation",
    "loss",
    "optimizer",
    "lr",
    "schedule",
    "batch_size",
    "epochs",
    "seed",
    "seeds",
    "grad",
    "devices",
    "on_nonfinite",
    "checkpoint_every",
    "model",
)

#: Config keys that may differ on ``--resume`` (how long and where it runs, not what it
#: trains); ``epochs`` only under the constant schedule.
RESUMABLE = ("epochs", "checkpoint_every", "devices")

#: The run folder's record of its run.
RUN_FILE = "run.json"

#: Files a run writes into its folder (what ``overwrite`` removes).
OUTPUTS = ("metrics.json", "params.npz", "curves.png", RUN_FILE)


class ConfigError(ValueError):
    """A config or run folder that cannot be trained; the message names the flag."""


def new_run_id() -> str:
    """A fresh run id: 12 random hex digits."""
    return secrets.token_hex(6)


def folder_run(out: str) -> dict | None:
    """The run a folder holds: its ``run.json``; ``{"run_id": None}`` for a folder with fnn
    outputs but no ``run.json`` (written by an older fnn, or a stray checkpoint); else None."""
    path = os.path.join(out, RUN_FILE)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                record = json.load(f)
        except ValueError as err:
            raise ConfigError(f"--out: {path} is not valid JSON ({err})") from None
        if not isinstance(record, dict) or "run_id" not in record:
            raise ConfigError(f"--out: {path} is not an fnn run record (no run_id)")
        return record
    if not os.path.isdir(out):
        return None
    names = set(os.listdir(out))
    if checkpoint.list_checkpoints(out) or names & {"metrics.json", "params.npz"}:
        return {"run_id": None}
    return None


def claim(out: str, run_id: str, cfg: dict, overwrite: bool) -> None:
    """Make ``out`` the folder of a fresh run ``run_id`` (hold its lock while calling this).

    Raises:
        ConfigError: ``out`` holds another run and ``overwrite`` is false.
    """
    other = folder_run(out)
    if other is not None and not overwrite:
        who = f"run {other['run_id']}" if other["run_id"] else "the outputs of another run"
        raise ConfigError(
            f"--out: folder {out} holds {who}; continue it with --resume, choose another "
            f"--out, or pass --overwrite to replace it"
        )
    if other is not None:
        for path in checkpoint.list_checkpoints(out):
            os.remove(path)
        for name in OUTPUTS:
            if os.path.isfile(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    files.write_json(os.path.join(out, RUN_FILE), {"run_id": run_id, "config": cfg})


def resume_config(cfg: dict, given: set, saved: dict, path: str) -> dict:
    """The config a resumed run trains: the saved one, with the keys that may change.

    Args:
        cfg: the config parsed from the flags.
        given: the config keys whose flags were given explicitly.
        saved: the checkpoint's config.
        path: the checkpoint (named in messages).

    Raises:
        ConfigError: a flag differs from the saved run (each named, saved vs given), or
            ``--epochs`` would stretch a schedule.
    """
    if saved and "model" not in saved:
        saved = {**saved, "model": "mlp"}  # runs saved before --model existed trained MLPs
    missing = [k for k in CONFIG_KEYS if k not in saved]
    if missing:
        raise ConfigError(
            f"--resume: {path} holds no complete fnn train config (missing {missing}); "
            f"continue it from Python with fnn.checkpoint.restore"
        )
    diffs = [
        f"--{k.replace('_', '-')} saved {_show(saved[k])}, given {_show(cfg[k])}"
        for k in CONFIG_KEYS
        if k in given and k not in RESUMABLE and cfg[k] != saved[k]
    ]
    if diffs:
        raise ConfigError(
            f"--resume: the flags differ from the saved run ({path}): {'; '.join(diffs)}. "
            f"On resume only --epochs (under --schedule constant), --checkpoint-every, "
            f"--keep, --devices, --json and --quiet may change; start a new run "
            f"(another --out) to train another config"
        )
    epochs = cfg["epochs"] if "epochs" in given else saved["epochs"]
    if epochs != saved["epochs"] and saved["schedule"] != "constant":
        raise ConfigError(
            f"--epochs: the checkpointed run uses the {saved['schedule']!r} schedule over "
            f"{saved['epochs']} epochs; it can only resume to that length (start a new run "
            f"to train longer, or use --schedule constant to extend runs)"
        )
    merged = {**saved, "epochs": epochs}
    for k in ("checkpoint_every", "devices"):
        if k in given:
            merged[k] = cfg[k]
    return merged


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def named(out: str | None) -> bool:
    record = folder_run(out) if out else None
    return bool(record and record.get("run_id"))


def resume_point(out: str, cfg: dict, given: set) -> tuple[str | None, dict, dict | None]:
    """``(checkpoint, config, metadata)`` to continue the run in ``out`` (read-only).

    ``checkpoint`` is None when the run saved nothing yet (a new run starts).

    Raises:
        ConfigError: a checkpoint not made by ``fnn train`` (e.g. saved from Python), one
            of another run than ``run.json`` names, or flags that conflict with it.
    """
    try:
        path = checkpoint.latest(out)
    except checkpoint.CheckpointError as err:
        raise ConfigError(f"--resume: {err}") from None
    record = folder_run(out)
    if path is None:  # nothing saved yet: the flags must still match the run it names
        if record and isinstance(record.get("config"), dict):
            return (
                None,
                resume_config(cfg, given, record["config"], os.path.join(out, RUN_FILE)),
                None,
            )
        return None, cfg, None
    meta = checkpoint.info(path)["metadata"]
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ConfigError(
            f"--resume: {path} was not saved by fnn train (its metadata holds no run "
            f"config; e.g. saved with fnn.checkpoint.save from Python); restore it with "
            f"fnn.checkpoint.restore, or start a new run in another --out"
        )
    owner = record and record.get("run_id")
    if owner and meta.get("run_id") != owner:
        raise ConfigError(
            f"--resume: {path} belongs to run {meta.get('run_id')}, but {out} holds run "
            f"{owner} ({RUN_FILE}); it was copied in from elsewhere: remove it, or resume "
            f"that run in its own folder"
        )
    return path, resume_config(cfg, given, meta["config"], path), meta


def run_id_for(out: str | None, meta: dict | None, procs: int) -> str:
    """This run's id: the folder's (or its checkpoint's) when it continues a run; else a new
    one, shared by every process of a multi-process job."""
    record = folder_run(out) if out else None
    for known in (record and record.get("run_id"), meta and meta.get("run_id")):
        if known:
            return known
    word = np.frombuffer(bytes.fromhex(new_run_id()) + b"\0\0", np.uint32)
    if procs > 1:  # process 0's id, so that every process reports the same one
        word = np.asarray(multihost_utils.broadcast_one_to_all(word))
    return word.tobytes()[:6].hex()


__all__ = [
    "CONFIG_KEYS",
    "OUTPUTS",
    "RESUMABLE",
    "RUN_FILE",
    "ConfigError",
    "claim",
    "folder_run",
    "named",
    "new_run_id",
    "resume_config",
    "resume_point",
    "run_id_for",
]

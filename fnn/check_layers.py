"""Check one layer's hand-written backward, and find which layer of a network has the wrong one.

:func:`check_layer` checks a layer alone (any :class:`fnn.layers.Layer`: fnn's own, a
composite, or :func:`fnn.layers.custom`): at random parameters and a random input batch, its
``backward`` (``dparams`` and ``dx``) against ``jax.vjp`` of its ``forward`` and against
finite differences, over several random output cotangents (:func:`fnn.check.check_vjp`'s
machinery; rows are named ``params[0]['w']`` and ``x``).

A wrong rule in one layer makes every parameter leaf below it disagree, so a failing leaf does
not say where the bug is. :func:`locate` says: it runs the forward once, takes every
sub-layer's real input from :func:`fnn.models.taps`, and checks each sub-layer's backward alone
at that input against ``jax.vjp`` of its own forward. A sub-layer that is wrong while every
layer inside it is right is a culprit (a wrong activation derivative is named as that
activation; a composite whose children are all right has a wrong combination rule of its own).
:func:`check_layer` on a composite, and :func:`fnn.check.check_model` when it fails, report the
culprits in the order of the backward sweep.

Example:
    >>> import jax.numpy as jnp
    >>> from fnn import layers, models
    >>> report = check_layer(models.serial(layers.dense(3), layers.activation("tanh")), (2,))
    >>> report.ok, [r.path for r in report.rows]
    (True, ["params[0]['b']", "params[0]['w']", 'x'])
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn.check_rules import resolve_options, vjp_report
from fnn.layers import Layer
from fnn.models import init_state_of, sublayers, taps
from fnn.rule_report import LayerFinding, RuleReport

_PATH_PART = re.compile(r"\[(\d+)\]|\['([^']*)'\]")


def subtree(tree, path: str):
    """The part of ``tree`` at a sub-layer path such as ``"[2][0]"`` (``""``: all of it)."""
    for m in _PATH_PART.finditer(path):
        tree = tree[int(m[1])] if m[1] is not None else tree[m[2]]
    return tree


def as_layer(layer) -> Layer:
    """``layer`` itself, or a model's ``.layer``; ``TypeError`` otherwise."""
    inner = getattr(layer, "layer", None)
    if not isinstance(layer, Layer) and isinstance(inner, Layer):
        return inner
    if not isinstance(layer, Layer):
        raise TypeError(
            f"check_layer: layer must be an fnn.layers.Layer or a model, got "
            f"{type(layer).__name__}; wrap a function with fnn.layers.custom(apply, backward=...)"
        )
    return layer


def layer_rule_check(layer: Layer, params, x, *, fwd_key=None, train=False, state=None, **options):
    """The three-witness check of ``layer``'s backward at ``(params, x)``.

    ``fwd_key``, ``train`` and ``state`` go to the layer's forward; ``options`` are those of
    :func:`fnn.check.check_vjp` (whose ``key`` draws the cotangents).

    ``x`` that is not floating point (token ids) is held fixed, and only ``dparams`` checked.

    Returns:
        A :class:`fnn.check.RuleReport` of kind ``"layer"`` with rows ``params...`` and ``x``.
    """
    opts = resolve_options("check_layer", options)
    float_x = jnp.issubdtype(jnp.result_type(x), jnp.floating)

    def run(p, xx):
        return layer.forward(p, xx, key=fwd_key, train=train, state=state)

    if float_x:
        primals, names = (params, x), ["params", "x"]

        def f(p, xx):
            return run(p, xx)[0]

        def rule(ct):
            return layer.backward(params, run(params, x)[1], ct)

    else:
        primals, names = (params,), ["params"]

        def f(p):
            return run(p, x)[0]

        def rule(ct):
            return (layer.backward(params, run(params, x)[1], ct)[0],)

    opts["name"] = opts["name"] or layer.name
    report = vjp_report("layer", rule, f, primals, names, opts, f)
    if layer.rule == "autodiff":
        note = (
            "autodiff rule: this layer has no hand-written backward (fnn.layers.custom without "
            "backward), so its rule is jax.vjp of its forward"
        )
        report = report._replace(name=f"{report.name} [autodiff rule]", note=note)
    return report


def locate(layer, params, x, *, key=None, train=False, state=None, samples=2) -> tuple:
    """Check every sub-layer's backward alone at its real input and mark the culprits.

    Args:
        layer: a layer or a model.
        params, x: where the whole layer runs; ``x: [batch, *in_shape]``.
        key, train, state: as for the layer's forward (the same key gives the same inputs).
        samples: random cotangents per sub-layer.

    Returns:
        One :class:`fnn.check.LayerFinding` per sub-layer in backward-sweep order (the last
        layer first); ``culprit`` marks the wrong ones whose own sub-layers are all right.
    """
    layer = as_layer(layer)
    if state is None:
        state = init_state_of(layer, np.shape(x)[1:], jnp.result_type(x))
    t = taps(layer, params, x, key=key, train=train, state=state or None)
    found = []
    for path, lyr in sublayers(layer).items():
        xin = t[path]["in"]
        s = init_state_of(lyr, np.shape(xin)[1:], jnp.result_type(xin)) or None
        args = (lyr, subtree(params, path), xin)
        kw = {"fwd_key": key, "train": train, "state": s, "samples": samples, "transforms": False}
        rep = layer_rule_check(*args, fd=False, **kw)
        if not rep.ok:  # ask finite differences too: at a tie autodiff may be the odd one out
            rep = layer_rule_check(*args, **kw)
        failed = tuple(r.path for r in rep.rows if not rule_right(r))
        found.append(LayerFinding(path, lyr.name, lyr.rule, not failed, rep.max_rel_err, failed))
    bad = [f.path for f in found if not f.ok]
    found = [f._replace(culprit=not f.ok and not _has_bad_inside(f.path, bad)) for f in found]
    return tuple(reversed(found))


def rule_right(row) -> bool:
    """The rule is right on this row: it agrees with autodiff, or autodiff alone is the odd one
    out (the rule agrees with finite differences, which disagree with autodiff)."""
    if row.ok:
        return True
    fd_ad = row.fd_autodiff
    return row.fd is not None and row.fd.ok and fd_ad is not None and not fd_ad.ok


def _has_bad_inside(path: str, bad: Sequence[str]) -> bool:
    return any(q != path and q.startswith(path) for q in bad)


def check_layer(
    layer,
    in_shape,
    *,
    dtype=jnp.float64,
    key=None,
    batch: int = 4,
    train: bool = False,
    x=None,
    **options,
) -> RuleReport:
    """Check one layer's hand-written backward against ``jax.vjp`` and finite differences.

    Args:
        layer: an :class:`fnn.layers.Layer` (fnn's, a composite, or ``fnn.layers.custom``) or
            a model.
        in_shape: the feature shape of one input, e.g. ``(4,)`` or ``(8, 8, 3)``.
        dtype: parameters' and input's dtype (finite differences always run in float64).
        key: PRNG key for the parameters, the input and the cotangents (default key 0).
        batch: the input batch size; more than 1, so that a rule right only for batch 1 fails.
        train: run the forward in training mode (dropout with its key, batch statistics).
        x: an input ``[batch, *in_shape]`` to check at instead of a random normal one (token
            ids for an embedding: non-float inputs are held fixed and only ``dparams`` checked).
        **options: as for :func:`fnn.check.check_vjp` (``samples``, ``rtol``, ``fd``, ...).

    Returns:
        A :class:`fnn.check.RuleReport` of kind ``"layer"``: rows ``params<path>`` and ``x``;
        for a composite, ``layers`` holds every sub-layer checked alone and the verdict names
        the culprit. A layer without a hand-written backward is marked ``[autodiff rule]``.

    Raises:
        TypeError: ``layer`` is not a layer or model.
        ValueError: ``batch`` is not a positive int.
    """
    layer = as_layer(layer)
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"check_layer: batch must be a positive int, got {batch!r}; use 4")
    key = jax.random.key(0) if key is None else key
    k_init, k_x, k_fwd, k_ct = jax.random.split(key, 4)
    in_shape = tuple(in_shape)
    _, params = layer.init(k_init, in_shape, dtype)
    x = jax.random.normal(k_x, (batch, *in_shape), dtype) if x is None else jnp.asarray(x)
    state = init_state_of(layer, in_shape, dtype) or None
    fwd_key = k_fwd if train else None
    options.setdefault("key", k_ct)
    report = layer_rule_check(
        layer, params, x, fwd_key=fwd_key, train=train, state=state, **options
    )
    if layer.parts:
        found = locate(layer, params, x, key=fwd_key, train=train, state=state)
        report = report._replace(layers=found)
    return report


def assert_layer_ok(layer, in_shape, **kwargs) -> RuleReport:
    """:func:`check_layer`, raising ``AssertionError`` with the table on failure."""
    report = check_layer(layer, in_shape, **kwargs)
    if not report.ok:
        raise AssertionError(f"layer backward is wrong\n{report}")
    return report

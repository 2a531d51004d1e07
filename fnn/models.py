"""Composition: ``serial``, ``residual`` and ``parallel`` layers, models, and the ``mlp`` recipe.

A composite is itself a :class:`~fnn.layers.Layer`, so composites nest. Its forward runs its
children's forwards and keeps their residuals; its backward runs their backwards in reverse and
adds the cotangents where a value was used twice (the input of a residual block or of parallel
branches). That composition *is* the manual reverse sweep: :mod:`fnn.backprop` calls the
model's forward, the loss's gradient and the model's backward, and nothing else.

A :class:`Model` is a layer bound to an input feature shape and a parameter dtype, so that
``model.init(key)`` needs nothing else; ``model.apply`` checks ``x`` and ``params`` against
the model and names the offending layer when they do not fit.

Intermediates are named by path, like parameters: :func:`sublayers` maps ``"[2]"`` (the third
child), ``"[1][0]"`` (nested) and ``""`` (the whole) to layer records, and :func:`taps` maps
the same paths to each sub-layer's input and output.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import fnn
    >>> model = fnn.mlp([2, 8, 1], activation="tanh")
    >>> params = model.init(jax.random.key(0))
    >>> [sorted(p) for p in params]
    [['b', 'w'], [], ['b', 'w']]
    >>> model.apply(params, jnp.zeros((5, 2), jnp.float32)).shape
    (5, 1)
    >>> block = fnn.models.residual(fnn.layers.dense(8), fnn.layers.activation("relu"))
    >>> net = fnn.models.build(fnn.models.serial(fnn.layers.dense(8), block), (2,))
    >>> sorted(fnn.models.sublayers(net))
    ['', '[0]', '[1]', '[1][0]', '[1][1]']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fnn import activations as _act
from fnn import layers as _layers
from fnn.compose import as_layer, init_state_of, parallel, residual, serial, sublayers, taps
from fnn.layers import Layer

__all__ = [
    "Model",
    "build",
    "check_input",
    "check_params",
    "describe",
    "init_state_of",
    "mlp",
    "parallel",
    "residual",
    "serial",
    "sublayers",
    "taps",
]

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# models


class Model(NamedTuple):
    """A layer bound to an input feature shape and a parameter dtype.

    Attributes:
        layer: the underlying (usually serial) :class:`~fnn.layers.Layer`.
        in_shape: feature shape of one input example, e.g. ``(64,)``.
        out_shape: feature shape of one output, e.g. ``(10,)``.
        dtype: the dtype of the parameters ``init`` creates.
        init: ``init(key) -> params``.
        apply: ``apply(params, x, *, key=None, train=False, state=None) -> y``,
            ``x: [batch, *in_shape]``; checks ``x`` and the structure and shapes of ``params``
            at trace time. ``state`` defaults to :attr:`init_state`'s (stateful models only).
        forward: the layer's ``forward(params, x, *, key=None, train=False, state=None)
            -> (y, res)``, with the same checks as ``apply``.
        backward: the layer's ``backward(params, res, dy) -> (dparams, dx)``.
        name: the layer's name.
        params_spec: the ``jax.ShapeDtypeStruct`` tree that ``init`` returns.
        init_state: ``init_state() -> state``, ``{}`` for a stateless model.
        stateful: whether the model has state (batch norm's running statistics).
    """

    layer: Layer
    in_shape: tuple
    out_shape: tuple
    dtype: Any
    init: Callable
    apply: Callable
    forward: Callable
    backward: Callable
    name: str
    params_spec: Any
    init_state: Callable
    stateful: bool


def describe(tree) -> str:
    """A params tree as its structure with shapes: ``[{'w': (64, 256), 'b': (256,)}, {}]``."""
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, (list, tuple)):
        inner = ", ".join(describe(v) for v in tree)
        return f"[{inner}]" if isinstance(tree, list) else f"({inner})"
    if hasattr(tree, "shape"):
        return str(tuple(jnp.shape(tree)))
    return type(tree).__name__


def _params_mismatch(want, got, path: str, where: str):
    """The first place where ``got`` does not fit ``want``, as an exception, or ``None``."""
    if isinstance(want, list) and isinstance(got, (list, tuple)) and len(want) == len(got):
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            err = _params_mismatch(w, g, f"{path}[{i}]", where)
            if err is not None:
                return err
        return None
    if jax.tree.structure(want) != jax.tree.structure(got):
        return ValueError(f"params{path}{where}: expected {describe(want)}, got {describe(got)}")
    for (p, w), g in zip(
        jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got), strict=True
    ):
        leaf = f"params{path}{jax.tree_util.keystr(p)}{where}"
        if tuple(jnp.shape(g)) != tuple(w.shape):
            return ValueError(f"{leaf}: expected shape {tuple(w.shape)}, got {tuple(jnp.shape(g))}")
        if not jnp.issubdtype(jnp.result_type(g), jnp.floating):
            return TypeError(f"{leaf}: expected a floating dtype, got {jnp.result_type(g)}")
    return None


def check_params(model: Model, params) -> None:
    """Raise ``ValueError`` naming the first sub-layer whose params do not fit ``model``.

    Compares tree structure, shapes and dtypes (at trace time; no cost inside ``jit``); the
    message shows the expected structure, e.g. ``[{'w': (64, 256), 'b': (256,)}, {}, ...]``.
    """
    want = model.params_spec
    if isinstance(want, list) and (
        not isinstance(params, (list, tuple)) or len(params) != len(want)
    ):
        names = ", ".join(lyr.name for _, lyr in model.layer.parts)
        got = (
            f"{type(params).__name__} of length {len(params)}: {describe(params)}"
            if isinstance(params, (list, tuple))
            else describe(params)
        )
        raise ValueError(
            f"params: expected a list with one entry per layer ({len(want)}: {names}), "
            f"got {got}; expected {describe(want)}"
        )
    subs = sublayers(model.layer)
    err = _params_mismatch(want, params, "", "")
    if err is None:
        return
    # Name the layer: the longest sub-layer path that prefixes the failing leaf's path.
    text = str(err)
    path = text[len("params") : text.index(":")]
    owner = max((p for p in subs if path.startswith(p)), key=len)
    label = owner[1:-1] if owner.count("[") == 1 else owner or "model"
    where = f" (layer {label}, {subs[owner].name})"
    raise type(err)(text.replace(":", where + ":", 1)) from None


def takes_int_input(layer) -> bool:
    """Whether ``layer``'s first leaf takes integer inputs (``info`` ``"int_input"``: an
    embedding), so that a model starting with it accepts integer ``x``."""
    layer = layer.layer if isinstance(layer, Model) else layer
    while layer.parts:
        layer = layer.parts[0][1]
    return bool(_layers.info(layer, "int_input", False))


def check_input(model: Model, x) -> None:
    """Raise a clear error when ``x`` is not ``[batch, *model.in_shape]`` floats (or integers,
    for a model that starts with an embedding: see :func:`takes_int_input`)."""
    first = model.layer.parts[0][1].name if model.layer.parts else model.layer.name
    kind = jnp.result_type(x)
    ints_ok = jnp.issubdtype(kind, jnp.integer) and takes_int_input(model.layer)
    if not (ints_ok or jnp.issubdtype(kind, jnp.floating)):
        raise TypeError(
            f"x: expected a floating dtype, got {kind}; convert it with x.astype(jnp.float32)"
        )
    shape = tuple(jnp.shape(x))
    if len(shape) != 1 + len(model.in_shape) or shape[1:] != tuple(model.in_shape):
        raise ValueError(
            f"x: expected shape [batch, {', '.join(map(str, model.in_shape))}] for layer 0 "
            f"({first}), got {shape}"
        )


def build(layer: Layer, in_shape: Sequence[int], dtype=jnp.float32) -> Model:
    """Bind ``layer`` to an input feature shape and parameter dtype, giving a :class:`Model`.

    Args:
        layer: any layer, usually a :func:`serial`.
        in_shape: feature shape of one example (without the batch axis), e.g. ``(784,)``.
        dtype: parameter dtype for ``init`` (``jnp.float32`` by default; use ``jnp.float64``
            for gradient checks, with x64 enabled).
    """
    layer = as_layer(layer, "build: layer")
    in_shape = tuple(int(s) for s in in_shape)
    out_shape = _layers.out_shape(layer, in_shape, dtype)
    spec = jax.eval_shape(lambda k: layer.init(k, in_shape, dtype)[1], jax.random.key(0))
    model: Model | None = None

    def init(key):
        return layer.init(key, in_shape, dtype)[1]

    def init_state():
        return init_state_of(layer, in_shape, dtype)

    def forward(params, x, *, key=None, train=False, state=None):
        check_input(model, x)
        check_params(model, params)
        if state is None and layer.init_state is not None:
            state = init_state()
        return layer.forward(params, x, key=key, train=train, state=state)

    def apply(params, x, *, key=None, train=False, state=None):
        return forward(params, x, key=key, train=train, state=state)[0]

    model = Model(
        layer,
        in_shape,
        out_shape,
        dtype,
        init,
        apply,
        forward,
        layer.backward,
        layer.name,
        spec,
        init_state,
        layer.init_state is not None,
    )
    return model


def mlp(
    sizes: Sequence[int],
    activation="relu",
    *,
    dropout: float = 0.0,
    w_init: Callable | None = None,
    b_init: Callable | None = None,
    dtype=jnp.float32,
) -> Model:
    """A multi-layer perceptron: ``dense, activation, [dropout], ..., dense`` (logits out).

    Args:
        sizes: ``[in_features, hidden_1, ..., out_features]``, at least two positive ints.
        activation: hidden activation name (any of :data:`fnn.activations.NAMES`) or record
            (e.g. from :func:`fnn.activations.define`).
        dropout: dropout rate after each hidden activation (0 for none).
        w_init: weight initialiser, a ``jax.nn.initializers``-style ``(key, shape, dtype)``
            function; default :func:`fnn.layers.default_w_init` for ``activation`` (He for
            the ReLU family, Glorot otherwise; Glorot for the output layer).
        b_init: bias initialiser of the same kind; default zeros.
        dtype: parameter dtype.

    Returns:
        A :class:`Model`; its params are a list, ``{"w": [fan_in, fan_out], "b": [fan_out]}``
        for each dense layer and ``{}`` for the others.

    Raises:
        ValueError: for fewer than two sizes, a size that is not a positive int, or an unknown
            activation (the message lists the valid names).

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> small = jax.nn.initializers.normal(0.1)
        >>> model = fnn.mlp([4, 8, 2], activation="tanh", w_init=small)
        >>> [fnn.models.describe(p) for p in model.init(jax.random.key(0))]
        ["{'w': (4, 8), 'b': (8,)}", '{}', "{'w': (8, 2), 'b': (2,)}"]
    """
    sizes = list(sizes) if not isinstance(sizes, (str, bytes)) else sizes
    if isinstance(sizes, (str, bytes)) or len(sizes) < 2:
        raise ValueError(
            f"sizes: expected [in_features, ..., out_features] with at least 2 entries, "
            f"got {sizes!r}"
        )
    for i, s in enumerate(sizes):
        if not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise ValueError(f"sizes[{i}]: expected a positive int, got {s!r} in {sizes!r}")
    for arg, fn in (("w_init", w_init), ("b_init", b_init)):
        if fn is not None and not callable(fn):
            raise TypeError(
                f"{arg}: expected a jax.nn.initializers-style function (key, shape, dtype), "
                f"got {type(fn).__name__}"
            )
    act = _act.get(activation)
    hidden_init = w_init or _layers.default_w_init(act)
    # The output layer produces logits; Glorot suits it whatever the hidden activation.
    out_init = w_init or _layers.default_w_init("identity")
    stack: list[Layer] = []
    for i, n in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        stack.append(_layers.dense(n, w_init=out_init if last else hidden_init, b_init=b_init))
        if not last:
            stack.append(_layers.activation(act))
            if dropout:
                stack.append(_layers.dropout(dropout))
    return build(serial(*stack), (sizes[0],), dtype)

"""Composition: ``serial`` layers, models bound to an input shape, and the ``mlp`` recipe.

:func:`serial` returns a :class:`~fnn.layers.Layer` like any other, so serials nest. Its
backward is the chain rule over its children in reverse. :func:`forward_trace` and
:func:`backward_trace` are that rule split in two: the first runs the forward and keeps each
leaf layer's input and output (the "tape"), the second walks the tape backwards calling each
layer's hand-written ``backward``. :mod:`fnn.backprop` puts a loss between them.

A :class:`Model` is a layer bound to an input feature shape and a parameter dtype, so that
``model.init(key)`` needs nothing else; ``model.apply`` checks ``x`` and ``params`` against
the model and names the offending layer when they do not fit.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import fnn
    >>> model = fnn.mlp([2, 8, 1], activation="tanh")
    >>> params = model.init(jax.random.key(0))
    >>> [sorted(p) for p in params]
    [['b', 'w'], [], ['b', 'w']]
    >>> model.apply(params, jnp.zeros((5, 2), jnp.float32)).shape
    (5, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fnn import activations as _act
from fnn import layers as _layers
from fnn.layers import Layer

Array = jax.Array


def _child_key(key, i: int):
    return None if key is None else jax.random.fold_in(key, i)


def forward_trace(layer: Layer, params, x: Array, *, key=None, train: bool = False):
    """Run ``layer`` forward and keep what its backward needs.

    Returns:
        ``(y, tape)``: for a leaf layer ``tape = (x, y)``; for a composite one, the list of
        its children's tapes.
    """
    if layer.children:
        tapes = []
        h = x
        for i, (child, p) in enumerate(zip(layer.children, params, strict=True)):
            h, tape = forward_trace(child, p, h, key=_child_key(key, i), train=train)
            tapes.append(tape)
        return h, tapes
    y = layer.apply(params, x, key=key, train=train)
    return y, (x, y)


def backward_trace(layer: Layer, params, tape, dy: Array, *, key=None, train: bool = False):
    """The reverse sweep over a tape from :func:`forward_trace`.

    Returns:
        ``(dparams, dx)``: ``dparams`` in the structure of ``params``; ``dx`` shaped like the
        layer's input.
    """
    if layer.children:
        n = len(layer.children)
        grads: list[Any] = [None] * n
        for i in reversed(range(n)):
            grads[i], dy = backward_trace(
                layer.children[i], params[i], tape[i], dy, key=_child_key(key, i), train=train
            )
        return grads, dy
    x, y = tape
    return layer.backward(params, x, y, dy, key=key, train=train)


def serial(*layers: Layer) -> Layer:
    """Compose layers in order; the result is itself a :class:`~fnn.layers.Layer`.

    Params are a list with one entry per layer. Layer ``i`` gets the key
    ``jax.random.fold_in(key, i)`` in both the forward and the backward pass.

    Backward: ``dx_i = backward_i(dx_{i+1})`` from the last layer to the first (the chain
    rule); it re-runs the forward to recover the intermediate values, which
    :mod:`fnn.backprop` avoids by keeping them from the forward it already ran.
    """
    layers = tuple(lyr.layer if isinstance(lyr, Model) else lyr for lyr in layers)
    for i, lyr in enumerate(layers):
        if not isinstance(lyr, Layer):
            raise TypeError(f"serial: argument {i} must be a Layer, got {type(lyr).__name__}")
    name = "serial(" + ", ".join(lyr.name for lyr in layers) + ")"

    def init(key, in_shape, dtype=jnp.float32):
        params = []
        shape = tuple(in_shape)
        for i, lyr in enumerate(layers):
            shape, p = lyr.init(jax.random.fold_in(key, i), shape, dtype)
            params.append(p)
        return shape, params

    def apply(params, x, *, key=None, train=False):
        h = x
        for i, (lyr, p) in enumerate(zip(layers, params, strict=True)):
            h = lyr.apply(p, h, key=_child_key(key, i), train=train)
        return h

    layer = None

    def backward(params, x, y, dy, *, key=None, train=False):
        del y
        _, tape = forward_trace(layer, params, x, key=key, train=train)
        return backward_trace(layer, params, tape, dy, key=key, train=train)

    layer = Layer(name, init, apply, backward, children=layers)
    return layer


class Model(NamedTuple):
    """A layer bound to an input feature shape and a parameter dtype.

    Attributes:
        layer: the underlying (usually serial) :class:`~fnn.layers.Layer`.
        in_shape: feature shape of one input example, e.g. ``(64,)``.
        out_shape: feature shape of one output, e.g. ``(10,)``.
        dtype: the dtype of the parameters ``init`` creates.
        init: ``init(key) -> params``.
        apply: ``apply(params, x, *, key=None, train=False) -> y``, ``x: [batch, *in_shape]``;
            checks ``x`` and the structure and shapes of ``params`` at trace time.
        backward: the layer's ``backward(params, x, y, dy, *, key=None, train=False)``.
        name: the layer's name.
        params_spec: the ``jax.ShapeDtypeStruct`` tree that ``init`` returns.
    """

    layer: Layer
    in_shape: tuple
    out_shape: tuple
    dtype: Any
    init: Callable
    apply: Callable
    backward: Callable
    name: str
    params_spec: Any


def _describe(tree) -> str:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not leaves:
        return "no arrays"
    return ", ".join(f"{jax.tree_util.keystr(p)}: {tuple(jnp.shape(v))}" for p, v in leaves)


def check_params(model: Model, params) -> None:
    """Raise ``ValueError`` naming the first layer whose params do not fit ``model``.

    Compares tree structure, shapes and dtypes (at trace time; no cost inside ``jit``).
    """
    expected = model.params_spec
    layers = model.layer.children or (model.layer,)
    if model.layer.children:
        if not isinstance(params, (list, tuple)) or len(params) != len(layers):
            got = (
                f"{type(params).__name__} of length {len(params)}"
                if isinstance(params, (list, tuple))
                else type(params).__name__
            )
            raise ValueError(
                f"params: expected a list with one entry per layer ({len(layers)}: "
                f"{', '.join(lyr.name for lyr in layers)}), got {got}"
            )
        pairs = list(zip(expected, params, strict=True))
    else:
        pairs = [(expected, params)]
    for i, (want, got) in enumerate(pairs):
        lname = layers[i].name
        try:
            want_def = jax.tree_util.tree_structure(want)
            got_def = jax.tree_util.tree_structure(got)
        except Exception:  # pragma: no cover - exotic leaves
            got_def = None
        if want_def != got_def:
            raise ValueError(
                f"params[{i}] (layer {i}, {lname}): expected {_describe(want)}, "
                f"got {_describe(got)}"
            )
        for (path, w), g in zip(
            jax.tree_util.tree_flatten_with_path(want)[0],
            jax.tree_util.tree_leaves(got),
            strict=True,
        ):
            if tuple(jnp.shape(g)) != tuple(w.shape):
                raise ValueError(
                    f"params[{i}]{jax.tree_util.keystr(path)} (layer {i}, {lname}): expected "
                    f"shape {tuple(w.shape)}, got {tuple(jnp.shape(g))}"
                )
            if not jnp.issubdtype(jnp.result_type(g), jnp.floating):
                raise TypeError(
                    f"params[{i}]{jax.tree_util.keystr(path)} (layer {i}, {lname}): expected "
                    f"a floating dtype, got {jnp.result_type(g)}"
                )


def check_input(model: Model, x) -> None:
    """Raise a clear error when ``x`` is not ``[batch, *model.in_shape]`` floats."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"x: expected a floating dtype, got {jnp.result_type(x)}; "
            f"convert it with x.astype(jnp.float32)"
        )
    shape = tuple(jnp.shape(x))
    if len(shape) != 1 + len(model.in_shape) or shape[1:] != tuple(model.in_shape):
        raise ValueError(
            f"x: expected shape [batch, {', '.join(map(str, model.in_shape))}] for layer 0 "
            f"({(model.layer.children or (model.layer,))[0].name}), got {shape}"
        )


def build(layer: Layer, in_shape: Sequence[int], dtype=jnp.float32) -> Model:
    """Bind ``layer`` to an input feature shape and parameter dtype, giving a :class:`Model`.

    Args:
        layer: any layer, usually a :func:`serial`.
        in_shape: feature shape of one example (without the batch axis), e.g. ``(784,)``.
        dtype: parameter dtype for ``init`` (``jnp.float32`` by default; use ``jnp.float64``
            for gradient checks, with x64 enabled).
    """
    in_shape = tuple(int(s) for s in in_shape)
    shapes = []

    def _init(k):
        out, p = layer.init(k, in_shape, dtype)
        shapes.append(tuple(out))
        return p

    spec = jax.eval_shape(_init, jax.random.key(0))
    out_shape = shapes[0]
    model: Model | None = None

    def init(key):
        return layer.init(key, in_shape, dtype)[1]

    def apply(params, x, *, key=None, train=False):
        check_input(model, x)
        check_params(model, params)
        return layer.apply(params, x, key=key, train=train)

    model = Model(layer, in_shape, out_shape, dtype, init, apply, layer.backward, layer.name, spec)
    return model


def mlp(
    sizes: Sequence[int],
    activation: str | _act.Activation = "relu",
    *,
    dropout: float = 0.0,
    w_init: Callable | None = None,
    dtype=jnp.float32,
) -> Model:
    """A multi-layer perceptron: ``dense, activation, [dropout], ..., dense`` (logits out).

    Args:
        sizes: ``[in_features, hidden_1, ..., out_features]``, at least two positive ints.
        activation: hidden activation name (any of :data:`fnn.activations.NAMES`) or record.
        dropout: dropout rate after each hidden activation (0 for none).
        w_init: weight initialiser; default :func:`fnn.layers.default_w_init` for
            ``activation`` (He for the ReLU family, Glorot otherwise).
        dtype: parameter dtype.

    Returns:
        A :class:`Model`; its params are a list, ``{"w": [fan_in, fan_out], "b": [fan_out]}``
        for each dense layer and ``{}`` for the others.

    Raises:
        ValueError: for fewer than two sizes, a size that is not a positive int, or an unknown
            activation (the message lists the valid names).
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
    act = _act.get(activation)
    init_fn = w_init or _layers.default_w_init(act.name)
    stack: list[Layer] = []
    for i, n in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        # The output layer produces logits; Glorot suits it whatever the hidden activation.
        stack.append(
            _layers.dense(
                n, w_init=w_init or (_layers.default_w_init("identity") if last else init_fn)
            )
        )
        if not last:
            stack.append(_layers.activation(act))
            if dropout:
                stack.append(_layers.dropout(dropout))
    return build(serial(*stack), (sizes[0],), dtype)

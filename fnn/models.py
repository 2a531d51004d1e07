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
from fnn.layers import Layer

Array = jax.Array


def _child_key(key, i: int):
    return None if key is None else jax.random.fold_in(key, i)


def _as_layer(lyr, where: str) -> Layer:
    if isinstance(lyr, Model):
        return lyr.layer
    if isinstance(lyr, (list, tuple)) and not isinstance(lyr, Layer):
        return serial(*lyr)
    if not isinstance(lyr, Layer):
        hint = ""
        if callable(lyr):
            hint = "; wrap a function with fnn.layers.custom(apply, backward=...)"
        raise TypeError(f"{where} must be a Layer, got {type(lyr).__name__}{hint}")
    return lyr


def _child_states(children, state):
    if isinstance(state, (list, tuple)) and len(state) == len(children):
        return list(state)
    return [None] * len(children)


def _chain_init_state(children):
    """``init_state`` of a chain of children, or ``None`` when none of them has state."""
    if not any(c.init_state is not None for c in children):
        return None

    def init_state(in_shape, dtype=jnp.float32):
        states, shape, any_state = [], tuple(in_shape), False
        for c in children:
            s = init_state_of(c, shape, dtype)
            any_state = any_state or bool(jax.tree.leaves(s))
            states.append(s)
            shape = _layers.out_shape(c, shape, dtype)
        return states if any_state else {}

    return init_state


def init_state_of(layer: Layer, in_shape, dtype=jnp.float32):
    """The initial state of ``layer`` (running statistics); ``{}`` for a stateless layer."""
    if layer.init_state is None:
        return {}
    return layer.init_state(tuple(in_shape), dtype)


def _chain_next_state(children):
    if not any(c.next_state is not None for c in children):
        return None

    def next_state(state, res):
        rs = res[1]
        if not isinstance(state, (list, tuple)):
            return state
        return [
            s if c.next_state is None else c.next_state(s, r)
            for c, s, r in zip(children, state, rs, strict=True)
        ]

    return next_state


def _prefixed(i: int, child: Layer, h_in, h_out, r) -> dict:
    out = {f"[{i}]": {"in": h_in, "out": h_out}}
    if child.taps is not None:
        out.update({f"[{i}]{p}": t for p, t in child.taps(r).items()})
    return out


def _chain(layers: tuple[Layer, ...]):
    """Forward, backward and taps of a chain of layers (serial's and residual's core)."""

    def forward(params, x, *, key=None, train=False, state=None):
        hs, rs = [x], []
        for i, (lyr, p, s) in enumerate(
            zip(layers, params, _child_states(layers, state), strict=True)
        ):
            h, r = lyr.forward(p, hs[-1], key=_child_key(key, i), train=train, state=s)
            hs.append(h)
            rs.append(r)
        # hs (every child's input and output) serve taps(); the backward reads rs only, and
        # under jit XLA drops whatever no one reads.
        return hs[-1], (hs, rs)

    def backward(params, res, dy):
        _, rs = res
        grads: list[Any] = [None] * len(layers)
        for i in reversed(range(len(layers))):
            grads[i], dy = layers[i].backward(params[i], rs[i], dy)
        return grads, dy

    def taps(res):
        hs, rs = res
        out = {}
        for i, lyr in enumerate(layers):
            out.update(_prefixed(i, lyr, hs[i], hs[i + 1], rs[i]))
        return out

    return forward, backward, taps


def _chain_init(layers, where: str):
    def init(key, in_shape, dtype=jnp.float32):
        params, shape = [], tuple(in_shape)
        for i, lyr in enumerate(layers):
            try:
                shape, p = lyr.init(jax.random.fold_in(key, i), shape, dtype)
            except (ValueError, TypeError) as e:
                raise type(e)(f"{where}, layer {i} ({lyr.name}): {e}") from None
            shape = tuple(shape)
            params.append(p)
        return shape, params

    return init


# ---------------------------------------------------------------------------------------------
# serial: y = f_n(... f_1(x)); backward: dx_i = backward_i(dx_{i+1}), last layer first


def serial(*layers) -> Layer:
    """Compose layers in order; the result is itself a :class:`~fnn.layers.Layer`.

    Params are a list with one entry per layer. Layer ``i`` gets the key
    ``jax.random.fold_in(key, i)``. A list or tuple argument is a nested ``serial``.

    Backward: the chain rule, ``(dparams_i, dy) = backward_i(params_i, res_i, dy)`` from the
    last layer to the first, each with the residuals its own forward kept.
    """
    layers = tuple(_as_layer(lyr, f"serial: argument {i}") for i, lyr in enumerate(layers))
    if not layers:
        raise ValueError("serial: expected at least one layer, got none")
    name = "serial(" + ", ".join(lyr.name for lyr in layers) + ")"
    forward, backward, taps = _chain(layers)
    return Layer(
        name,
        _chain_init(layers, "serial"),
        forward,
        backward,
        parts=tuple((f"[{i}]", lyr) for i, lyr in enumerate(layers)),
        taps=taps,
        init_state=_chain_init_state(layers),
        next_state=_chain_next_state(layers),
    )


# ---------------------------------------------------------------------------------------------
# residual: y = x + f(x), f = serial(*layers); backward: dx = dy + backward_f(dy)


def residual(*layers) -> Layer:
    """A residual block ``y = x + serial(*layers)(x)`` (He et al., 2016).

    Params are those of ``serial(*layers)``: a list with one entry per layer.

    Backward: ``x`` is used twice (the skip and the branch), so its cotangent is the sum
    ``dx = dy + dx_branch`` with ``(dparams, dx_branch) = backward_branch(dy)``.

    Raises:
        ValueError: at ``init`` when the branch's output shape differs from its input shape.
    """
    layers = tuple(_as_layer(lyr, f"residual: argument {i}") for i, lyr in enumerate(layers))
    if not layers:
        raise ValueError("residual: expected at least one layer, got none")
    name = "residual(" + ", ".join(lyr.name for lyr in layers) + ")"
    chain_init = _chain_init(layers, "residual")
    chain_forward, chain_backward, taps = _chain(layers)

    def init(key, in_shape, dtype=jnp.float32):
        shape, params = chain_init(key, in_shape, dtype)
        if tuple(shape) != tuple(in_shape):
            raise ValueError(
                f"{name}: the branch maps feature shape {tuple(in_shape)} to {tuple(shape)}; "
                f"y = x + branch(x) needs them equal (end the branch with dense({in_shape[-1]}) "
                "or reshape the skip outside the block)"
            )
        return shape, params

    def forward(params, x, *, key=None, train=False, state=None):
        h, res = chain_forward(params, x, key=key, train=train, state=state)
        return x + h, res

    def backward(params, res, dy):
        grads, dx = chain_backward(params, res, dy)
        return grads, dy + dx

    return Layer(
        name,
        init,
        forward,
        backward,
        parts=tuple((f"[{i}]", lyr) for i, lyr in enumerate(layers)),
        taps=taps,
        init_state=_chain_init_state(layers),
        next_state=_chain_next_state(layers),
    )


# ---------------------------------------------------------------------------------------------
# parallel: every branch sees x; y = concat_i(f_i(x)) on the last axis, or sum_i f_i(x)
#   backward: dy_i = the slice of dy for branch i (concat) or dy itself (sum); dx = sum_i dx_i


def parallel(*branches, combine: str = "concat") -> Layer:
    """Branches that all see the same input; outputs concatenated on the last axis or summed.

    Args:
        *branches: layers (a list or tuple is a ``serial`` branch).
        combine: ``"concat"`` (feature shapes equal but for the last axis) or ``"sum"`` (equal
            feature shapes).

    Params are a list with one entry per branch; branch ``i`` gets ``fold_in(key, i)``.

    Backward: ``x`` feeds every branch, so ``dx = sum_i dx_i``; with ``concat`` branch ``i``
    gets its own slice of ``dy``, with ``sum`` all of it.
    """
    if combine not in ("concat", "sum"):
        raise ValueError(f"parallel: combine must be 'concat' or 'sum', got {combine!r}")
    branches = tuple(_as_layer(b, f"parallel: branch {i}") for i, b in enumerate(branches))
    if not branches:
        raise ValueError("parallel: expected at least one branch, got none")
    name = f"parallel[{combine}](" + ", ".join(b.name for b in branches) + ")"

    def init(key, in_shape, dtype=jnp.float32):
        shapes, params = [], []
        for i, b in enumerate(branches):
            s, p = b.init(jax.random.fold_in(key, i), tuple(in_shape), dtype)
            shapes.append(tuple(s))
            params.append(p)
        if combine == "sum" and len(set(shapes)) != 1:
            raise ValueError(f"{name}: combine='sum' needs equal branch shapes, got {shapes}")
        if combine == "concat":
            if len({s[:-1] for s in shapes}) != 1 or any(not s for s in shapes):
                raise ValueError(
                    f"{name}: combine='concat' joins the last axis and needs the other axes "
                    f"equal, got branch shapes {shapes}"
                )
            return (*shapes[0][:-1], sum(s[-1] for s in shapes)), params
        return shapes[0], params

    def forward(params, x, *, key=None, train=False, state=None):
        outs, rs = [], []
        states = _child_states(branches, state)
        for i, (b, p, s) in enumerate(zip(branches, params, states, strict=True)):
            o, r = b.forward(p, x, key=_child_key(key, i), train=train, state=s)
            outs.append(o)
            rs.append(r)
        y = jnp.concatenate(outs, axis=-1) if combine == "concat" else sum(outs[1:], outs[0])
        return y, ((x, outs), rs)

    def backward(params, res, dy):
        (_, outs), rs = res
        if combine == "concat":
            cuts = [0]
            for o in outs:
                cuts.append(cuts[-1] + o.shape[-1])
            dys = [dy[..., a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        else:
            dys = [dy] * len(branches)
        grads, dx = [], None
        for b, p, r, d in zip(branches, params, rs, dys, strict=True):
            g, dxi = b.backward(p, r, d)
            grads.append(g)
            dx = dxi if dx is None else dx + dxi
        return grads, dx

    def taps(res):
        (x, outs), rs = res
        out = {}
        for i, b in enumerate(branches):
            out.update(_prefixed(i, b, x, outs[i], rs[i]))
        return out

    def init_state(in_shape, dtype=jnp.float32):
        states = [init_state_of(b, in_shape, dtype) for b in branches]
        return states if jax.tree.leaves(states) else {}

    def next_state(state, res):
        if not isinstance(state, (list, tuple)):
            return state
        return [
            s if b.next_state is None else b.next_state(s, r)
            for b, s, r in zip(branches, state, res[1], strict=True)
        ]

    stateful = any(b.init_state is not None for b in branches)
    return Layer(
        name,
        init,
        forward,
        backward,
        parts=tuple((f"[{i}]", b) for i, b in enumerate(branches)),
        taps=taps,
        init_state=init_state if stateful else None,
        next_state=next_state if any(b.next_state is not None for b in branches) else None,
    )


def sublayers(layer) -> dict[str, Layer]:
    """Every sub-layer by path (``""`` the layer itself, ``"[1][0]"`` nested), forward order."""
    layer = layer.layer if isinstance(layer, Model) else layer
    out = {"": layer}
    for path, child in layer.parts:
        out.update({path + p: lyr for p, lyr in sublayers(child).items()})
    return out


def taps(layer, params, x, *, key=None, train: bool = False, state=None) -> dict[str, dict]:
    """Run the forward and name every sub-layer's input and output by its path.

    Returns:
        ``{path: {"in": x_path, "out": y_path}}`` for every path of :func:`sublayers`.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> model = fnn.mlp([2, 3, 1], activation="relu")
        >>> t = taps(model, model.init(jax.random.key(0)), jnp.ones((4, 2), jnp.float32))
        >>> t["[1]"]["in"].shape, t["[1]"]["out"].shape   # the relu's pre- and post-activation
        ((4, 3), (4, 3))
    """
    layer = layer.layer if isinstance(layer, Model) else layer
    y, res = layer.forward(params, x, key=key, train=train, state=state)
    out = {"": {"in": x, "out": y}}
    if layer.taps is not None:
        out.update(layer.taps(res))
    return out


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


def check_input(model: Model, x) -> None:
    """Raise a clear error when ``x`` is not ``[batch, *model.in_shape]`` floats."""
    first = model.layer.parts[0][1].name if model.layer.parts else model.layer.name
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"x: expected a floating dtype, got {jnp.result_type(x)}; "
            f"convert it with x.astype(jnp.float32)"
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
    layer = _as_layer(layer, "build: layer")
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

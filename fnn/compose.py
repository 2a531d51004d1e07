"""Composite layers: ``serial``, ``residual`` and ``parallel``, and naming their insides.

A composite is itself a :class:`~fnn.layers.Layer`, so composites nest. Its forward runs its
children's forwards and keeps their residuals; its backward runs their backwards in reverse and
adds the cotangents where a value was used twice (the input of a residual block or of parallel
branches). That composition *is* the manual reverse sweep.

Intermediates are named by path, like parameters: :func:`sublayers` maps ``"[2]"`` (the third
child), ``"[1][0]"`` (nested) and ``""`` (the whole) to layer records, and :func:`taps` maps
the same paths to each sub-layer's input and output. :mod:`fnn.models` re-exports all of it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fnn import layers as _layers
from fnn.layers import Layer

Array = jax.Array


def _unwrap(lyr):
    """A model's layer (anything with a ``.layer`` that is a Layer), else ``lyr`` itself."""
    inner = getattr(lyr, "layer", None)
    return inner if isinstance(inner, Layer) and not isinstance(lyr, Layer) else lyr


def _child_key(key, i: int):
    return None if key is None else jax.random.fold_in(key, i)


def as_layer(lyr, where: str) -> Layer:
    lyr = _unwrap(lyr)
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


def _composite(name, init, forward, backward, children, taps, init_state=None) -> Layer:
    """The record of a composite whose residuals are ``(anything, [child residuals])``."""
    stateful = any(c.init_state is not None for c in children)
    return Layer(
        name,
        init,
        forward,
        backward,
        parts=tuple((f"[{i}]", c) for i, c in enumerate(children)),
        taps=taps,
        init_state=(init_state or _chain_init_state(children)) if stateful else None,
        next_state=_chain_next_state(children),
    )


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
    layers = tuple(as_layer(lyr, f"serial: argument {i}") for i, lyr in enumerate(layers))
    if not layers:
        raise ValueError("serial: expected at least one layer, got none")
    name = "serial(" + ", ".join(lyr.name for lyr in layers) + ")"
    forward, backward, taps = _chain(layers)
    return _composite(name, _chain_init(layers, "serial"), forward, backward, layers, taps)


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
    layers = tuple(as_layer(lyr, f"residual: argument {i}") for i, lyr in enumerate(layers))
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

    return _composite(name, init, forward, backward, layers, taps)


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
    branches = tuple(as_layer(b, f"parallel: branch {i}") for i, b in enumerate(branches))
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

    return _composite(name, init, forward, backward, branches, taps, init_state)


def sublayers(layer) -> dict[str, Layer]:
    """Every sub-layer by path (``""`` the layer itself, ``"[1][0]"`` nested), forward order."""
    layer = _unwrap(layer)
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
    if state is None and getattr(layer, "stateful", False):
        state = layer.init_state()  # a stateful model's initial running statistics
    layer = _unwrap(layer)
    y, res = layer.forward(params, x, key=key, train=train, state=state)
    out = {"": {"in": x, "out": y}}
    if layer.taps is not None:
        out.update(layer.taps(res))
    return out

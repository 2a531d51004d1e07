"""The manual reverse sweep, and a bridge that lets ``jax.grad`` run the hand-written rules.

:func:`value_and_grad` is backpropagation as the textbook writes it, with no autodiff:

1. forward: run every layer, keeping each one's input and output (:func:`fnn.models.forward_trace`);
2. the loss and its hand-written gradient with respect to the network's output;
3. backward: call each layer's hand-written ``backward`` from the last layer to the first
   (:func:`fnn.models.backward_trace`), each turning the cotangent of its output into the
   gradient of its parameters and the cotangent of its input.

Nothing here calls ``jax.grad``, ``jax.vjp`` or ``jax.linearize``; the test suite proves it by
making autodiff through the layers raise while this sweep still succeeds.

:func:`manual_vjp` goes the other way: it wraps a model in ``jax.custom_vjp`` so that
``jax.grad`` of its forward runs the same hand-written rules, which then compose with
``jax.jit``, ``jax.vmap`` (per-example gradients) and the rest of JAX.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import fnn
    >>> from fnn import backprop
    >>> model = fnn.mlp([3, 5, 2], activation="tanh", dtype=jnp.float64)
    >>> params = model.init(jax.random.key(0))
    >>> x = jax.random.normal(jax.random.key(1), (4, 3), jnp.float64)
    >>> y = jnp.array([0, 1, 1, 0])
    >>> vg = jax.jit(backprop.value_and_grad(model, "softmax_cross_entropy"))
    >>> value, grads = vg(params, x, y)
    >>> grads[0]["w"].shape
    (3, 5)
"""

from __future__ import annotations

import functools

import jax

from fnn import losses as _losses
from fnn.models import Model, backward_trace, check_input, check_params, forward_trace


def _train_flag(key, train):
    return key is not None if train is None else bool(train)


def value_and_grad(model: Model, loss):
    """The hand-written reverse sweep for ``loss(model.apply(params, x), y)``.

    Args:
        model: a :class:`fnn.models.Model` (e.g. from :func:`fnn.mlp`).
        loss: a loss name from :data:`fnn.losses.NAMES` or a :class:`fnn.losses.Loss`.

    Returns:
        A pure, jit-compilable ``f(params, x, y, *, key=None, train=None) -> (value, grads)``,
        ``grads`` in the structure of ``params``. ``train`` defaults to ``key is not None``
        (dropout on when a key is given); the same key drives the forward and the backward.

    Raises:
        ValueError, TypeError: (when ``f`` is called or traced) for params that do not fit the
            model, or ``x``/``y`` of the wrong shape or dtype; the message names the layer.
    """
    loss = _losses.get(loss)

    def f(params, x, y, *, key=None, train=None):
        train = _train_flag(key, train)
        check_input(model, x)
        check_params(model, params)
        out, tape = forward_trace(model.layer, params, x, key=key, train=train)
        value = loss.fn(out, y)
        dout = loss.grad(out, y)
        grads, _ = backward_trace(model.layer, params, tape, dout, key=key, train=train)
        return value, grads

    return f


def grad(model: Model, loss):
    """Like :func:`value_and_grad`, returning only the gradients."""
    vg = value_and_grad(model, loss)

    def f(params, x, y, *, key=None, train=None):
        return vg(params, x, y, key=key, train=train)[1]

    return f


def manual_vjp(model: Model) -> Model:
    """Wrap ``model`` so that autodiff of its ``apply`` runs the hand-written backward rules.

    The returned model has the same ``init``, shapes and forward values; its ``apply`` is a
    ``jax.custom_vjp`` whose backward is :func:`fnn.models.backward_trace`. ``jax.grad``,
    ``jax.jit`` and ``jax.vmap`` (e.g. per-example gradients) then use the manual rules.
    The key, when given, gets a zero cotangent.
    """
    layer = model.layer

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def _apply(params, x, key, train):
        return layer.apply(params, x, key=key, train=train)

    def _fwd(params, x, key, train):
        y, tape = forward_trace(layer, params, x, key=key, train=train)
        return y, (params, tape, key)

    def _bwd(train, res, dy):
        params, tape, key = res
        dparams, dx = backward_trace(layer, params, tape, dy, key=key, train=train)
        return dparams, dx, None

    _apply.defvjp(_fwd, _bwd)

    def apply(params, x, *, key=None, train=False):
        check_input(model, x)
        check_params(model, params)
        return _apply(params, x, key, bool(train))

    return model._replace(apply=apply, name=f"manual_vjp({model.name})")

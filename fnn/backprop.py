"""The manual reverse sweep, and a bridge that lets ``jax.grad`` run the hand-written rules.

:func:`value_and_grad` is backpropagation as the textbook writes it, with no autodiff:

1. forward: the model's ``forward``, every layer keeping the residuals its backward needs;
2. the loss and its hand-written gradient with respect to the network's output;
3. backward: the model's ``backward``, each layer turning the cotangent of its output into the
   gradient of its parameters and the cotangent of its input, last layer first.

Composites (:func:`fnn.models.serial`, ``residual``, ``parallel``) compose their children's
forwards and backwards, so this *is* the whole chain rule: one implementation, no tape walker.
Nothing here calls ``jax.grad``, ``jax.vjp`` or ``jax.linearize``; the test suite proves it by
making autodiff through the layers raise while this sweep still succeeds. (A
:func:`fnn.layers.custom` layer given no ``backward`` is the one exception: its rule *is*
``jax.vjp``, and reports mark it.)

:func:`manual_vjp` goes the other way: it wraps a model in ``jax.custom_vjp`` so that
``jax.grad`` of its forward runs the same hand-written rules. That composes with reverse-mode
transformations: ``jax.grad``, ``jax.jit``, ``jax.vmap`` of ``jax.grad`` (per-example
gradients), ``jax.hessian`` and Hessian-vector products (forward-over-reverse works on the
rule, whose own operations are differentiable). It does not compose with forward mode on the
model itself: ``jax.jvp``, ``jax.linearize`` and ``jax.jacfwd`` of a ``custom_vjp`` function
raise in JAX; use the plain ``model.apply`` for those.

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
from fnn.models import Model, check_input, check_params


def _train_flag(key, train):
    return key is not None if train is None else bool(train)


def value_grad_state(model: Model, loss):
    """The hand-written sweep that also returns the model's next state.

    Returns:
        ``f(params, x, y, *, key=None, train=None, state=None) -> (value, grads, new_state)``;
        ``new_state`` is the running statistics after this batch (batch norm) in training, and
        ``state`` unchanged otherwise (``{}`` for a stateless model).
    """
    loss = _losses.get(loss)

    def f(params, x, y, *, key=None, train=None, state=None):
        train = _train_flag(key, train)
        if state is None:
            state = model.init_state()
        out, res = model.forward(params, x, key=key, train=train, state=state)
        value = loss.fn(out, y)
        grads, _ = model.backward(params, res, loss.grad(out, y))
        if train and model.layer.next_state is not None:
            state = model.layer.next_state(state, res)
        return value, grads, state

    return f


def value_and_grad(model: Model, loss):
    """The hand-written reverse sweep for ``loss(model.apply(params, x), y)``.

    Args:
        model: a :class:`fnn.models.Model` (e.g. from :func:`fnn.mlp` or
            :func:`fnn.models.build`).
        loss: a loss name from :data:`fnn.losses.NAMES` or a :class:`fnn.losses.Loss`.

    Returns:
        A pure, jit-compilable ``f(params, x, y, *, key=None, train=None, state=None) ->
        (value, grads)``, ``grads`` in the structure of ``params``. ``train`` defaults to
        ``key is not None`` (dropout on when a key is given); the key drives the forward, and
        the backward reads what the forward kept (dropout's mask).

    Raises:
        ValueError, TypeError: (when ``f`` is called or traced) for params that do not fit the
            model, or ``x``/``y`` of the wrong shape or dtype; the message names the layer.
    """
    vgs = value_grad_state(model, loss)

    def f(params, x, y, *, key=None, train=None, state=None):
        value, grads, _ = vgs(params, x, y, key=key, train=train, state=state)
        return value, grads

    return f


def grad(model: Model, loss):
    """Like :func:`value_and_grad`, returning only the gradients."""
    vg = value_and_grad(model, loss)

    def f(params, x, y, *, key=None, train=None, state=None):
        return vg(params, x, y, key=key, train=train, state=state)[1]

    return f


_FORWARD_MODE_HINT = (
    "manual_vjp: forward-mode autodiff (jax.jvp, jax.linearize, jax.jacfwd) cannot "
    "differentiate a jax.custom_vjp function; use model.apply (the plain forward) for forward "
    "mode, or jax.jacrev / jax.grad, which run the hand-written rules"
)


def manual_vjp(model: Model) -> Model:
    """Wrap ``model`` so that autodiff of its ``apply`` runs the hand-written backward rules.

    The returned model has the same ``init``, shapes and forward values; its ``apply`` is a
    ``jax.custom_vjp`` whose rule is the model's own ``forward``/``backward``. Works with
    ``jax.grad``, ``jax.jit``, ``jax.vmap`` of ``jax.grad`` (per-example gradients),
    ``jax.hessian`` and Hessian-vector products. Forward mode (``jax.jvp``, ``jax.linearize``,
    ``jax.jacfwd``) cannot differentiate a ``custom_vjp`` and raises a ``TypeError`` saying
    so. The key, when given, gets no cotangent.
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
    def _apply(params, x, key, state, train):
        return model.layer.forward(params, x, key=key, train=train, state=state)[0]

    def _fwd(params, x, key, state, train):
        y, res = model.layer.forward(params, x, key=key, train=train, state=state)
        return y, (params, res)

    def _bwd(train, saved, dy):
        del train
        params, res = saved
        dparams, dx = model.backward(params, res, dy)
        return dparams, dx, None, None

    _apply.defvjp(_fwd, _bwd)

    def apply(params, x, *, key=None, train=False, state=None):
        check_input(model, x)
        check_params(model, params)
        if state is None:
            state = model.init_state()
        try:
            return _apply(params, x, key, state, bool(train))
        except TypeError as e:
            if "custom_vjp" in str(e) and "forward-mode" in str(e):
                raise TypeError(f"{_FORWARD_MODE_HINT}\n(JAX said: {e})") from None
            raise

    return model._replace(apply=apply, name=f"manual_vjp({model.name})")

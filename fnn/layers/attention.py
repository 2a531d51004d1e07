"""Multi-head self-attention with its backward written out.

For one head, with ``X: [seq, features]`` and the head's projections::

    Q = X Wq,  K = X Wk,  V = X Wv               [seq, d]
    S = Q K^T / sqrt(d)   (masked: S[i, j] = -inf for j > i when causal)
    P = softmax(S) row by row                     [seq, seq]
    O = P V                                       [seq, d]
    Y = concat_heads(O) Wo + bo                   [seq, features]

and the backward, from ``dY`` (each line the transpose of one line above)::

    dWo = O^T dY,  dbo = sum dY,  dO = dY Wo^T
    dV = P^T dO,   dP = dO V^T
    dS = P * (dP - sum(dP * P, axis=-1))          softmax's Jacobian, never formed
    dQ = dS K / sqrt(d),   dK = dS^T Q / sqrt(d)
    dWq = X^T dQ, dWk = X^T dK, dWv = X^T dV,  dX = dQ Wq^T + dK Wk^T + dV Wv^T

The softmax Jacobian of a row is ``diag(p) - p p^T``; applied to ``dP`` it is the line above,
``O(seq)`` per row instead of ``O(seq^2)``. Masked entries have ``P = 0``, so ``dS = 0`` there:
the mask needs no extra step in the backward *if* ``P`` is the forward's. When the backward
rebuilds ``P`` (``keep="lse"``) it must apply the same mask, or the entries above the diagonal
come back nonzero.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from fnn import layers
    >>> att = layers.attention(2, causal=True)
    >>> shape, p = att.init(jax.random.key(0), (5, 8), jnp.float32)
    >>> shape, sorted(p), p["wq"].shape
    ((5, 8), ['bo', 'wk', 'wo', 'wq', 'wv'], (8, 8))
    >>> x = jax.random.normal(jax.random.key(1), (3, 5, 8), jnp.float32)
    >>> y, res = att.forward(p, x)
    >>> dp, dx = att.backward(p, res, jnp.ones_like(y))
    >>> y.shape, dx.shape, dp["wo"].shape
    ((3, 5, 8), (3, 5, 8), (8, 8))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fnn.layers.base import Layer, check_float, check_positive_int

KEEPS = ("probs", "lse")


def causal_mask(seq: int):
    """``[1, 1, seq, seq]`` booleans, true where query ``i`` may see key ``j`` (``j <= i``)."""
    return jnp.tril(jnp.ones((seq, seq), bool))[None, None]


def softmax_backward(p, dp):
    """The softmax VJP of each row: ``dS = P * (dP - sum(dP * P, -1))``.

    ``J = diag(p) - p p^T`` is symmetric, so ``J dp = p * dp - p (p . dp)``: one product and
    one row sum, the ``[seq, seq]`` Jacobian of every row never built.
    """
    return p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))


def scores(q, k, scale: float, causal: bool):
    """``S = Q K^T * scale`` over ``[batch, heads, seq, d]``, ``-inf`` above the diagonal
    when ``causal`` (so ``exp`` gives exactly 0 there)."""
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if causal:
        s = jnp.where(causal_mask(s.shape[-1]), s, -jnp.inf)
    return s


# ---------------------------------------------------------------------------------------------
# the core, O = softmax(Q K^T * scale) V, and its backward (see the module docstring)


def core_forward(q, k, v, *, scale: float, causal: bool, keep: str = "probs"):
    """``O = softmax(scores(Q, K)) V``; returns ``(O, saved)``.

    ``saved`` is ``P`` (``keep="probs"``, ``[batch, heads, seq, seq]``) or the row
    log-sum-exp ``L = m + log sum exp(S - m)`` (``keep="lse"``, ``[batch, heads, seq, 1]``)
    from which the backward rebuilds ``P = exp(S - L)``.
    """
    s = scores(q, k, scale, causal)
    m = jnp.max(s, axis=-1, keepdims=True)  # the diagonal is never masked: m is finite
    e = jnp.exp(s - m)
    total = jnp.sum(e, axis=-1, keepdims=True)
    p = e / total
    o = jnp.einsum("bhqk,bhkd->bhqd", p, v)
    return o, (p if keep == "probs" else m + jnp.log(total))


def core_backward(q, k, v, saved, do, *, scale: float, causal: bool, keep: str = "probs"):
    """``(dQ, dK, dV)`` of :func:`core_forward` from ``dO``."""
    p = saved if keep == "probs" else jnp.exp(scores(q, k, scale, causal) - saved)
    dv = jnp.einsum("bhqk,bhqd->bhkd", p, do)
    dp = jnp.einsum("bhqd,bhkd->bhqk", do, v)
    ds = softmax_backward(p, dp) * scale  # S = Q K^T * scale: the scale reaches dQ and dK
    dq = jnp.einsum("bhqk,bhkd->bhqd", ds, k)
    dk = jnp.einsum("bhqk,bhqd->bhkd", ds, q)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# attention: the projections around the core; res = (x, q, k, v, o, saved)
#   forward  q = x Wq (per head), ..., y = o Wo + bo
#   backward dWo = o^T dy, do = dy Wo^T, core_backward, dWq = x^T dq, ..., dx = sum of three


def attention(
    heads: int,
    *,
    causal: bool = False,
    head_dim: int | None = None,
    keep: str = "probs",
    w_init: Callable | None = None,
) -> Layer:
    """Multi-head self-attention over ``[batch, seq, features]``.

    Args:
        heads: number of heads (a positive int).
        causal: mask every query from the keys after it (a language model's decoder).
        head_dim: width ``d`` of each head; default ``features // heads`` (which must then
            divide evenly).
        keep: what the backward keeps of the softmax (its memory): ``"probs"`` keeps ``P``,
            ``batch * heads * seq^2`` numbers, and the backward reads it; ``"lse"`` keeps one
            log-sum-exp per row, ``batch * heads * seq``, and rebuilds ``P`` in the backward
            from ``Q`` and ``K`` at the cost of one more ``Q K^T`` product (the
            flash-attention trade).
        w_init: initialiser for the four projection matrices; default Glorot uniform.

    Shapes:
        ``params = {"wq", "wk", "wv": [features, heads * d], "wo": [heads * d, features],
        "bo": [features]}``. No query, key or value biases: a key bias adds ``q . bk`` to a
        whole row of scores, which softmax ignores (its gradient is identically zero), and a
        value bias passes through ``P`` (rows sum to 1) into a constant that ``bo`` already
        provides.

    Backward (the module docstring has every line): the residuals are ``x``, ``Q``, ``K``,
    ``V``, ``O`` (``[batch, heads, seq, d]`` each) and ``P`` or the row log-sum-exp (see
    ``keep``); no autodiff.
    """
    check_positive_int("attention", "heads", heads)
    if head_dim is not None:
        check_positive_int("attention", "head_dim", head_dim)
    if keep not in KEEPS:
        raise ValueError(f"attention: keep must be one of {KEEPS}, got {keep!r}")
    w_init = w_init or jax.nn.initializers.glorot_uniform()
    name = f"attention({heads}{', causal' if causal else ''})"

    def init(key, in_shape, dtype=jnp.float32):
        if len(in_shape) != 2:
            raise ValueError(
                f"{name}: expects inputs [batch, seq, features], got feature shape "
                f"{tuple(in_shape)}"
            )
        features = int(in_shape[-1])
        if head_dim is None and features % heads:
            raise ValueError(
                f"{name}: features ({features}) must be divisible by heads ({heads}), or pass "
                f"head_dim"
            )
        inner = heads * (head_dim or features // heads)
        ks = jax.random.split(key, 4)
        return tuple(in_shape), {
            "wq": w_init(ks[0], (features, inner), dtype),
            "wk": w_init(ks[1], (features, inner), dtype),
            "wv": w_init(ks[2], (features, inner), dtype),
            "wo": w_init(ks[3], (inner, features), dtype),
            "bo": jnp.zeros((features,), dtype),
        }

    def split(x, w):  # [b, t, f] @ [f, h * d] -> [b, h, t, d]
        f = w.shape[0]
        return jnp.einsum("btf,fhd->bhtd", x, w.reshape(f, heads, -1))

    def forward(params, x, *, key=None, train=False, state=None):
        del key, train, state
        check_float(name, x)
        features = params["wq"].shape[0]
        if jnp.ndim(x) != 3 or jnp.shape(x)[-1] != features:
            raise ValueError(
                f"{name}: input x must have shape [batch, seq, {features}], got {jnp.shape(x)}"
            )
        q, k, v = (split(x, params[w]) for w in ("wq", "wk", "wv"))
        scale = 1.0 / math.sqrt(q.shape[-1])
        o, saved = core_forward(q, k, v, scale=scale, causal=causal, keep=keep)
        wo = params["wo"].reshape(heads, -1, features)
        y = jnp.einsum("bhtd,hdf->btf", o, wo) + params["bo"][None, None]
        return y, (x, q, k, v, o, saved)

    def backward(params, res, dy):
        x, q, k, v, o, saved = res
        features = params["wq"].shape[0]
        wo = params["wo"].reshape(heads, -1, features)
        grads = {
            "wo": jnp.einsum("bhtd,btf->hdf", o, dy).reshape(-1, features),
            "bo": jnp.sum(dy, axis=(0, 1)),
        }
        do = jnp.einsum("btf,hdf->bhtd", dy, wo)
        scale = 1.0 / math.sqrt(q.shape[-1])
        dq, dk, dv = core_backward(q, k, v, saved, do, scale=scale, causal=causal, keep=keep)
        dx = jnp.zeros_like(x)
        for w, d in (("wq", dq), ("wk", dk), ("wv", dv)):
            grads[w] = jnp.einsum("btf,bhtd->fhd", x, d).reshape(features, -1)
            dx = dx + jnp.einsum("bhtd,fhd->btf", d, params[w].reshape(features, heads, -1))
        return {k_: grads[k_] for k_ in ("wq", "wk", "wv", "wo", "bo")}, dx

    return Layer(name, init, forward, backward, info=(("heads", heads), ("causal", causal)))

"""Token and position embeddings: the first layers of a sequence model.

``embedding`` looks integer tokens up in a table; ``position_embedding`` adds a learned vector
per position. Their backwards are a scatter-add into the table and a sum over the batch.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from fnn import layers
    >>> emb = layers.embedding(10, 4)
    >>> out_shape, p = emb.init(jax.random.key(0), (3,), jnp.float32)
    >>> out_shape, p["table"].shape
    ((3, 4), (10, 4))
    >>> tokens = jnp.array([[1, 2, 1]])
    >>> y, res = emb.forward(p, tokens)
    >>> dp, dx = emb.backward(p, res, jnp.ones_like(y))
    >>> dp["table"][:3, 0].tolist()   # token 1 was used twice: its row gathers both cotangents
    [0.0, 2.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnn.layers.base import Layer, check_float, check_positive_int

# ---------------------------------------------------------------------------------------------
# embedding: y[b, t] = table[x[b, t]]; res = x
#   dtable = scatter-add of dy into the rows x points at (a row used twice gathers both),
#   dx = none: tokens are integers, the output is piecewise constant in them.


def _tokens(name: str, x, vocab_size: int):
    """``x`` as int32 token ids; floats holding integers are accepted (``fit`` casts x)."""
    kind = jnp.result_type(x)
    if jnp.issubdtype(kind, jnp.floating):
        return jnp.asarray(x).astype(jnp.int32)
    if jnp.issubdtype(kind, jnp.integer):
        return jnp.asarray(x)
    raise TypeError(
        f"{name}: tokens x must be integers in [0, {vocab_size}) of shape [batch, seq], got "
        f"dtype {kind}; convert them with x.astype(jnp.int32)"
    )


def _no_cotangent(x):
    """The input cotangent of a lookup: ``float0`` zeros for integer tokens (what JAX expects
    of a ``custom_vjp`` for an integer argument), float zeros for float-held tokens."""
    if jnp.issubdtype(jnp.result_type(x), jnp.floating):
        return jnp.zeros_like(x)
    return np.zeros(jnp.shape(x), dtype=jax.dtypes.float0)


def embedding(vocab_size: int, features: int, *, init: Callable | None = None) -> Layer:
    """Look tokens up in a learned table: ``[batch, seq]`` integers to ``[batch, seq, features]``.

    Args:
        vocab_size: number of distinct tokens (ids ``0 .. vocab_size - 1``).
        features: the embedding width.
        init: initialiser for the table; default ``normal(1.0)``, unit-scale rows like the
            position vectors they are added to (a pre-norm transformer renormalises anyway).

    Shapes:
        ``params = {"table": [vocab_size, features]}``, ``x: [batch, ...]`` integer ids (or
        floats holding integers, which is how :func:`fnn.train.fit` passes ``x``),
        ``y: [batch, ..., features]``. Ids outside the table are clamped by XLA's gather, not
        checked (no value checks inside ``jit``).

    Backward (keeps ``x``, the ids):
        ``dtable = zeros.at[x].add(dy)``, a scatter-add: a token that occurs ``n`` times gets
        the sum of its ``n`` cotangents. The ids get no cotangent (``float0`` zeros).

    The layer carries ``info`` ``("int_input", True)``, so a model that starts with it takes
    integer ``x`` (see :func:`fnn.models.check_input`).
    """
    check_positive_int("embedding", "vocab_size", vocab_size)
    check_positive_int("embedding", "features", features)
    init_fn = init or jax.nn.initializers.normal(1.0)
    name = f"embedding({vocab_size}, {features})"

    def init_(key, in_shape, dtype=jnp.float32):
        return (*tuple(in_shape), features), {"table": init_fn(key, (vocab_size, features), dtype)}

    def forward(params, x, *, key=None, train=False, state=None):
        del key, train, state
        ids = _tokens(name, x, vocab_size)
        return jnp.take(params["table"], ids, axis=0), x

    def backward(params, x, dy):
        ids = _tokens(name, x, vocab_size)
        table = params["table"]
        dtable = jnp.zeros_like(table).at[ids.reshape(-1)].add(dy.reshape(-1, table.shape[1]))
        return {"table": dtable}, _no_cotangent(x)

    return Layer(name, init_, forward, backward, info=(("int_input", True),))


# ---------------------------------------------------------------------------------------------
# position_embedding: y[b, t] = x[b, t] + table[t]; res = none
#   dtable = sum over the batch of dy,   dx = dy


def position_embedding(*, init: Callable | None = None) -> Layer:
    """Add a learned vector per position: ``y[:, t] = x[:, t] + table[t]``.

    Learned rather than sinusoidal: an fnn model is built for one input shape, so the sequence
    length is known at ``init`` and the table can simply hold one row per position. The
    sinusoids' virtue, lengths never seen in training, does not arise, while tasks that need an
    exact position (reversing a sequence: output ``t`` reads input ``seq - 1 - t``) learn it
    directly into the table.

    Args:
        init: initialiser for the table; default ``normal(1.0)``.

    Shapes:
        ``params = {"table": [seq, features]}`` from ``in_shape = (seq, features)``;
        ``x, y: [batch, seq, features]``.

    Backward (keeps nothing): ``dtable = sum(dy, axis=0)`` (every example adds the same
    table), ``dx = dy``.
    """
    init_fn = init or jax.nn.initializers.normal(1.0)
    name = "position_embedding"

    def init_(key, in_shape, dtype=jnp.float32):
        if len(in_shape) != 2:
            raise ValueError(
                f"{name}: expects inputs [batch, seq, features], got feature shape "
                f"{tuple(in_shape)}; put it after an embedding"
            )
        return tuple(in_shape), {"table": init_fn(key, tuple(in_shape), dtype)}

    def forward(params, x, *, key=None, train=False, state=None):
        del key, train, state
        check_float(name, x)
        table = params["table"]
        if jnp.shape(x)[1:] != table.shape:
            raise ValueError(
                f"{name}: input x must have shape [batch, {table.shape[0]}, {table.shape[1]}], "
                f"got {jnp.shape(x)}"
            )
        return x + table[None], None

    def backward(params, res, dy):
        del params, res
        return {"table": jnp.sum(dy, axis=0)}, dy

    return Layer(name, init_, forward, backward)

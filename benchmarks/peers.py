"""The peers' training steps, each in the form its documentation recommends for speed.

Every builder takes ``(sizes, xs, ys, lr)`` -- layer widths, a small pool of input batches
``xs[i]: [batch, sizes[0]]`` float32 and integer labels ``ys[i]: [batch]`` (JAX arrays) -- and
returns a runner ``run(calls)`` (see ``_timing.py``) that trains the same model as the raw JAX
baseline: dense layers with ReLU between them, softmax cross-entropy on the logits, Adam with
``lr``. The batches are cycled so no step reads the buffer the previous one wrote. A builder
raises ``ImportError`` when its library is not installed; :data:`PEERS` lists them all.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _loop(step, state, xs, ys):
    """A runner over a jitted ``step(*state, x, y) -> (*state, loss)``."""
    box = [state]

    def run(calls):
        s = box[0]
        for i in range(calls):
            *s, _ = step(*s, xs[i % len(xs)], ys[i % len(ys)])
        jax.block_until_ready(s)
        box[0] = s

    return run


def flax_linen(sizes, xs, ys, lr):
    """flax.linen: ``nn.Dense`` modules, params from ``init``, ``jax.jit`` with donation."""
    import flax.linen as nn

    class MLP(nn.Module):
        widths: tuple

        @nn.compact
        def __call__(self, x):
            for i, w in enumerate(self.widths):
                x = nn.Dense(w)(x)
                if i < len(self.widths) - 1:
                    x = nn.relu(x)
            return x

    model = MLP(tuple(sizes[1:]))
    params = model.init(jax.random.key(0), xs[0])
    tx = optax.adam(lr)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: _ce(model.apply(p, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return _loop(step, [params, tx.init(params)], xs, ys)


def _nnx_model(sizes):
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, sizes, rngs):
            self.layers = nnx.List(
                nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
            )

        def __call__(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(self.layers) - 1:
                    x = nnx.relu(x)
            return x

    return MLP(sizes, nnx.Rngs(0))


def flax_nnx(sizes, xs, ys, lr):
    """flax.nnx with ``nnx.jit``, ``nnx.value_and_grad`` and ``nnx.Optimizer`` (stateful)."""
    from flax import nnx

    model = _nnx_model(sizes)
    opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, opt, x, y):
        loss, grads = nnx.value_and_grad(lambda m: _ce(m(x), y))(model)
        opt.update(model, grads)
        return loss

    def run(calls):
        loss = None
        for i in range(calls):
            loss = step(model, opt, xs[i % len(xs)], ys[i % len(ys)])
        jax.block_until_ready((loss, nnx.state(model)))

    return run


def flax_nnx_split(sizes, xs, ys, lr):
    """flax.nnx in its functional form: ``nnx.split`` once, ``nnx.merge`` inside ``jax.jit``."""
    from flax import nnx

    graphdef, params = nnx.split(_nnx_model(sizes))
    tx = optax.adam(lr)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: _ce(nnx.merge(graphdef, p)(x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return _loop(step, [params, tx.init(params)], xs, ys)


def equinox(sizes, xs, ys, lr):
    """equinox: ``eqx.nn.MLP`` vmapped over the batch, ``eqx.filter_jit`` with donation."""
    import equinox as eqx

    widths = set(sizes[1:-1])
    if len(widths) != 1:
        raise ValueError(f"sizes: equinox's MLP needs equal hidden widths, got {sizes}")
    model = eqx.nn.MLP(
        sizes[0],
        sizes[-1],
        widths.pop(),
        len(sizes) - 2,
        activation=jax.nn.relu,
        key=jax.random.key(0),
    )
    tx = optax.adam(lr)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    # the batch comes first so that "all-except-first" donates the model and optimizer state
    @eqx.filter_jit(donate="all-except-first")
    def step(batch, model, opt_state):
        x, y = batch

        @eqx.filter_value_and_grad
        def loss(m):
            return _ce(jax.vmap(m)(x), y)

        value, grads = loss(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    box = [(model, opt_state)]

    def run(calls):
        m, s = box[0]
        for i in range(calls):
            m, s, _ = step((xs[i % len(xs)], ys[i % len(ys)]), m, s)
        jax.block_until_ready(eqx.filter(m, eqx.is_array))
        box[0] = (m, s)

    return run


def haiku(sizes, xs, ys, lr):
    """dm-haiku: ``hk.nets.MLP`` under ``hk.transform``, ``jax.jit`` with donation."""
    import haiku as hk

    net = hk.without_apply_rng(
        hk.transform(lambda x: hk.nets.MLP(sizes[1:], activation=jax.nn.relu)(x))
    )
    params = net.init(jax.random.key(0), xs[0])
    tx = optax.adam(lr)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: _ce(net.apply(p, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return _loop(step, [params, tx.init(params)], xs, ys)


def _torch(sizes, xs, ys, lr, compiled: bool):
    import torch

    # One intra-op thread: with two, torch's OpenMP workers fight XLA's thread pool living in
    # the same process (measured: small step 0.32 ms alone, 23.6 ms after a JAX step had run),
    # and on the large config one thread ran within 5% of two.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tx = [torch.from_numpy(np.array(x)) for x in xs]
    ty = [torch.from_numpy(np.asarray(y).astype(np.int64)) for y in ys]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if compiled:
        step = torch.compile(step)

    def run(calls):
        for i in range(calls):
            loss = step(tx[i % len(tx)], ty[i % len(ty)])
        loss.item()  # eager CPU torch is synchronous; this only reads the last loss

    return run


def torch_eager(sizes, xs, ys, lr):
    """PyTorch eager: ``nn.Sequential`` of ``Linear``/``ReLU``, ``torch.optim.Adam``, 1 thread."""
    return _torch(sizes, xs, ys, lr, compiled=False)


def torch_compile(sizes, xs, ys, lr):
    """PyTorch with the whole step (forward, backward, Adam) under ``torch.compile``."""
    return _torch(sizes, xs, ys, lr, compiled=True)


PEERS = {
    "flax_linen": flax_linen,
    "flax_nnx": flax_nnx,
    "flax_nnx_split": flax_nnx_split,
    "equinox": equinox,
    "haiku": haiku,
    "torch_eager": torch_eager,
    "torch_compile": torch_compile,
}

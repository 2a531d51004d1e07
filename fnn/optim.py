"""The textbook optimizers and learning-rate schedules by name, built from optax.

:func:`get` assembles an ``optax`` chain (optional clipping by global norm, optional weight
decay, the optimizer) and wraps it in ``optax.inject_hyperparams`` so that the learning rate
of the last update can be read from the optimizer state (:func:`learning_rate`); the trainer
records it once per epoch. No optimizer arithmetic is written here: optax does all of it.

Any ``optax.GradientTransformation`` works with :mod:`fnn.train`; this module only saves the
boilerplate of the common cases.

Example:
    >>> import jax.numpy as jnp
    >>> from fnn import optim
    >>> opt = optim.get("adam", 1e-3, schedule="cosine", steps=1000)
    >>> state = opt.init({"w": jnp.zeros(3, jnp.float32)})
    >>> round(float(optim.learning_rate(state)), 6)
    0.001
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import optax

#: name -> (optax factory taking ``learning_rate`` as its first argument, fixed settings).
#: "gd" and "sgd" are the same update rule, ``w -= lr * g``: gradient descent on the full
#: batch and stochastic gradient descent on minibatches differ only in ``batch_size``.
_OPTIMIZERS = {
    "gd": (optax.sgd, {}),
    "sgd": (optax.sgd, {}),
    "momentum": (optax.sgd, {"nesterov": False}),
    "nesterov": (optax.sgd, {"nesterov": True}),
    "adam": (optax.adam, {}),
    "adamw": (optax.adamw, {}),
    "rmsprop": (optax.rmsprop, {}),
    "adagrad": (optax.adagrad, {}),
}

#: Every optimizer name :func:`get` knows.
NAMES: tuple[str, ...] = tuple(_OPTIMIZERS)

#: Every schedule name :func:`get` knows.
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "warmup_cosine", "exponential", "step")


def _positive_int(name: str, value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def schedule(
    name: str,
    lr: float,
    *,
    steps: int | None = None,
    warmup: int | None = None,
    decay_rate: float = 0.1,
    boundaries=None,
):
    """An optax schedule ``count -> learning rate`` by name.

    Args:
        name: one of :data:`SCHEDULES`:

            * ``"constant"``: ``lr`` throughout (``steps`` not needed);
            * ``"cosine"``: ``optax.cosine_decay_schedule`` from ``lr`` to 0 over ``steps``;
            * ``"warmup_cosine"``: ``optax.warmup_cosine_decay_schedule``, linear from 0 to
              ``lr`` over ``warmup`` steps (default ``steps // 10``, at least 1), then cosine
              to 0 at ``steps``;
            * ``"exponential"``: ``optax.exponential_decay``,
              ``lr * decay_rate ** (count / steps)``;
            * ``"step"``: ``optax.piecewise_constant_schedule``, multiplied by ``decay_rate``
              at each of ``boundaries`` (default half and three quarters of ``steps``).
        lr: the peak (initial) learning rate, ``> 0``.
        steps: the total number of optimizer updates; required by every schedule but
            ``"constant"``.
        warmup: warm-up steps of ``"warmup_cosine"`` (only that schedule takes it).
        decay_rate: factor of ``"exponential"`` (over ``steps``) and ``"step"`` (per
            boundary), in ``(0, 1]``.
        boundaries: the step counts where ``"step"`` decays.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), a missing or
            non-positive ``steps``, ``warmup`` outside ``[1, steps)`` or with another
            schedule, or ``decay_rate`` outside ``(0, 1]``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule: unknown {name!r}; expected one of: {', '.join(SCHEDULES)}")
    if warmup is not None and name != "warmup_cosine":
        raise ValueError(
            f"warmup: only the 'warmup_cosine' schedule takes a warm-up, got warmup={warmup!r} "
            f"with schedule={name!r}"
        )
    if name == "constant":
        return optax.constant_schedule(lr)
    if steps is None:
        raise ValueError(
            f"steps: the {name!r} schedule needs the total number of updates, e.g. "
            f"steps=epochs * (len(x) // batch_size); got None"
        )
    steps = _positive_int("steps", steps)
    if not 0.0 < float(decay_rate) <= 1.0:
        raise ValueError(f"decay_rate: expected a value in (0, 1], got {decay_rate!r}")
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, steps)
    if name == "warmup_cosine":
        warmup = max(1, steps // 10) if warmup is None else _positive_int("warmup", warmup)
        if warmup >= steps:
            raise ValueError(
                f"warmup: expected fewer warm-up steps than steps={steps}, got {warmup}"
            )
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps)
    if name == "exponential":
        return optax.exponential_decay(lr, steps, float(decay_rate))
    if boundaries is None:
        boundaries = sorted({max(1, steps // 2), max(1, 3 * steps // 4)})
    bounds = {_positive_int("boundaries[i]", b): float(decay_rate) for b in boundaries}
    return optax.piecewise_constant_schedule(lr, bounds)


# get() and factory() take a ``schedule=`` name argument that hides the function inside them.
_make_schedule = schedule


class Optimizer(optax.GradientTransformationExtraArgs):
    """The optax transformation :func:`get` returns, equal to another built from equal
    settings (``settings``, the normalised arguments of :func:`get`).

    Equality by value lets ``jax.jit``'s cache serve both: a compiled epoch that closes over
    one such optimizer is reused for an equal one, with no memoisation of :func:`get`.
    """

    def __eq__(self, other):
        return isinstance(other, Optimizer) and self.settings == other.settings

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(self.settings)


class _Unique:
    """Stands for settings that cannot be hashed (e.g. a mask dict): equal only to itself."""


def _check_rule(name, momentum, weight_decay, clip_norm) -> None:
    if name not in _OPTIMIZERS:
        raise ValueError(f"optimizer: unknown {name!r}; expected one of: {', '.join(NAMES)}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
    if weight_decay is not None and not float(weight_decay) >= 0:
        raise ValueError(f"weight_decay: expected a value >= 0, got {weight_decay!r}")
    if clip_norm is not None and not float(clip_norm) > 0:
        raise ValueError(f"clip_norm: expected a value > 0 (or None), got {clip_norm!r}")


def rule(
    name: str,
    *,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    clip_norm: float | None = None,
    **options,
):
    """The update rule of ``name`` as a factory of the learning rate: ``f(learning_rate) ->``
    the optax chain (clipping, weight decay, the optimizer), with no schedule.

    This is the one optimizer table: :func:`get` schedules it, :func:`factory` lets a sweep
    inject the rate, and :func:`fnn.diagnostics.lr_find` ramps it. Arguments as for
    :func:`get`.

    Example:
        >>> import jax.numpy as jnp
        >>> from fnn import optim
        >>> sgd = optim.rule("momentum")(0.1)       # optax.sgd(0.1, momentum=0.9)
        >>> updates, _ = sgd.update({"w": jnp.ones(2)}, sgd.init({"w": jnp.ones(2)}))
        >>> updates["w"].tolist()
        [-0.1, -0.1]
    """
    _check_rule(name, momentum, weight_decay, clip_norm)
    base, fixed = _OPTIMIZERS[name]
    settings = {**fixed, **options}
    if name in ("momentum", "nesterov"):
        settings["momentum"] = float(momentum)
    if name == "adamw":
        settings["weight_decay"] = 1e-4 if weight_decay is None else float(weight_decay)

    def chain(learning_rate):
        parts = []
        if clip_norm is not None:
            parts.append(optax.clip_by_global_norm(float(clip_norm)))
        if weight_decay and name != "adamw":
            parts.append(optax.add_decayed_weights(float(weight_decay)))
        parts.append(base(learning_rate, **settings))
        return optax.chain(*parts) if len(parts) > 1 else parts[0]

    try:
        chain(1e-3)  # surface a bad factory option now rather than at the first update
    except TypeError as err:
        raise TypeError(f"optimizer {name!r}: bad option in {sorted(options)}: {err}") from err
    return chain


def factory(
    name: str,
    *,
    schedule: str = "constant",
    steps: int | None = None,
    warmup: int | None = None,
    decay_rate: float = 0.1,
    boundaries=None,
    **rule_settings,
):
    """``f(learning_rate) ->`` :func:`get`'s optimizer with that peak rate, for sweeps:
    ``optax.inject_hyperparams(factory(...))(learning_rate=...)`` gives each run its own rate
    (an array under ``inject_hyperparams``), scheduled as :func:`get` schedules it.

    Arguments as for :func:`get`; checked here, before any run starts.
    """
    name_schedule = schedule
    _make_schedule(  # check the settings now, with a stand-in rate
        name_schedule, 1.0, steps=steps, warmup=warmup, decay_rate=decay_rate, boundaries=boundaries
    )
    update_rule = rule(name, **rule_settings)

    def build(learning_rate):
        sched = _make_schedule(
            name_schedule,
            learning_rate,
            steps=steps,
            warmup=warmup,
            decay_rate=decay_rate,
            boundaries=boundaries,
        )
        return optax.inject_hyperparams(update_rule)(learning_rate=sched)

    return build


def get(
    name: str,
    lr: float,
    *,
    schedule: str = "constant",
    steps: int | None = None,
    warmup: int | None = None,
    decay_rate: float = 0.1,
    boundaries=None,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    clip_norm: float | None = None,
    **options,
) -> Optimizer:
    """An optax optimizer by name, with a learning-rate schedule and optional clipping.

    Equal arguments give equal optimizers (:class:`Optimizer`), so the trainer's compiled
    epoch, which ``jax.jit`` caches by value, is reused across calls.

    Args:
        name: one of :data:`NAMES`: ``gd`` and ``sgd`` (both ``optax.sgd``: plain
            ``w -= lr * g``, the name only says whether you train full-batch or on
            minibatches), ``momentum`` (heavy ball), ``nesterov``, ``adam``, ``adamw``
            (decoupled weight decay), ``rmsprop``, ``adagrad``.
        lr: the learning rate (the peak of a schedule), a number ``> 0``.
        schedule: a name from :data:`SCHEDULES`; see :func:`fnn.optim.schedule` for
            ``steps``, ``warmup``, ``decay_rate`` and ``boundaries``.
        momentum: the momentum coefficient of ``momentum`` and ``nesterov``, in ``[0, 1)``.
        weight_decay: for ``adamw``, its decoupled decay (default ``1e-4``); for the others,
            ``optax.add_decayed_weights`` before the update, i.e. an L2 penalty
            ``weight_decay/2 * |w|^2`` added to the loss (default none).
        clip_norm: if given, ``optax.clip_by_global_norm(clip_norm)`` rescales the gradient
            first whenever its global norm exceeds ``clip_norm``.
        **options: further keyword arguments of the optax factory, e.g. ``b1``, ``b2``,
            ``eps`` for ``adam``, ``decay`` for ``rmsprop``.

    Returns:
        ``optax.inject_hyperparams`` of the chain; :func:`learning_rate` reads the rate of the
        last update from its state.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), ``lr <= 0``,
            ``momentum`` outside ``[0, 1)``, a negative ``weight_decay``, a non-positive
            ``clip_norm``, or a bad schedule setting.
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"optimizer: unknown {name!r}; expected one of: {', '.join(NAMES)}")
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not float(lr) > 0:
        raise ValueError(f"lr: expected a learning rate > 0, got {lr!r}")
    settings = dict(
        schedule=schedule,
        steps=steps,
        warmup=warmup,
        decay_rate=float(decay_rate),
        boundaries=None if boundaries is None else tuple(boundaries),
        momentum=float(momentum),
        weight_decay=None if weight_decay is None else float(weight_decay),
        clip_norm=None if clip_norm is None else float(clip_norm),
        **options,
    )
    inner = factory(name, **settings)(float(lr))
    opt = Optimizer(inner.init, inner.update)
    key = (name, float(lr), tuple(sorted(settings.items())))
    try:
        hash(key)
    except TypeError:  # an unhashable option (a mask dict, a callable's state): by identity
        key = _Unique()
    opt.settings = key
    return opt


def _inject_states(opt_state) -> list:
    kinds = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)
    nodes = []

    def visit(node):
        if isinstance(node, kinds):
            nodes.append(node)
            visit(node.inner_state)  # nested injection: an outer peak feeding a schedule
            return
        if isinstance(node, (tuple, list)):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(opt_state)
    return nodes


def learning_rate(opt_state):
    """The learning rate of the last update, read from an ``inject_hyperparams`` state.

    Works inside ``jit`` (the search over the state's structure happens at trace time).

    Returns:
        A scalar array (after ``init``: the rate the first update will use), or ``None`` when
        no ``optax.inject_hyperparams`` state holding ``learning_rate`` is found, e.g. for a
        plain ``optax.adam(1e-3)``. With nested injection (an outer injected peak feeding an
        inner schedule, as :func:`fnn.many.fit_many` builds) the innermost rate, the one the
        update applied, is returned.
    """
    found = None
    for node in _inject_states(opt_state):
        if "learning_rate" in node.hyperparams:
            found = node.hyperparams["learning_rate"]
    return None if found is None else jnp.asarray(found)

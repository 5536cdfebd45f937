"""Input gradients of one scalar per sample (saliency, integrated gradients, SmoothGrad),
composition-simplex directions, committee statistics and :func:`explain`, everything at once.

Every tool differentiates ``output`` of ``model.apply`` times ``scale`` with respect to one
input leaf ``wrt`` of the batch (a dict key or a path into a graph batch); gradients carry
the output's units per input unit (e.g. mW/cm² per unit fraction; × 0.01 gives per 1 at.%).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.core.committee import stats
from jaxmat.core.protocol import Model, Params

Path = str | Sequence[str]


# --------------------------------------------------------------------------- batch access
def _path(wrt: Path) -> tuple[str, ...]:
    return (wrt,) if isinstance(wrt, str) else tuple(wrt)


def get_leaf(batch: Any, wrt: Path) -> jax.Array:
    """The input array at ``wrt`` (dict key or path through dicts / named tuples)."""
    x = batch
    for k in _path(wrt):
        try:
            x = x[k] if isinstance(x, dict) else getattr(x, k)
        except (KeyError, AttributeError):
            raise ValueError(f"batch has no input {'/'.join(_path(wrt))!r} (missing {k!r})") from None
    return x


def set_leaf(batch: Any, wrt: Path, value: Any) -> Any:
    """A shallow copy of ``batch`` with the leaf at ``wrt`` replaced."""
    p = _path(wrt)
    if not p:
        return value
    head, rest = p[0], p[1:]
    if isinstance(batch, dict):
        if head not in batch:
            raise ValueError(f"batch has no input {head!r}")
        return {**batch, head: set_leaf(batch[head], rest, value)}
    if hasattr(batch, "_replace"):
        return batch._replace(**{head: set_leaf(getattr(batch, head), rest, value)})
    raise ValueError(f"cannot set {head!r} on a batch of type {type(batch).__name__}")


def sample_mask(batch: Any) -> jax.Array | None:
    """The per-sample mask: ``batch["mask"]`` for dict batches, ``globals["mask"]`` for graphs."""
    if isinstance(batch, dict):
        return batch.get("mask")
    g = getattr(batch, "globals", None)
    return g.get("mask") if isinstance(g, dict) else None


def scalar_fn(model: Model, output: str = "P", scale: float = 1.0
              ) -> Callable[[Params, Any], jax.Array]:
    """``f(params, batch) -> (B,)``: ``scale * model.apply(params, batch)[output]`` (eval mode)."""

    def f(params, batch):
        out = model.apply(params, batch)
        if output not in out:
            raise ValueError(f"model outputs {sorted(out)}, not {output!r}")
        y = out[output]
        if y.ndim != 1:
            raise ValueError(f"output {output!r} must be one scalar per sample, got shape {y.shape}")
        return scale * y

    return f


def _masked_sum(f, params, batch):
    y, m = f(params, batch), sample_mask(batch)
    return jnp.sum(y if m is None else jnp.where(m, y, 0.0))


def _grad(model, params, batch, wrt, output, scale):
    """x -> the gradient of the masked sum of ``scale * output`` with the leaf ``wrt`` set to x."""
    f = scalar_fn(model, output, scale)
    return jax.grad(lambda x: _masked_sum(f, params, set_leaf(batch, wrt, x)))


# --------------------------------------------------------------------------- gradients
def input_gradients(model: Model, params: Params, batch: Any, wrt: Path = "composition",
                    output: str = "P", scale: float = 1.0) -> jax.Array:
    """∂(scale · output_i)/∂(input_i) for every sample i; same shape as the input leaf
    (padding rows give 0)."""
    return _grad(model, params, batch, wrt, output, scale)(jnp.asarray(get_leaf(batch, wrt)))


def integrated_gradients(model: Model, params: Params, batch: Any, wrt: Path = "composition",
                         baseline: Any = None, steps: int = 32, output: str = "P",
                         scale: float = 1.0) -> jax.Array:
    """Integrated gradients (x − x₀) ∫₀¹ ∂f/∂x(x₀ + α(x − x₀)) dα with ``steps`` Gauss–Legendre
    nodes; ``baseline`` x₀ is zeros, an array broadcastable to the input, or ``"mean"`` (the
    batch mean). Attributions of a sample sum to f(x) − f(x₀) (completeness)."""
    x = jnp.asarray(get_leaf(batch, wrt))
    if baseline is None:
        x0 = jnp.zeros_like(x)
    elif isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline must be None, an array or 'mean', got {baseline!r}")
        m = sample_mask(batch)
        w = jnp.ones(x.shape[0]) if m is None else m.astype(x.dtype)
        w = w.reshape((-1,) + (1,) * (x.ndim - 1))
        x0 = jnp.broadcast_to(jnp.sum(w * x, 0) / jnp.maximum(jnp.sum(w), 1.0), x.shape)
    else:
        x0 = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    grad = _grad(model, params, batch, wrt, output, scale)
    total = _scan_sum(lambda aw: aw[1] * grad(x0 + aw[0] * (x - x0)), x, (
        jnp.asarray(0.5 * (nodes + 1.0), x.dtype), jnp.asarray(0.5 * weights, x.dtype)))
    return (x - x0) * total


def _scan_sum(fn, x, xs):
    """Σ fn(a) over the leading axis of ``xs`` (a ``lax.scan``), starting from zeros like x."""
    return jax.lax.scan(lambda acc, a: (acc + fn(a), None), jnp.zeros_like(x), xs)[0]


def smoothgrad(model: Model, params: Params, batch: Any, key: jax.Array, wrt: Path = "composition",
               sigma: float = 0.01, n: int = 16, output: str = "P", scale: float = 1.0) -> jax.Array:
    """SmoothGrad: the mean input gradient over ``n`` copies of the input with Gaussian noise
    of standard deviation ``sigma`` (input units)."""
    x = jnp.asarray(get_leaf(batch, wrt))
    grad = _grad(model, params, batch, wrt, output, scale)
    return _scan_sum(lambda k: grad(x + sigma * jax.random.normal(k, x.shape, x.dtype)), x,
                     jax.random.split(key, n)) / n


# --------------------------------------------------------------------------- composition simplex
def direction(composition: Any, add: int, remove: int | str | None = None) -> jax.Array:
    """Simplex direction adding one unit of element ``add`` (index), taken from element
    ``remove`` (index) or, with ``None``/``"others"``, from all others in proportion to their
    fractions. Components sum to 0. Adding at the expense of itself, or of others when
    there are none, moves nothing (zero vector)."""
    x = jnp.asarray(composition)
    e = jax.nn.one_hot(add, x.shape[-1], dtype=x.dtype)
    if remove is None or (isinstance(remove, str) and remove == "others"):
        rest = 1.0 - x[..., add:add + 1]
        safe = jnp.where(rest > 1e-12, rest, 1.0)
        return jnp.where(rest > 1e-12, (e - x) / safe, 0.0)
    if isinstance(remove, str):
        raise ValueError(f"remove must be an element index, None or 'others', got {remove!r}")
    return jnp.broadcast_to(e - jax.nn.one_hot(remove, x.shape[-1], dtype=x.dtype), x.shape)


def simplex_derivatives(grad: Any, composition: Any, host: int | None = None,
                        per: float = 0.01) -> jax.Array:
    """Directional derivatives of every element (last axis): the change of the output when
    ``per`` (default 0.01 = 1 at.%) of element X is added at the expense of the others
    (``host=None``) or of element ``host``. ``grad`` and ``composition`` are (..., n_el);
    a leading committee axis on ``grad`` is fine. The result is blind to the component of
    ``grad`` along (1, …, 1), which the data cannot determine."""
    g = jnp.asarray(grad)
    x = jnp.asarray(composition)
    n_el = x.shape[-1]
    if g.shape[-1] != n_el:
        raise ValueError(f"gradient has {g.shape[-1]} components, composition {n_el}")
    return per * jnp.stack([jnp.sum(g * direction(x, k, host), -1) for k in range(n_el)], -1)


def tangent(grad: Any) -> jax.Array:
    """Projection of composition gradients onto the simplex (subtract the component mean)."""
    g = jnp.asarray(grad)
    return g - jnp.mean(g, -1, keepdims=True)


# --------------------------------------------------------------------------- committees
def committee(fn: Callable[..., Any], params: Params, *args, **kwargs) -> Any:
    """``fn(member_params, *args, **kwargs)`` for every member of stacked ``params`` (vmap);
    outputs gain a leading member axis. ``fn`` is e.g. ``partial(input_gradients, model)``
    with params as its first positional argument."""
    return jax.vmap(lambda p: fn(p, *args, **kwargs))(params)


def committee_stats(values: Any, axis: int = 0) -> dict[str, jax.Array]:
    """Mean, standard deviation and sign agreement (fraction of members whose sign equals
    that of the mean, in [0, 1]) over the member ``axis``."""
    v = jnp.moveaxis(jnp.asarray(values), axis, 0)
    st = stats({"v": v})
    return {"mean": st["v_mean"], "std": jnp.sqrt(st["v_var"]),
            "sign_agreement": jnp.mean(jnp.sign(v) == jnp.sign(st["v_mean"])[None], 0)}


def gradient_correlation(grads: Any, extra: Any = None, mask: Any = None) -> jax.Array:
    """Pearson correlation matrix across samples between gradient components (columns of
    ``grads`` (n, k)) and optional ``extra`` columns (n, m), e.g. compositions or a spectral
    feature. Constant columns give NaN rows/columns. Jit-friendly; ``mask`` (n,) drops rows."""
    a = jnp.asarray(grads)
    a = a.reshape(a.shape[0], -1)
    if extra is not None:
        e = jnp.asarray(extra)
        a = jnp.concatenate([a, e.reshape(e.shape[0], -1).astype(a.dtype)], 1)
    w = jnp.ones(a.shape[0], a.dtype) if mask is None else jnp.asarray(mask, a.dtype)
    n = jnp.sum(w)
    mu = jnp.sum(w[:, None] * a, 0) / n
    c = (a - mu) * w[:, None]
    cov = c.T @ c / n
    sd = jnp.sqrt(jnp.diag(cov))
    return cov / (sd[:, None] * sd[None, :])


def cosine_similarity(a: Any, b: Any, axis: int = -1) -> jax.Array:
    """Cosine similarity along ``axis`` (NaN where a vector is zero)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    return jnp.sum(a * b, axis) / (jnp.linalg.norm(a, axis=axis) * jnp.linalg.norm(b, axis=axis))


# --------------------------------------------------------------------------- everything at once
def explain(model: Model, params: Params, batch: dict, composition: str = "composition",
            spectrum: str | None = "spectrum", output: str = "P", scale: float = 1.0,
            ig_steps: int = 16, smooth_n: int = 8, smooth_sigma: float = 0.05,
            key: jax.Array | None = None) -> dict[str, jax.Array]:
    """All interpretation outputs of a committee (stacked ``params``) on one dict batch, as
    one jittable function (``jax.jit(partial(explain, model), static_argnames=...)``).

    Returns committee ``*_mean``/``*_std`` and ``*_agree`` (sign agreement) of: ``grad``
    (composition gradient, output units per unit fraction), ``dilute`` (per 1 at.% at the
    expense of the others), ``saliency`` (spectrum gradient); ``ig_spectrum`` and
    ``smooth_spectrum`` (committee-mean integrated gradients from a zero spectrum and
    SmoothGrad with noise ``smooth_sigma``); ``corr`` (Pearson matrix across samples of the
    mean ``dilute`` derivatives with the compositions appended, 2 n_el × 2 n_el) and
    ``pred_mean``/``pred_std`` (output units).
    """
    key = jax.random.key(0) if key is None else key
    x = batch[composition]
    pred = jax.vmap(lambda p: scalar_fn(model, output, scale)(p, batch))(params)
    out: dict[str, jax.Array] = {"pred_mean": pred.mean(0), "pred_std": pred.std(0)}
    grads = lambda wrt: committee(  # noqa: E731
        lambda p: input_gradients(model, p, batch, wrt, output, scale), params)
    g = grads(composition)
    per_member = {"grad": g, "dilute": simplex_derivatives(g, x)}
    if spectrum is not None:
        per_member["saliency"] = grads(spectrum)
        out["ig_spectrum"] = committee(lambda p: integrated_gradients(
            model, p, batch, spectrum, None, ig_steps, output, scale), params).mean(0)
        out["smooth_spectrum"] = committee(lambda p: smoothgrad(
            model, p, batch, key, spectrum, smooth_sigma, smooth_n, output, scale), params).mean(0)
    for name, v in per_member.items():
        st = committee_stats(v)
        out.update({f"{name}_mean": st["mean"], f"{name}_std": st["std"],
                    f"{name}_agree": st["sign_agreement"]})
    out["corr"] = gradient_correlation(out["dilute_mean"], x, sample_mask(batch))
    return out

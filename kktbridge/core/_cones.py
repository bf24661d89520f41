r"""Differentiable Euclidean projections onto the cones of SCS's cone dictionary and their duals.

A cone program in SCS form constrains ``s ∈ K`` where ``K = K_1 × ... × K_p`` is described by a
*cone dictionary* whose blocks appear in ``s`` in this fixed order:

=========  ================================================================  ==================
key        cone ``K_i``                                                       dual ``K_i^*``
=========  ================================================================  ==================
``z``      zero cone ``{0}^k`` (``f`` is accepted as SCS's legacy alias)      free ``R^k``
``l``      nonnegative orthant ``R_+^k``                                      itself
``q``      second-order cones ``{(t, x): ‖x‖₂ ≤ t}``, list of sizes           itself
``s``      PSD cones, list of orders ``n`` (vectors of length ``n(n+1)/2``)   itself
``ep``     primal exponential cones ``cl{(x, y, z): y>0, y e^{x/y} ≤ z}``     ``ed``
``ed``     dual exponential cones ``cl{(u,v,w): u<0, -u e^{v/u} ≤ e w}``      ``ep``
``p``      power cones ``{(x,y,z): x^α y^{1-α} ≥ |z|, x,y ≥ 0}``, list of α   ``α → -α``
=========  ================================================================  ==================

A negative ``α`` in ``p`` denotes the dual power cone ``{(u,v,w): (u/|α|)^{|α|}(v/(1-|α|))^{1-|α|}
≥ |w|, u,v ≥ 0}``. PSD blocks use SCS's vectorisation: the lower triangle of the symmetric
matrix, column by column, with off-diagonal entries multiplied by ``√2`` (so that
``vec(X)ᵀvec(Y) = tr(XY)`` and the projection commutes with ``vec``). The box cone (``bu``/``bl``)
and the complex PSD cone (``cs``) are not supported.

Projections are computed block by block (runs of equal-size blocks are ``vmap``-ed) and are
differentiable in forward and reverse mode:

* zero / free / nonnegative / second-order: closed forms left to autodiff (with "double-where"
  guards so that unused branches never inject NaN into gradients);
* PSD: ``Π(X) = V diag(λ₊) Vᵀ`` from ``eigh``, with a :func:`jax.custom_jvp` implementing the
  closed-form Jacobian ``Ẋ ↦ V (Γ ∘ (Vᵀ Ẋ V)) Vᵀ``, ``Γ_ij = (λ_i⁺ - λ_j⁺)/(λ_i - λ_j)``
  (``= 1[λ_i > 0]`` when ``λ_i = λ_j``), which stays finite at repeated eigenvalues;
* exponential: Friberg's (2021) reduction to a scalar root ``ρ`` of
  ``h(ρ) = ((ρ-1)x₀ + y₀)e^ρ - (x₀ - ρy₀)e^{-ρ} - (ρ² - ρ + 1)z₀`` (bisection on a guaranteed
  bracket, run on ``stop_gradient``-ed data), then ``Π(v) = ((ρ-1)x₀+y₀)/(ρ²-ρ+1) · (ρ, 1, e^ρ)``;
  ``ρ`` is differentiated by the implicit function theorem on ``h(ρ, v) = 0``;
* power: the root ``r ∈ [0, |z₀|]`` of ``x₁(r)^α x₂(r)^{1-α} = r`` with
  ``x_i(r) = ½(x_{0i} + √(x_{0i}² + 4α_i r(|z₀| - r)))`` (Hien, 2015), bisection plus implicit
  differentiation, then ``Π(v) = (x₁(r), x₂(r), sign(z₀) r)``.

Dual cones use Moreau's decomposition ``v = Π_K(v) - Π_{K^*}(-v)``, i.e. ``Π_{K^*}(v) = v + Π_K(-v)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, cast

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.core._implicit import implicit_solution

__all__ = [
    "ConeSpec",
    "Cone",
    "CONES",
    "ALL_CONE_KINDS",
    "cone_blocks",
    "parse_cone",
    "cone_dim",
    "psd_dim",
    "cone_projection",
    "BlockJacobian",
    "projection_jacobian_blocks",
    "project_soc",
    "project_psd",
    "project_exp",
    "project_exp_dual",
    "project_pow",
    "psd_vec",
    "psd_mat",
]

_UNSUPPORTED = {"bu": "box cone", "bl": "box cone", "cs": "complex PSD cone"}


class ConeSpec(NamedTuple):
    """Normalised, hashable cone dictionary (block order as in SCS).

    Attributes:
      z: dimension of the zero cone.
      l: dimension of the nonnegative orthant.
      q: sizes of the second-order cones.
      s: orders of the PSD cones.
      ep: number of primal exponential cones.
      ed: number of dual exponential cones.
      p: power-cone parameters (negative = dual power cone).
    """

    z: int = 0
    l: int = 0
    q: tuple = ()
    s: tuple = ()
    ep: int = 0
    ed: int = 0
    p: tuple = ()

    @property
    def dim(self) -> int:
        return cone_dim(self)

    def as_dict(self) -> dict:
        """SCS cone dictionary (only non-empty entries)."""
        out: dict[str, Any] = {}
        for k, v in self._asdict().items():
            if (isinstance(v, tuple) and v) or (not isinstance(v, tuple) and v):
                out[k] = list(v) if isinstance(v, tuple) else int(v)
        return out


def _count(key: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"cone: entry {key!r} must be a nonnegative integer, got {value!r}")
    return int(value)


def _sizes(key: str, value: Any, minimum: int) -> tuple:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return _sizes(key, [value], minimum)  # SCS accepts a scalar for a single block
    try:
        items = list(cast(Iterable, value))  # anything else must iterate (TypeError below)
    except TypeError:
        raise ValueError(f"cone: entry {key!r} must be a list of integers, got {value!r}") from None
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"cone: entry {key!r} must hold integers >= {minimum}, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _alphas(key: str, value: Any) -> tuple:
    out = []
    items: Any = [value] if np.isscalar(value) else value
    for a in items:
        try:
            a = float(a)
        except (TypeError, ValueError):
            raise ValueError(f"cone: entry {key!r} must hold numbers in [-1, 1], got {a!r}") from None
        if not (-1.0 <= a <= 1.0) or a == 0.0 or not math.isfinite(a):
            raise ValueError(f"cone: power-cone parameter must lie in [-1, 1] and be nonzero, got {a!r}")
        out.append(a)
    return tuple(out)


#: Legacy key spellings: SCS accepts ``f`` (free, i.e. equality rows) for the zero cone ``z``.
_ALIASES = {"f": "z"}


def _entry(cone: Mapping, key: str) -> Any:
    """The dictionary's value for ``key``, with its aliases merged (counts add up)."""
    value = cone.get(key, 0 if key in _COUNT_KEYS else ())
    for alias, target in _ALIASES.items():
        if target == key and alias in cone:
            value = _count(key, value) + _count(alias, cone[alias])
    return value


def parse_cone(cone: Any, m: Optional[int] = None) -> ConeSpec:
    """Validate an SCS cone dictionary and return its :class:`ConeSpec`.

    Args:
      cone: mapping with keys among ``z, f, l, q, s, ep, ed, p`` (or a :class:`ConeSpec`).
      m: if given, the total dimension must equal ``m`` (the number of rows of ``A``).

    Raises:
      ValueError: unknown or unsupported keys, malformed entries, or sizes not adding up to ``m``;
        the message names ``cone``.
    """
    if isinstance(cone, ConeSpec):
        spec = cone
    else:
        if not isinstance(cone, Mapping):
            raise ValueError(f"cone: expected a dict such as {{'l': 3, 'q': [3]}}, got {type(cone).__name__}")
        for key in cone:
            if key in _UNSUPPORTED:
                raise ValueError(f"cone: the {_UNSUPPORTED[key]} ({key!r}) is not supported yet")
            if key not in _KEYS:
                raise ValueError(f"cone: unknown key {key!r}; expected keys among {list(_KEYS)}")
        spec = ConeSpec(**{c.key: c.parse(c.key, _entry(cone, c.key)) for c in CONES})
    if m is not None and cone_dim(spec) != m:
        raise ValueError(
            f"cone: block sizes add up to {cone_dim(spec)} but A has {m} rows "
            f"(z + l + sum(q) + sum(n(n+1)/2 for s) + 3*(ep + ed + len(p)) must equal A.shape[0])"
        )
    return spec


def psd_dim(n: int) -> int:
    """Length ``n(n+1)/2`` of the vectorised lower triangle of an order-``n`` PSD block."""
    return n * (n + 1) // 2


def cone_dim(spec: ConeSpec) -> int:
    """Total dimension of the product cone."""
    return sum(size for _, size, _ in cone_blocks(spec))


# --------------------------------------------------------------------------------------------
# Elementary cones
# --------------------------------------------------------------------------------------------


def _safe_norm(x: jax.Array) -> jax.Array:
    """``‖x‖₂`` with a finite (zero) gradient at ``x = 0``."""
    sq = jnp.sum(x * x)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def project_soc(v: jax.Array) -> jax.Array:
    """Projection onto the second-order cone ``{(t, x): ‖x‖ ≤ t}`` (``t = v[0]``).

    ``Π(t, x) = (t, x)`` if ``‖x‖ ≤ t``; ``0`` if ``‖x‖ ≤ -t``; else ``½(1 + t/‖x‖)(‖x‖, x)``.
    """
    t, x = v[0], v[1:]
    nx = _safe_norm(x)
    outside = nx > jnp.abs(t)
    nx_safe = jnp.where(outside, nx, 1.0)
    coef = 0.5 * (1.0 + t / nx_safe)
    proj = jnp.concatenate([jnp.reshape(coef * nx_safe, (1,)), coef * x])
    return jnp.where(nx <= t, v, jnp.where(nx <= -t, jnp.zeros_like(v), proj))


def _tril_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row/column indices of the lower triangle, column by column (SCS order)."""
    cols, rows = np.triu_indices(n)  # (j, i) with i >= j in row-major order of the upper triangle
    return rows, cols


def psd_vec(X: jax.Array) -> jax.Array:
    """SCS vectorisation of a symmetric ``(n, n)`` matrix: lower triangle column-wise, ``√2`` off-diagonal."""
    n = X.shape[-1]
    rows, cols = _tril_indices(n)
    scale = np.where(rows == cols, 1.0, math.sqrt(2.0)).astype(X.dtype)  # NumPy float64 would promote float32
    return X[..., rows, cols] * scale


def psd_mat(v: jax.Array, n: int) -> jax.Array:
    """Inverse of :func:`psd_vec`: the symmetric ``(n, n)`` matrix of an SCS PSD vector."""
    rows, cols = _tril_indices(n)
    scale = np.where(rows == cols, 1.0, 1.0 / math.sqrt(2.0)).astype(v.dtype)
    vals = v * scale
    X = jnp.zeros(v.shape[:-1] + (n, n), v.dtype)
    X = X.at[..., rows, cols].set(vals)
    return X.at[..., cols, rows].set(vals)


def _psd_gamma(w: jax.Array) -> jax.Array:
    """Divided differences of ``max(·, 0)`` at the eigenvalues: finite at repeated eigenvalues."""
    wp = jnp.maximum(w, 0.0)
    dw = w[:, None] - w[None, :]
    scale = jnp.maximum(jnp.max(jnp.abs(w), initial=0.0), 1.0)
    distinct = jnp.abs(dw) > 1e-12 * scale
    ratio = (wp[:, None] - wp[None, :]) / jnp.where(distinct, dw, 1.0)
    # Equal eigenvalues: derivative of max(·, 0), with 1/2 at the kink (mean of one-sided ones).
    same = 0.5 * ((w[:, None] > 0).astype(w.dtype) + (w[None, :] > 0).astype(w.dtype))
    return jnp.where(distinct, ratio, same)


@jax.custom_jvp
def _project_psd_matrix(X: jax.Array) -> jax.Array:
    w, V = jnp.linalg.eigh(X)
    return (V * jnp.maximum(w, 0.0)) @ V.T


@_project_psd_matrix.defjvp
def _project_psd_matrix_jvp(primals, tangents):
    (X,), (dX,) = primals, tangents
    w, V = jnp.linalg.eigh(X)
    out = (V * jnp.maximum(w, 0.0)) @ V.T
    dXs = 0.5 * (dX + dX.T)
    return out, V @ (_psd_gamma(w) * (V.T @ dXs @ V)) @ V.T


def project_psd(v: jax.Array, n: int) -> jax.Array:
    """Projection onto the PSD cone of order ``n`` in SCS's vectorisation (see :func:`psd_vec`)."""
    return psd_vec(_project_psd_matrix(psd_mat(v, n)))


# --- exponential cone ------------------------------------------------------------------------

#: Bracket cap for ``ρ = x/y`` of the projection; ``e^{±300}`` stays finite in float64.
_RHO_CAP = 300.0
_BISECT_ITERS = 110  # halves a width-600 bracket below float64 resolution


def _exp_h(rho: jax.Array, v: jax.Array) -> jax.Array:
    """Friberg's root function (times a positive factor); increasing on the search bracket."""
    x0, y0, z0 = v[0], v[1], v[2]
    return ((rho - 1.0) * x0 + y0) * jnp.exp(rho) - (x0 - rho * y0) * jnp.exp(-rho) - (rho * (rho - 1.0) + 1.0) * z0


def _bisect(fun: Callable, lo: jax.Array, hi: jax.Array, iters: int) -> jax.Array:
    """Root of an increasing-through-zero scalar function on ``[lo, hi]`` by bisection."""

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        neg = fun(mid) < 0
        return jnp.where(neg, mid, lo), jnp.where(neg, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (lo + hi)


def _exp_rho(v: jax.Array) -> jax.Array:
    """Root ``ρ`` of Friberg's ``h`` for a point in the non-trivial region (``x₀ > 0`` or ``y₀ > 0``).

    The bracket is where both the primal candidate ``((ρ-1)x₀+y₀)/(ρ²-ρ+1)·(ρ,1,e^ρ)`` and the
    polar one have positive scale: ``ρ > 1 - y₀/x₀`` (if ``x₀ > 0``) and ``ρ < x₀/y₀`` (if ``y₀ > 0``).
    """
    x0, y0 = v[0], v[1]
    lo = jnp.where(x0 > 0, 1.0 - y0 / jnp.where(x0 > 0, x0, 1.0), -_RHO_CAP)
    hi = jnp.where(y0 > 0, x0 / jnp.where(y0 > 0, y0, 1.0), _RHO_CAP)
    lo = jnp.clip(lo, -_RHO_CAP, _RHO_CAP)
    hi = jnp.clip(hi, lo, _RHO_CAP)
    vs = jax.lax.stop_gradient(v)
    rho = _bisect(lambda r: _exp_h(r, vs), jax.lax.stop_gradient(lo), jax.lax.stop_gradient(hi), _BISECT_ITERS)
    # One scalar linear solve: dρ = -(∂h/∂v) dv / (∂h/∂ρ).
    return implicit_solution(_exp_h, rho, (v,), solve="lstsq")


def project_exp(v: jax.Array) -> jax.Array:
    """Projection onto the primal exponential cone ``cl{(x,y,z): y>0, y e^{x/y} ≤ z}``.

    Every candidate below lies in ``K``; the projection is the closest one (so the case analysis
    is exact without tolerances): ``v`` itself when ``v ∈ K``; ``0`` (``v`` in the polar cone);
    ``(min(x,0), 0, max(z,0))`` (projection onto the face ``y = 0``, exact when ``x, y ≤ 0``);
    and the boundary point from Friberg's root ``ρ`` (all other points).
    """
    dtype = v.dtype
    x, y, z = v[0], v[1], v[2]
    # Candidate A: face y = 0.
    cand_face = jnp.stack([jnp.minimum(x, 0.0), jnp.zeros((), dtype), jnp.maximum(z, 0.0)])
    # Candidate B: keep (x, y), raise z onto the cone (feasible when y > 0).
    ypos = y > 0
    ys = jnp.where(ypos, y, 1.0)
    xs = jnp.where(ypos, x, 0.0)
    zb = ys * jnp.exp(jnp.minimum(xs / ys, 600.0))
    cand_lift = jnp.stack([xs, ys, jnp.maximum(z, zb)])
    # Candidate C: Friberg's boundary point, computed at a safe dummy point when not applicable
    # so that unused branches stay finite in value and gradient.
    nontrivial = (x > 0) | (y > 0)
    dummy = jnp.array([1.0, 1.0, 0.0], dtype)
    vr = jnp.where(nontrivial, v, dummy)
    rho = _exp_rho(vr)
    lin = (rho - 1.0) * vr[0] + vr[1]
    quad = rho * (rho - 1.0) + 1.0
    cand_root = (lin / quad) * jnp.stack([rho, jnp.ones((), dtype), jnp.exp(rho)])
    zero = jnp.zeros(3, dtype)
    cands = jnp.stack([cand_lift, cand_face, cand_root, zero])
    dist = jnp.sum((cands - v) ** 2, axis=1)
    valid = jnp.stack([ypos, jnp.bool_(True), nontrivial & (lin > 0), jnp.bool_(True)])
    dist = jnp.where(valid & jnp.isfinite(dist), dist, jnp.inf)
    k = jnp.argmin(jax.lax.stop_gradient(dist))
    return jnp.select([k == 0, k == 1, k == 2], [cand_lift, cand_face, cand_root], zero)


def project_exp_dual(v: jax.Array) -> jax.Array:
    """Projection onto the dual exponential cone (Moreau: ``Π_{K*}(v) = v + Π_K(-v)``)."""
    return v + project_exp(-v)


# --- power cone ------------------------------------------------------------------------------


def _pow_xi(r: jax.Array, v: jax.Array, alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
    az = jnp.abs(v[2])
    gap = jnp.maximum(az - r, 0.0) * r

    def xi(x0, a):
        return 0.5 * (x0 + jnp.sqrt(x0 * x0 + 4.0 * a * gap))

    return xi(v[0], alpha), xi(v[1], 1.0 - alpha)


def _pow_phi(r: jax.Array, v: jax.Array, alpha: jax.Array) -> jax.Array:
    x1, x2 = _pow_xi(r, v, alpha)
    return jnp.exp(alpha * jnp.log(x1) + (1.0 - alpha) * jnp.log(x2)) - r


def project_pow(v: jax.Array, alpha: Any) -> jax.Array:
    """Projection onto the power cone ``{(x,y,z): x^α y^{1-α} ≥ |z|, x, y ≥ 0}``, ``0 < α < 1``.

    ``v`` itself if it lies in ``K``, ``0`` if ``-v ∈ K*``, else ``(x₁(r), x₂(r), sign(z₀) r)`` with
    ``r`` the root in ``(0, |z₀|)`` of ``x₁(r)^α x₂(r)^{1-α} = r`` (decreasing minus increasing).
    """
    alpha = jnp.asarray(alpha, v.dtype)
    x, y, z = v[0], v[1], v[2]
    tiny = jnp.finfo(v.dtype).tiny

    def geo(a, b, w):  # a^w b^(1-w) for a, b >= 0 with safe logs
        ok = (a > 0) & (b > 0)
        val = jnp.exp(w * jnp.log(jnp.where(ok, a, 1.0)) + (1 - w) * jnp.log(jnp.where(ok, b, 1.0)))
        return jnp.where(ok, val, 0.0)

    # Relative slack 1e-13: for points within round-off of the boundary the root below is
    # ill-conditioned (x_i(r) depends on sqrt(|z| - r)), while returning v errs by <= 1e-13 |z|.
    slack = 1.0 - 1e-13
    in_k = (x >= 0) & (y >= 0) & (geo(x, y, alpha) >= slack * jnp.abs(z))
    in_polar = (x <= 0) & (y <= 0) & (geo(-x / alpha, -y / (1.0 - alpha), alpha) >= slack * jnp.abs(z))
    trivial = in_k | in_polar
    vr = jnp.where(trivial, jnp.array([0.0, 0.0, 1.0], v.dtype), v)
    vs = jax.lax.stop_gradient(vr)
    a_s = jax.lax.stop_gradient(alpha)
    az = jnp.abs(vs[2])

    def phi_stopped(r):
        x1, x2 = _pow_xi(r, vs, a_s)
        return -geo(x1, x2, a_s) + r  # increasing through zero on [0, |z|]

    r = _bisect(phi_stopped, jnp.zeros_like(az), az, _BISECT_ITERS)
    r = jnp.clip(r, tiny, az)
    r = implicit_solution(_pow_phi, r, (vr, alpha), solve="lstsq")
    x1, x2 = _pow_xi(r, vr, alpha)
    cand = jnp.stack([x1, x2, jnp.sign(vr[2]) * r])
    return jnp.where(in_k, v, jnp.where(in_polar, jnp.zeros_like(v), cand))


def _dual_pow(v: jax.Array, a: jax.Array) -> jax.Array:
    """Dual power cone by Moreau's identity ``Π_{K*}(v) = v + Π_K(-v)``."""
    return v + project_pow(-v, a)


# --------------------------------------------------------------------------------------------
# Whole cone dictionaries
# --------------------------------------------------------------------------------------------


def _runs(blocks) -> list[tuple[Any, tuple, int]]:
    """Consecutive runs ``(cone, (size, param), count)`` of equal blocks (each run: one vmap)."""
    out: list = []
    for cone, size, param in blocks:
        if out and out[-1][0] is cone and out[-1][1] == (size, param):
            out[-1] = (cone, (size, param), out[-1][2] + 1)
        else:
            out.append((cone, (size, param), 1))
    return out


def _project_blocks(v: jax.Array, spec: ConeSpec, dual: bool) -> jax.Array:
    parts = []
    i = 0
    for cone, (size, param), count in _runs(cone_blocks(spec)):
        fun = cone.project_dual if dual else cone.project
        seg = v[i : i + size * count].reshape(count, size)
        parts.append(jax.vmap(lambda u, fun=fun, param=param: fun(u, param))(seg).reshape(-1))
        i += size * count
    if not parts:
        return v
    return jnp.concatenate(parts)


class BlockJacobian(NamedTuple):
    """``DΠ`` on one run of ``count`` equal blocks of ``size`` rows starting at row ``start``."""

    start: int
    count: int
    size: int
    blocks: jax.Array  # (count, size, size)


def projection_jacobian_blocks(cone: Any, dual: bool = False) -> Callable[[jax.Array], list[BlockJacobian]]:
    """Return ``v ↦`` the Jacobian of :func:`cone_projection` at ``v``, block by block.

    ``DΠ`` is block diagonal (one block per cone block; zero and orthant rows are blocks of one),
    so it is computed from each block's own projection: ``Σ size²`` entries and one ``jacfwd`` per
    run of equal blocks, instead of ``m`` JVPs of the whole projection. Where a projection is not
    differentiable (an orthant row at 0, an SOC block at the cone's tip) the entries are those
    of JAX's derivative rules, exactly what JVPs of :func:`cone_projection` give.
    """
    spec = parse_cone(cone)
    runs = _runs(cone_blocks(spec))

    def jac(v: jax.Array) -> list[BlockJacobian]:
        out = []
        i = 0
        for c, (size, param), count in runs:
            fun = c.project_dual if dual else c.project
            seg = v[i : i + size * count].reshape(count, size)
            blocks = jax.vmap(jax.jacfwd(lambda u, fun=fun, param=param: fun(u, param)))(seg)
            out.append(BlockJacobian(i, count, size, blocks))
            i += size * count
        return out

    return jac


# --------------------------------------------------------------------------------------------
# The cones as data
# --------------------------------------------------------------------------------------------


class Cone(NamedTuple):
    """One kind of cone of the SCS cone dictionary, as a record (see :data:`CONES`).

    Attributes:
      kind: the name adapters use (their ``CONES`` declaration and translation tables).
      key: the cone-dictionary key, also the :class:`ConeSpec` field.
      parse: ``(key, value) -> entry``: validate and normalise the dictionary's value.
      blocks: ``entry -> ((size, param), ...)``: the blocks of ``s`` it describes, in order;
        ``param`` is whatever the projections need (PSD order, power-cone ``α``) or ``None``.
      project: ``(u, param) -> Π_K(u)`` for one block ``u`` of length ``size``.
      project_dual: ``(u, param) -> Π_{K*}(u)``.
    """

    kind: str
    key: str
    parse: Callable[[str, Any], Any]
    blocks: Callable[[Any], tuple]
    project: Callable[[jax.Array, Any], jax.Array]
    project_dual: Callable[[jax.Array, Any], jax.Array]


def _one_block(count: int) -> tuple:
    return ((count, None),) if count else ()


def _pow_block(u: jax.Array, alpha: float, dual: bool) -> jax.Array:
    """Power cone of parameter ``α`` (``α < 0``: the dual power cone of ``|α|``), or its dual."""
    a = jnp.asarray(abs(alpha), u.dtype)
    return _dual_pow(u, a) if (alpha < 0) != dual else project_pow(u, a)


#: The cones, in the order of their blocks in ``s`` (SCS's order). Adding a cone is one record
#: here (plus a field of :class:`ConeSpec`) and, in each adapter that supports it, one entry of
#: its translation table and its ``CONES`` declaration.
CONES: tuple[Cone, ...] = (
    Cone("zero", "z", _count, _one_block, lambda u, _: jnp.zeros_like(u), lambda u, _: u),  # dual: free
    Cone("nonnegative", "l", _count, _one_block, lambda u, _: jnp.maximum(u, 0.0), lambda u, _: jnp.maximum(u, 0.0)),
    Cone("soc", "q", lambda k, v: _sizes(k, v, 1), lambda q: tuple((k, None) for k in q),
         lambda u, _: project_soc(u), lambda u, _: project_soc(u)),
    Cone("psd", "s", lambda k, v: _sizes(k, v, 1), lambda s: tuple((psd_dim(n), n) for n in s),
         project_psd, project_psd),
    Cone("exp", "ep", _count, lambda k: ((3, None),) * k, lambda u, _: project_exp(u), lambda u, _: project_exp_dual(u)),
    Cone("exp_dual", "ed", _count, lambda k: ((3, None),) * k, lambda u, _: project_exp_dual(u), lambda u, _: project_exp(u)),
    Cone("power", "p", _alphas, lambda p: tuple((3, a) for a in p),
         lambda u, a: _pow_block(u, a, dual=False), lambda u, a: _pow_block(u, a, dual=True)),
)
assert tuple(c.key for c in CONES) == ConeSpec._fields, "CONES and ConeSpec must list the same keys in order"
_COUNT_KEYS = tuple(c.key for c in CONES if c.parse is _count)
#: Every cone kind: what an adapter that takes the whole cone dictionary declares as its ``CONES``.
ALL_CONE_KINDS = frozenset(c.kind for c in CONES)
_KEYS = tuple(c.key for c in CONES) + tuple(_ALIASES)


def cone_blocks(spec: ConeSpec):
    """The blocks of ``s`` in order, as ``(cone record, size, param)``."""
    for cone in CONES:
        for size, param in cone.blocks(getattr(spec, cone.key)):
            yield cone, size, param


def cone_projection(cone: Any, dual: bool = False) -> Callable[[jax.Array], jax.Array]:
    """Return ``v ↦ Π_K(v)`` (or ``Π_{K*}(v)`` with ``dual=True``) for a whole cone dictionary.

    Args:
      cone: SCS cone dictionary (static) or :class:`ConeSpec`.
      dual: project onto the dual cone ``K*`` (zero cone → free, ``ep`` ↔ ``ed``, ``α → -α``).

    Returns:
      A pure, jit/vmap-able, differentiable function of a vector of length ``cone_dim``.

    Example::

        proj = cone_projection({"l": 2, "q": [3]})
        proj(jnp.array([-1.0, 2.0, 0.0, 3.0, 4.0]))  # [0, 2, 2.5, 1.5, 2]
    """
    spec = parse_cone(cone)
    m = cone_dim(spec)

    def proj(v: jax.Array) -> jax.Array:
        v = jnp.asarray(v)
        if v.shape != (m,):
            raise ValueError(f"v: expected shape ({m},) for this cone, got {tuple(v.shape)}")
        if not jnp.issubdtype(v.dtype, jnp.floating):
            v = v.astype(jnp.result_type(float))
        return _project_blocks(v, spec, dual)

    return proj

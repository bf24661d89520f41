r"""``CvxpyLayer``: differentiable cvxpy problems, a ``jit``/``vmap``-composable cvxpylayers.

A DPP-compliant cvxpy problem with parameters ``θ`` is canonicalised **once**, at construction,
into cvxpy's parametrised solver data (``ParamConeProg``): sparse tensors that map the flat
parameter vector ``θ̄ = (vec θ, 1)`` affinely to the solver's problem data,

.. math::

   P(θ) = T_P\,θ̄, \qquad q(θ) = T_q\,θ̄, \qquad [A(θ)\;b(θ)] = T_A\,θ̄,

where the constraints read ``A x + b ∈ K`` (``K`` = zero cone × nonnegative orthant × second-order
cones × PSD cones × exponential cones × power cones). The tensors stay sparse: each call applies
them with a gather and :func:`jax.ops.segment_sum` (one scatter-add of ``nnz(T)`` terms), never a
dense ``(data × parameters)`` product. The problem data are then handed to a differentiable bridge:

* **QP path** (default when the problem is a QP, solved through :func:`~kktbridge.solve_qp` by its
  ``solver="auto"`` choice -- DAQP for dense/small, OSQP for large sparse -- or by OSQP when
  ``solver_args`` carry solver settings):
  ``min ½xᵀPx + qᵀx s.t. A_z x = -b_z, -A_l x ≤ b_l`` (zero rows ``z``, nonnegative rows ``l``);
* **conic path** (default otherwise, SCS through :func:`~kktbridge.bridges._conic.solve_conic`):
  ``min qᵀx s.t. (-A) x + s = b, s ∈ K``, with any quadratic objective rewritten as a second-order
  cone by cvxpy's conic canonicalisation.

On either path, when the problem is large and sparse (:func:`use_sparse`: ``n + m ≥``
:data:`SPARSE_MIN_SIZE`, a constraint matrix -- and a QP's ``P`` -- at most
:data:`SPARSE_MAX_DENSITY` full; ``CvxpyLayer(..., sparse=True/False)`` overrides), ``A`` (and ``P``)
stay sparse: their values are computed on cvxpy's canonical pattern (the union over parameter values
of the entries ``T_A``, ``T_P`` can fill) and passed with that static pattern, so the solver gets
CSC and the backward a sparse LU, with memory ``O(nnz)``.

Both bridges differentiate the solution by the implicit function theorem, so the layer is
differentiable w.r.t. every parameter in forward and reverse mode, under ``jit`` and ``vmap``;
batches (leading parameter axes) are ``jax.vmap``-ed over the bridge and reach the solver in one
host call. Variable values are slices of the solver's ``x`` (reshaped in column-major order, as
cvxpy stores them); constraint duals are slices of the conic dual ``y`` (on the QP path
``y = (ν, λ)``, the equality and inequality multipliers, as cvxpy's own OSQP interface reports
them), which is exactly cvxpy's ``constraint.dual_value`` convention.

Outputs are primal variables and constraint dual variables (``con.dual_variables[k]``, as in
cvxpylayers); cvxpy's map from the solver's ``y`` to each dual variable (slicing, reshaping,
de-interleaving cones) is traced once at construction and applied as a gather.

Supported: any DPP problem cvxpy can canonicalise to the cones above; parameters with the
``symmetric`` / ``PSD`` / ``NSD`` attribute (cvxpy reduces them to their upper triangle, so the
lower triangle of the value passed is ignored and gets zero gradient, as in cvxpylayers);
``cp.quad_form(x, P)`` with a parameter-dependent PSD/NSD ``P`` (``P``, ``P + Q``, ``-P``) in the
objective of a QP, on the QP path (``solver="osqp"`` or cvxpylayers' ``"MOREAU"``; cvxpy's
``quad_form_dpp_scope``). Everywhere else (in a constraint, on the conic path, with the default
solver, which like cvxpylayers' is conic) cvxpy would freeze ``P``'s current value into constant
data, so the layer refuses it at construction with a ``ValueError`` naming the expression;
``cp.sum_squares(L.T @ x)`` with a parameter ``L`` is the portable form. As a last guard, a
parameter that does not reach the canonical data is an error. ``cp.sum_squares(L @ x - b)`` with
parameters ``L, b`` works on both paths; geometric programs (``gp=True``) through cvxpy's DGP→DCP
reduction (parameters enter as ``log θ``, variables leave as ``exp``). Not supported: complex
variables/parameters, variables or parameters with ``diag`` or ``sparsity`` attributes, the
``PowConeND`` cone, duals of PSD constraints with several cones.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.adapters import get_adapter
from kktbridge.core._checks import is_concrete, x64_enabled
from kktbridge.core._cones import psd_dim

__all__ = ["CvxpyLayer"]

_SYM_ATTRS = ("symmetric", "PSD", "NSD")


class _SparseMap(NamedTuple):
    """A sparse linear map ``θ̄ ↦ y``, ``y_r = Σ_k vals_k θ̄_{cols_k}`` over ``rows_k = r``.

    Stored as host NumPy index/value arrays (static constants of the traced computation).
    """

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    size: int

    def rows_slice(self, lo: int, hi: int) -> "_SparseMap":
        """The sub-map producing outputs ``lo:hi`` (so that slice depends only on its own parameters)."""
        keep = (self.rows >= lo) & (self.rows < hi)
        return _SparseMap(self.rows[keep] - lo, self.cols[keep], self.vals[keep], hi - lo)

    def __call__(self, theta: jax.Array) -> jax.Array:
        if self.vals.size == 0:
            return jnp.zeros((self.size,), theta.dtype)
        terms = jnp.asarray(self.vals, theta.dtype) * theta[self.cols]
        return jax.ops.segment_sum(terms, jnp.asarray(self.rows), num_segments=self.size)


def _tensor_map(tensor: Any, target: np.ndarray, size: int) -> _SparseMap:
    """Compose a scipy tensor ``(K, p+1)`` with the row relabelling ``k ↦ target[k]``."""
    import scipy.sparse as sp

    coo = sp.coo_array(tensor)
    keep = coo.data != 0
    rows = np.asarray(target, dtype=np.int64)[coo.row[keep]]
    return _SparseMap(rows.astype(np.int32), coo.col[keep].astype(np.int32), coo.data[keep].astype(np.float64), int(size))


def _matrix_map(reduced: Any, n_rows: int, n_cols: int) -> Optional[_SparseMap]:
    """Map ``θ̄`` to the column-major flattening of an ``(n_rows, n_cols)`` matrix.

    ``reduced`` is cvxpy's ``ReducedMat``: ``reduced_mat @ θ̄`` gives the CSC data of the matrix
    whose pattern is ``problem_data_index = (indices, indptr, shape)``; without an index the
    tensor maps ``θ̄`` to the column-major flattening directly.
    """
    reduced.cache()
    if reduced.matrix_data is None and reduced.reduced_mat is None:
        return None
    if reduced.problem_data_index is None:
        mat = reduced.reduced_mat
        return _tensor_map(mat, np.arange(mat.shape[0]), n_rows * n_cols)
    indices, indptr, shape = reduced.problem_data_index
    if tuple(int(s) for s in shape) != (n_rows, n_cols):
        raise RuntimeError(f"unexpected cvxpy problem-data shape {tuple(shape)}, expected {(n_rows, n_cols)}")
    cols = np.repeat(np.arange(n_cols), np.diff(indptr))
    target = np.asarray(indices) + n_rows * cols
    return _tensor_map(reduced.reduced_mat, target, n_rows * n_cols)


class _ParamSlot(NamedTuple):
    """Where one user parameter lands in ``θ̄``."""

    shape: tuple
    start: int
    size: int
    triu: Optional[tuple]  # upper-triangle indices for symmetric/PSD/NSD parameters
    log: bool  # GP parameter: enters as log θ


class _VarSlot(NamedTuple):
    shape: tuple
    start: int
    size: int
    triu: Optional[tuple]  # symmetric variable stored as its upper triangle
    exp: bool  # GP variable: leaves as exp(x)


class _DualSlot(NamedTuple):
    shape: tuple
    start: int
    size: int
    kind: str  # "reshape" (zero/nonneg), "flat" (SOC/exp/pow: the cone's dual vector), "psd"
    order: int  # matrix order for "psd"


def _rows(cp: Any, con: Any) -> int:
    """Rows of the solver's ``s`` taken by a canonical constraint (a PSD one: its SCS triangle)."""
    return psd_dim(con.shape[0]) if type(con) is cp.constraints.PSD else int(con.size)


def _psd_types(cp: Any) -> tuple:
    # cvxpy >= 1.8 lowers PSD constraints to SvecPSD (already in SCS's svec form).
    svec = getattr(cp.constraints, "SvecPSD", None)
    return (cp.constraints.PSD,) if svec is None else (cp.constraints.PSD, svec)


def _name(obj: Any) -> str:
    try:
        return f"{type(obj).__name__} {obj.name()!r}"
    except Exception:  # constraints and expressions have no name()
        return f"{type(obj).__name__} `{obj}`"


def _dcp_diagnosis(problem: Any, dpp: bool) -> str:
    """Name the first objective/constraint that breaks DCP (``dpp=False``) or DPP (``dpp=True``)."""
    parts = [("objective", problem.objective)] + [(f"constraint {i}", c) for i, c in enumerate(problem.constraints)]
    for label, expr in parts:
        ok = expr.is_dcp(dpp=True) if dpp else expr.is_dcp()
        if not ok:
            return f"{label} `{expr}`"
    return "the problem"


class _SparseA(NamedTuple):
    """``A`` on cvxpy's canonical pattern: ``values = data_map(θ̄)`` at ``coords``."""

    data_map: _SparseMap
    coords: Any  # kktbridge.bridges._sparse.Coords


class _Canon(NamedTuple):
    path: str  # "qp" or "conic"
    n: int
    m: int
    n_zero: int
    cone: dict
    p_map: Optional[_SparseMap]
    q_map: _SparseMap
    ab_map: _SparseMap
    total: int
    sparse_a: Optional[_SparseA] = None  # set when A is kept sparse (either path)
    sparse_p: Optional[_SparseA] = None  # QP path with sparse A and a quadratic objective: P too


#: The conic path keeps ``A`` sparse from ``n + m`` this large ... Measured (warm jitted
#: value_and_grad, SCS, banded LP plus one SOC in cvxpy, ``x`` of size k): n + m = 23 (k = 5):
#: dense 5.1 ms, sparse 6.7 ms; 44 (k = 12, 12% dense): 15.7 vs 7.3 ms; 98 (k = 30): 284 vs 7 ms;
#: 908 (k = 300): 6.8 s vs 2.0 s.
SPARSE_MIN_SIZE = 40
#: ... when its canonical pattern fills at most this fraction of the ``m × n`` matrix.
SPARSE_MAX_DENSITY = 0.10


def use_sparse(n: int, m: int, nnz: int, nnz_p: int = 0) -> bool:
    """The default rule for keeping the problem data sparse: ``n + m ≥ SPARSE_MIN_SIZE``,
    ``nnz(A) ≤ SPARSE_MAX_DENSITY · m · n`` and (QP path) ``nnz(P) ≤ SPARSE_MAX_DENSITY · n²``."""
    return n + m >= SPARSE_MIN_SIZE and nnz <= SPARSE_MAX_DENSITY * m * n and nnz_p <= SPARSE_MAX_DENSITY * n * n


def _sparse_block(flat_map: _SparseMap, m: int, n: int) -> _SparseA:
    """The canonical pattern of an ``(m, n)`` matrix whose column-major entries ``flat_map``
    computes, and the map ``θ̄ ↦`` its values: every entry the tensor can write is one coordinate
    (duplicate writes add up)."""
    from kktbridge.bridges._sparse import Coords

    targets, slot = np.unique(flat_map.rows.astype(np.int64), return_inverse=True)
    data_map = _SparseMap(slot.ravel().astype(np.int32), flat_map.cols, flat_map.vals, int(targets.size))
    return _SparseA(data_map, Coords((targets % m).astype(np.int32), (targets // m).astype(np.int32), (m, n)))


def _sparse_a(ab_map: _SparseMap, m: int, n: int) -> _SparseA:
    """:func:`_sparse_block` of ``A``: the first ``m·n`` outputs of ``ab_map`` (``[A b]`` column-major)."""
    return _sparse_block(ab_map.rows_slice(0, m * n), m, n)


def _row_split(block: _SparseA, values: jax.Array, z: int) -> tuple:
    """Rows ``< z`` and ``≥ z`` of a sparse block as two :class:`SparseData` (``None`` when empty)."""
    from kktbridge.bridges._sparse import Coords, SparseData

    rows, cols, (m, n) = block.coords
    parts = []
    for keep, lo, hi in ((rows < z, 0, z), (rows >= z, z, m)):
        if hi == lo:
            parts.append(None)
            continue
        idx = np.flatnonzero(keep)
        parts.append(SparseData(values[idx], Coords(rows[idx] - lo, cols[idx], (hi - lo, n))))
    return tuple(parts)


# ------------------------------------------------------------------ solver options
#: Keys consumed by the bridges themselves (never passed to a solver); read from the bridges'
#: keyword-only signatures so that new bridge options pass through unchanged.
def _bridge_keys() -> frozenset:
    import inspect

    from kktbridge.bridges._conic import solve_conic
    from kktbridge.bridges._qp import solve_qp

    keys = set()
    for fn in (solve_qp, solve_conic):
        for p in inspect.signature(fn).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "solver":
                keys.add(p.name)
    return frozenset(keys)


#: SCS 3.x settings (``scs.SCS(data, cone, **settings)``) plus its Python-level switches.
_SCS_SETTINGS = (
    "normalize", "scale", "adaptive_scale", "rho_x", "max_iters", "eps_abs", "eps_rel", "eps_infeas",
    "alpha", "time_limit_secs", "verbose", "warm_start", "acceleration_lookback",
    "acceleration_interval", "write_data_filename", "log_csv_filename", "use_indirect", "gpu", "mkl",
)  # fmt: skip

#: cvxpylayers' ``solver_args`` vocabulary (diffcp/SCS names, Moreau's ``tol``) -> each solver's
#: own names. ``None`` drops a key that only steers another solver's internals (SCS's Anderson
#: acceleration, diffcp's derivative mode): it changes how a solution is found, not which.
_VOCAB = {
    "osqp": {
        "eps": ("eps_abs", "eps_rel"), "tol": ("eps_abs", "eps_rel"), "max_iters": ("max_iter",),
        "eps_infeas": ("eps_prim_inf", "eps_dual_inf"), "time_limit_secs": ("time_limit",),
        "polish": ("polishing",), "acceleration_lookback": None, "acceleration_interval": None, "mode": None,
    },
    "scs": {
        "eps": ("eps_abs", "eps_rel"), "tol": ("eps_abs", "eps_rel"), "max_iter": ("max_iters",),
        "time_limit": ("time_limit_secs",), "mode": None,
    },
    "clarabel": {
        "eps": ("tol_gap_abs", "tol_gap_rel", "tol_feas"), "tol": ("tol_gap_abs", "tol_gap_rel", "tol_feas"),
        "eps_abs": ("tol_gap_abs", "tol_feas"), "eps_rel": ("tol_gap_rel",), "max_iters": ("max_iter",),
        "eps_infeas": ("tol_infeas_abs", "tol_infeas_rel"), "time_limit_secs": ("time_limit",),
        "acceleration_lookback": None, "acceleration_interval": None, "mode": None,
    },
}  # fmt: skip

#: cvxpylayers / cvxpy solver names -> kktbridge adapters. ``MOREAU`` (cvxpylayers' interior-point
#: QP/conic backend) maps to the QP path for QPs and to Clarabel (also interior-point) otherwise;
#: ``DIFFCP`` (cvxpylayers' default) to SCS, which diffcp runs.
_ALIASES = {"moreau": None, "diffcp": "scs", "cuclarabel": "clarabel"}


@functools.lru_cache(maxsize=None)
def _native_settings(solver: str) -> Optional[frozenset]:
    """Option names ``solver`` accepts, or ``None`` when they cannot be listed (no check)."""
    try:
        if solver == "scs":
            return frozenset(_SCS_SETTINGS)
        if solver == "clarabel":
            import clarabel

            settings = clarabel.DefaultSettings()  # pyright: ignore[reportAttributeAccessIssue]  (compiled, no stubs)
            return frozenset(k for k in dir(settings) if not k.startswith("_") and k != "default")
        if solver == "osqp":
            import osqp
            import scipy.sparse as sp

            probe = osqp.OSQP()
            one = sp.csc_matrix(np.eye(1))
            probe.setup(P=one, q=np.ones(1), A=one, l=-np.ones(1), u=np.ones(1), verbose=False)
            return frozenset(k for k in dir(probe.settings) if not k.startswith("_"))
    except Exception:  # noqa: BLE001 - a solver that cannot be introspected is not checked here
        return None
    return None


def translate_options(solver: str, options: Mapping[str, Any], kind: Optional[str] = None) -> tuple[str, dict]:
    """Split ``options`` into bridge keywords and ``solver``'s own settings, translating
    cvxpylayers' vocabulary; returns ``(solver, bridge_kwargs_and_settings)``.

    ``kind`` (``"qp"`` / ``"conic"``) says which ``"auto"`` is meant. ``"auto"`` takes no solver
    settings (its candidates name them differently): with any, the call runs the kind's
    settings-bearing default, OSQP for QPs and SCS for cone programs.

    ``solve_method`` (diffcp's choice of conic solver) selects the adapter for this call.
    Raises ``ValueError`` naming an unknown key and listing the valid ones, before any solve.
    """
    bridge = _bridge_keys()
    options = dict(options)
    method = options.pop("solve_method", None)
    if method is not None:
        name = str(method).lower()
        name = _ALIASES.get(name, name) or solver
        if name != solver:
            try:
                new_kind = get_adapter(name, kind=kind if name == "auto" else None).kind
            except ValueError:
                new_kind = None
            if new_kind is None or new_kind != get_adapter(solver, kind=kind).kind:
                raise ValueError(
                    f"solver_args: solve_method={method!r} cannot replace this layer's solver {solver!r} "
                    f"({get_adapter(solver, kind=kind).kind} path); pass solver= at construction instead"
                )
            solver = name
    if solver == "auto" and any(k not in bridge for k in options):
        # "auto" picks among solvers with different settings, so it takes none: a call that sets
        # any runs the kind's settings-bearing default (OSQP for QPs, SCS for cone programs).
        solver = {"qp": "osqp", "conic": "scs"}[get_adapter("auto", kind=kind).kind]
    vocab = _VOCAB.get(solver, {})
    native = _native_settings(solver)
    out: dict = {}
    translated: dict = {}
    for key, value in options.items():
        if key in bridge:
            out[key] = value
        elif native is not None and key in native:
            out[key] = value
        elif key in vocab:
            for target in vocab[key] or ():
                translated[target] = value
        elif native is None:
            out[key] = value
        else:
            valid = sorted(set(native) | set(vocab) | set(bridge) | {"solve_method"})
            raise ValueError(f"solver_args: unknown option {key!r} for solver {solver!r}; valid options: {valid}")
    # A solver's own name wins over a translated cvxpylayers name for the same setting.
    out = {**translated, **out}
    adapter = get_adapter(solver, kind=kind if solver == "auto" else None)
    validate = getattr(adapter, "validate_options", None)
    if validate is not None:
        validate({k: v for k, v in out.items() if k not in bridge})
    return solver, out


def _trace_conic_duals(problem: Any, chain: Any, inverse: Any, gp: Any, n: int, m: int) -> list:
    """For each constraint of ``problem``: one ``_Out("gather", idx)`` per dual variable, or why not.

    cvxpy turns the solver's dual vector ``y`` into each constraint's dual variables through its
    reduction chain (slicing, reshaping, de-interleaving cones, ...). That map is traced once by
    inverting the chain on a labelled ``y = (1, 2, ..., m)`` and letting each constraint store its
    dual value as cvxpy does: every dual variable's value is then the array of the ``y`` positions
    it reads, which becomes a gather. A dual that is not a plain selection of ``y`` (a linear
    combination, a rescaling) is reported as unsupported instead of being approximated.
    """
    import copy

    import cvxpy as cp

    probe = np.arange(1.0, m + 1.0)
    raw = {
        "x": np.zeros(n),
        "y": probe,
        "s": np.zeros(m),
        "info": {"status_val": 1, "solve_time": 0.0, "setup_time": 0.0, "iter": 0, "pobj": 0.0},
    }
    try:
        sol = chain.invert(raw, inverse)
        if gp is not None:
            sol = gp[0].invert(sol, gp[1])
        duals = sol.dual_vars or {}
    except Exception as e:  # noqa: BLE001 - a chain we cannot trace: say so when a dual is requested
        return [f"cvxpy's dual recovery could not be traced ({type(e).__name__}: {e})"] * len(problem.constraints)
    out = []
    for con in problem.constraints:
        value = duals.get(con.id)
        if value is None:
            out.append("cvxpy reports no dual value for it on this path")
            continue
        clone = copy.copy(con)
        clone.dual_variables = [cp.Variable(dv.shape) for dv in con.dual_variables]
        try:
            clone.save_dual_value(value)
        except Exception as e:  # noqa: BLE001
            out.append(f"cvxpy could not store its dual value ({type(e).__name__}: {e})")
            continue
        outs = []
        for dv in clone.dual_variables:
            labels = dv.value
            if labels is None:
                outs = "cvxpy does not compute this dual variable"
                break
            labels = np.asarray(labels, dtype=float)
            if not (np.all(labels == np.round(labels)) and np.all((labels >= 1) & (labels <= m))):
                outs = "cvxpy recovers it as a combination of several solver duals"
                break
            outs.append(_Out("gather", np.reshape(labels.astype(np.int64) - 1, dv.shape)))
        out.append(outs)
    return out


class MissingParameterError(ValueError, AttributeError):
    """A parameter value is missing (``None``) at call time.

    A :class:`ValueError` (kktbridge's convention) that is also an :class:`AttributeError`,
    which is what cvxpylayers raises for ``None`` (code written for it keeps working).
    """


_SIGN_ATTRS = {
    "nonneg": (lambda a: a >= 0, "nonnegative"),
    "pos": (lambda a: a > 0, "positive"),
    "nonpos": (lambda a: a <= 0, "nonpositive"),
    "neg": (lambda a: a < 0, "negative"),
}

_F64_WARNED = [False]


def _warn_float64_truncation() -> None:
    if _F64_WARNED[0]:
        return
    _F64_WARNED[0] = True
    warnings.warn(
        "CvxpyLayer: float64 NumPy input is computed in float32 because JAX's x64 mode is off; "
        "enable it with jax.config.update('jax_enable_x64', True) (or run under jax.enable_x64(True)) "
        "for float64 results and derivatives",
        UserWarning,
        stacklevel=4,
    )


class _Out(NamedTuple):
    """How one output (a primal variable or a constraint's dual variable) is read."""

    kind: str  # "primal", "gather" (indices into y), "psd" (SCS svec slice of y)
    slot: Any  # _VarSlot for "primal"; index array (dual shape) for "gather"; _DualSlot for "psd"


class CvxpyLayer:
    """A differentiable layer ``θ ↦ x*(θ)`` around a parametrised cvxpy problem.

    Drop-in for ``cvxpylayers.jax.CvxpyLayer``: ``layer(*param_values)`` returns one array per
    requested variable, where a "variable" is a primal variable of the problem or a constraint's
    dual variable (``con.dual_variables[k]``, cvxpy's ``dual_value`` convention). Each parameter
    value may carry one leading batch axis (batched and unbatched values mix; unbatched ones are
    broadcast). Differentiable w.r.t. every parameter (``grad``, ``jacfwd``, ``jacrev``, higher
    order) and composable with ``jit`` and ``vmap``.

    Args:
      problem: a DPP-compliant :class:`cvxpy.Problem` (``problem.is_dpp()``; with ``gp=True``,
        DGP and ``is_dpp("dgp")``). Parameters need no values.
      parameters: the problem's parameters, in the order their values will be passed. They must
        exactly match ``problem.parameters()`` (every parameter, once).
      variables: the outputs, in order: problem variables and/or constraint dual variables.
      solver: ``None`` (``"auto"`` for QPs, SCS otherwise), ``"auto"`` / ``"osqp"`` / ``"daqp"``...
        (QP path; the problem must be a QP), ``"scs"`` / ``"clarabel"`` (conic path), any other
        registered adapter, or a cvxpylayers/cvxpy name (``"MOREAU"``: ``"auto"`` for QPs, Clarabel
        otherwise; ``"DIFFCP"``: SCS; ``cp.SCS``, ``cp.CLARABEL``, ``cp.OSQP``; case-insensitive).
        ``"auto"`` (:func:`~kktbridge.solve_qp`'s rule) takes no solver settings: when
        ``solver_args`` (at construction or per call) carry any, that call runs OSQP, whose
        settings cvxpylayers' vocabulary (``eps``, ``max_iters``...) translates to.
      solver_args: default options: the bridge's keywords (``on_failure``, ``solve``,
        ``accept_inaccurate``...) and solver settings, in the solver's own names or in
        cvxpylayers' vocabulary (``eps``, ``max_iters``, ``tol``, ``acceleration_lookback``,
        ``solve_method``...), translated per solver. Overridable per call. Unknown names raise
        ``ValueError`` (listing the valid ones) before any solve.
      gp: the problem is a disciplined geometric program.
      sparse: keep the constraint matrix (and, on the QP path, ``P``) sparse -- values on
        cvxpy's canonical pattern: CSC to the solver, sparse LU backward -- with ``True``, dense
        with ``False``; ``None`` (default) decides by :func:`use_sparse` (size and density).
        Values and derivatives are the same either way.

    Each call is compiled once per layer, batching pattern and option set (``jax.jit``), so
    eager loops do not pay op-by-op dispatch; inside a user's ``jit``/``vmap``/``grad`` the layer
    simply traces. A failed solve raises :class:`~kktbridge.SolverError` (a ``diffcp.SolverError``
    when diffcp is installed) eagerly, or is reported as NaN with
    ``solver_args={"on_failure": "nan"}``.

    Raises:
      ValueError: non-DCP/non-DPP problem (naming the offending expression), parameters or
        variables not in the problem, a problem parameter missing from ``parameters``, an unknown
        solver or option, ``solver="osqp"`` for a non-QP, a parameter-dependent ``quad_form`` where
        its parameter cannot be carried (see the module docstring).
      NotImplementedError: unsupported structure (complex or ``diag``/``sparsity`` leaves,
        ``PowConeND``, a dual variable cvxpy recovers nonlinearly).

    Example::

        x = cp.Variable(2); A = cp.Parameter((3, 2)); b = cp.Parameter(3)
        con = x >= 0
        prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [con])
        layer = CvxpyLayer(prob, parameters=[A, b], variables=[x, con.dual_variables[0]])
        x_star, lam = layer(A_val, b_val)
        grads = jax.grad(lambda A, b: layer(A, b)[0].sum(), argnums=(0, 1))(A_val, b_val)
    """

    def __init__(
        self,
        problem: Any,
        parameters: Sequence[Any],
        variables: Sequence[Any],
        *,
        solver: Optional[str] = None,
        solver_args: Optional[Mapping[str, Any]] = None,
        gp: bool = False,
        sparse: Optional[bool] = None,
    ) -> None:
        import cvxpy as cp

        if not isinstance(problem, cp.Problem):
            raise ValueError(f"problem: expected a cvxpy.Problem, got {type(problem).__name__}")
        if not isinstance(parameters, (list, tuple)):
            raise ValueError("parameters: The layer's parameters must be provided as a list or tuple of cvxpy Parameters")
        if not isinstance(variables, (list, tuple)):
            raise ValueError("variables: The layer's variables must be provided as a list or tuple of cvxpy Variables")
        if solver_args is not None and not isinstance(solver_args, Mapping):
            raise ValueError("solver_args: expected a dict of solver options")
        if sparse not in (None, True, False):
            raise ValueError(f"sparse: expected None, True or False, got {sparse!r}")
        self.problem = problem
        self.parameters = list(parameters)
        self.variables = list(variables)
        self.gp = bool(gp)
        self.solver_args = dict(solver_args or {})

        # Membership by id: cvxpy overloads ``==`` (it builds a constraint).
        match = "The layer's parameters must exactly match problem.parameters"
        problem_params = problem.parameters()
        param_ids = {p.id for p in problem_params}
        for i, p in enumerate(self.parameters):
            if not isinstance(p, cp.Parameter):
                raise ValueError(f"parameters[{i}]: expected a cvxpy Parameter, got {type(p).__name__} ({match})")
            if p.id not in param_ids:
                raise ValueError(f"parameters[{i}]: {_name(p)} is not a parameter of the problem ({match})")
        if len(set(p.id for p in self.parameters)) != len(self.parameters):
            raise ValueError(f"parameters: contains a parameter twice ({match})")
        given = {p.id for p in self.parameters}
        missing = [p for p in problem_params if p.id not in given]
        if missing:
            raise ValueError(
                f"parameters: the problem's {_name(missing[0])} is missing; list every parameter of the problem ({match})"
            )
        var_ids = {v.id for v in problem.variables()}
        dual_of = {}  # dual variable id -> (constraint index, position among its dual variables)
        for ci, con in enumerate(problem.constraints):
            for k, dv in enumerate(con.dual_variables):
                dual_of[dv.id] = (ci, k)
        self._requests = []  # ("primal", None) or ("dual", (constraint index, k)) per output
        for i, v in enumerate(self.variables):
            if not isinstance(v, cp.Variable):
                raise ValueError(f"variables[{i}]: expected a cvxpy Variable, got {type(v).__name__}")
            if v.id in var_ids:
                self._requests.append(("primal", None))
            elif v.id in dual_of:
                self._requests.append(("dual", dual_of[v.id]))
            else:
                raise ValueError(
                    f"variables[{i}]: {_name(v)} is not a variable of the problem nor a dual variable of one "
                    "of its constraints (Variables must be a subset of problem.variables or constraint dual variables)"
                )
        for leaf in list(self.parameters) + [v for v, r in zip(self.variables, self._requests) if r[0] == "primal"]:
            if leaf.is_complex():
                raise NotImplementedError(f"{_name(leaf)}: complex variables/parameters are not supported")
            if getattr(leaf, "_has_dim_reducing_attr", False) and not any(leaf.attributes.get(a) for a in _SYM_ATTRS):
                raise NotImplementedError(f"{_name(leaf)}: 'diag' and 'sparsity' attributes are not supported")

        self._jit_cache: dict = {}
        self.solver, path = self._choose_solver(problem, solver)
        self._canon, self._param_slots, self._var_slots, self._dual_outs = self._canonicalize(problem, path)
        c = self._canon
        if c.m:
            sa = _sparse_a(c.ab_map, c.m, c.n)
            sp_ = _sparse_block(c.p_map, c.n, c.n) if c.path == "qp" and c.p_map is not None else None
            nnz_p = 0 if sp_ is None else sp_.coords.rows.size
            if use_sparse(c.n, c.m, sa.coords.rows.size, nnz_p) if sparse is None else sparse:
                self._canon = c._replace(sparse_a=sa, sparse_p=sp_)
        self._spec = self._output_spec()
        translate_options(self.solver, self.solver_args, path)  # unknown options fail here, not at the first call

    # ------------------------------------------------------------------ construction
    def _choose_solver(self, problem: Any, solver: Optional[str]) -> tuple[str, str]:
        from cvxpy.utilities import scopes

        name = None
        if solver is not None:
            if not isinstance(solver, str):
                raise ValueError(f"solver: expected a solver name such as 'osqp' or 'scs', got {solver!r}")
            name = solver.lower()
        if self.gp:
            if not problem.is_dgp(dpp=True):
                what = "DGP" if not problem.is_dgp() else "DPP (dgp)"
                raise ValueError(f"problem: gp=True needs a DGP problem that is {what}-compliant")
            is_qp, parametric_qf = False, False
        else:
            if not problem.is_dcp():
                raise ValueError(f"problem: not DCP (disciplined convex); offending: {_dcp_diagnosis(problem, False)}")
            with scopes.quad_form_dpp_scope():
                qp_dpp = problem.is_dpp()
                is_qp = qp_dpp and problem.is_qp()
            if not qp_dpp:
                raise ValueError(
                    "problem: not DPP (Problem must be DPP: parameters must enter affinely, cf. cvxpy's DPP rules); offending: "
                    f"{_dcp_diagnosis(problem, True)}"
                )
            # DPP only inside cvxpy's quad_form scope: a quad_form(x, P) with a parameter-dependent
            # P. Only cvxpy's QP canonicalisation of the *objective* carries P as a parameter; any
            # other canonicalisation would freeze P's current value into constant data.
            parametric_qf = not problem.is_dpp()
            if parametric_qf:
                for i, con in enumerate(problem.constraints):
                    if not con.is_dcp(dpp=True):
                        raise ValueError(
                            f"constraint {i} `{con}`: a quad_form(x, P) with a parameter-dependent P is only "
                            "supported in the objective (its parameter cannot be carried in a constraint; "
                            "write it as sum_squares(L.T @ x) <= t with a parameter L, P = L Lᵀ)"
                        )
                where = f"objective `{problem.objective}`"
                if not is_qp:
                    raise ValueError(
                        f"{where}: a quad_form(x, P) with a parameter-dependent P is only supported in the "
                        "objective of a QP (affine constraints); this problem goes to the conic path, which "
                        "cannot carry P. Write it as sum_squares(L.T @ x) with a parameter L, P = L Lᵀ"
                    )
                if name is None:
                    raise ValueError(
                        f"{where}: a quad_form(x, P) with a parameter-dependent P needs a QP solver: pass "
                        "solver='osqp' (or cvxpylayers' solver='MOREAU'); the default solver, like "
                        "cvxpylayers' default (diffcp), is a conic one that cannot carry P"
                    )
        if name is None:
            return ("auto", "qp") if is_qp else ("scs", "conic")
        if name in _ALIASES:
            target = _ALIASES[name]
            if target is None:  # MOREAU: interior-point QP/conic solver
                return ("auto", "qp") if is_qp else ("clarabel", "conic")
            name = target
        # "auto" is one name per kind: the problem decides which.
        adapter = get_adapter(name, kind=("qp" if is_qp else "conic") if name == "auto" else None)  # ValueError if unknown
        if adapter.kind == "qp":
            if not is_qp:
                raise ValueError(f"solver: {name!r} needs a QP (quadratic objective, affine constraints); use 'scs'")
            return name, "qp"
        if adapter.kind == "conic":
            if parametric_qf:
                raise ValueError(
                    f"solver: {name!r} (conic path) cannot carry a parameter-dependent quad_form; offending: "
                    f"{_dcp_diagnosis(problem, True)}. Use solver='osqp' or write sum_squares(L.T @ x)"
                )
            return name, "conic"
        raise ValueError(f"solver: {name!r} is a {adapter.kind} solver; CvxpyLayer needs a 'qp' or 'conic' one")

    def _canonicalize(self, problem: Any, path: str):
        import cvxpy as cp
        from cvxpy.reductions.dgp2dcp.dgp2dcp import Dgp2Dcp
        from cvxpy.reductions.solvers.conic_solvers.scs_conif import dims_to_solver_dict
        from cvxpy.settings import PARAM_PROB
        from cvxpy.utilities import scopes

        gp_params: dict = {}
        var_map_extra: dict = {}
        target = problem
        gp = None
        if self.gp:
            dgp2dcp = Dgp2Dcp(problem)
            target, gp_inverse = dgp2dcp.apply(problem)
            gp = (dgp2dcp, gp_inverse)
            gp_params = dict(dgp2dcp.canon_methods._parameters)  # original -> log-space parameter
            var_map_extra = {k: v[0] for k, v in dgp2dcp.var_id_map.items()}
        scope = scopes.quad_form_dpp_scope() if path == "qp" else contextlib.nullcontext()
        with scope:
            if path == "qp":
                data, chain, inverse = target.get_problem_data(solver=cp.OSQP)
            else:
                data, chain, inverse = target.get_problem_data(solver=cp.SCS, solver_opts={"use_quad_obj": False})
        pp = data[PARAM_PROB]
        var_ids = chain.compose_var_id_map()
        if any(len(v) > 1 for v in var_ids.values()):
            raise NotImplementedError("complex variables are not supported")
        var_ids = {k: v[0] for k, v in var_ids.items()}
        param_ids = {k: v[0] for k, v in chain.compose_param_id_map().items()}
        constr_ids = chain.compose_constr_id_map()

        n = int(pp.x.size)
        m = int(sum(_rows(cp, c) for c in pp.constraints))
        total = int(pp.total_param_size)
        dims = data["dims"]
        cone = dims_to_solver_dict(dims)
        cone = {k: v for k, v in cone.items() if v not in (0, [], None)}
        if getattr(dims, "pnd", None):
            raise NotImplementedError("the n-dimensional power cone (PowConeND) is not supported")
        n_zero = int(dims.zero)
        q_map = _tensor_map(pp.q, np.arange(pp.q.shape[0]), n + 1)  # row n is the objective constant
        ab_map = _matrix_map(pp.reduced_A, m, n + 1)
        if ab_map is None:
            ab_map = _SparseMap(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0), m * (n + 1))
        p_map = None
        if path == "qp" and pp.P is not None:
            p_map = _matrix_map(pp.reduced_P, n, n)
        if path == "qp":
            types = {type(c).__name__ for c in pp.constraints}
            if not types <= {"Zero", "NonNeg"}:
                raise ValueError(f"solver: the QP path got non-polyhedral cones {sorted(types)}; use 'scs'")

        # Parameters -> slots of θ̄.
        param_slots = []
        for p in self.parameters:
            canon = gp_params.get(p, p)  # Parameters hash by id
            cid = param_ids.get(canon.id, canon.id)
            triu = None
            if getattr(p, "_has_dim_reducing_attr", False):
                triu = tuple(np.triu_indices(p.shape[-1]))
            if cid not in pp.param_id_to_col:
                # cvxpy keeps every parameter of a DPP problem as a column of its parameter map;
                # one that is missing was evaluated into constant data (its current value frozen).
                raise ValueError(
                    f"parameters: {_name(p)} does not reach the solver data: cvxpy froze its current value "
                    "into the problem (not DPP on this path); rewrite the expression it appears in"
                )
            start, size = int(pp.param_id_to_col[cid]), int(pp.param_id_to_size[cid])
            param_slots.append(_ParamSlot(tuple(p.shape), start, size, triu, p in gp_params))

        # Primal variables -> slices of x.
        var_slots = []
        for v, (kind, _) in zip(self.variables, self._requests):
            if kind != "primal":
                var_slots.append(None)
                continue
            vid = var_map_extra.get(v.id, v.id)
            cid = var_ids.get(vid, vid)
            if cid not in pp.var_id_to_col:
                raise ValueError(f"variables: {_name(v)} does not appear in the canonicalised problem")
            triu = tuple(np.triu_indices(v.shape[-1])) if getattr(v, "_has_dim_reducing_attr", False) else None
            size = len(triu[0]) if triu is not None else int(v.size)
            var_slots.append(_VarSlot(tuple(v.shape), int(pp.var_id_to_col[cid]), size, triu, self.gp))

        # Constraints -> their dual variables read from y (cvxpy's dual_value convention).
        offsets, off = {}, 0
        for c in pp.constraints:
            size = _rows(cp, c)
            offsets[c.id] = (off, size, c)
            off += size
        if path == "conic":
            traced = _trace_conic_duals(problem, chain, inverse, gp, n, m)
        dual_outs = []  # per constraint: a list (one _Out per dual variable) or a reason string
        for ci, con in enumerate(problem.constraints):
            cid = constr_ids.get(con.id, con.id)
            if isinstance(con, _psd_types(cp)) and cid in offsets and len(con.shape) == 2:
                start, size, _ = offsets[cid]
                dual_outs.append([_Out("psd", _DualSlot(tuple(con.shape), start, size, "psd", con.shape[0]))])
            elif path == "qp":
                if cid not in offsets:
                    dual_outs.append("it has no rows in the canonical problem")
                    continue
                start, size, _ = offsets[cid]
                idx = np.reshape(start + np.arange(size), con.shape, order="F")
                dual_outs.append([_Out("gather", idx)])
            else:
                dual_outs.append(traced[ci])
        canon = _Canon(path, n, m, n_zero, cone, p_map, q_map, ab_map, total)
        return canon, tuple(param_slots), tuple(var_slots), tuple(dual_outs)

    def _output_spec(self) -> tuple:
        spec = []
        for i, (kind, where) in enumerate(self._requests):
            if kind == "primal":
                spec.append(_Out("primal", self._var_slots[i]))
                continue
            ci, k = where
            outs = self._dual_outs[ci]
            if isinstance(outs, str):
                raise NotImplementedError(
                    f"variables[{i}]: the dual of constraint {ci} (`{self.problem.constraints[ci]}`) cannot be "
                    f"recovered: {outs}"
                )
            spec.append(outs[k])
        return tuple(spec)

    def _dual_spec(self) -> tuple:
        """One output per constraint for :meth:`with_duals` (several dual variables: concatenated)."""
        spec = []
        for ci, outs in enumerate(self._dual_outs):
            if isinstance(outs, str):
                raise NotImplementedError(
                    f"with_duals: the dual of constraint {ci} (`{self.problem.constraints[ci]}`) cannot be recovered: {outs}"
                )
            if len(outs) == 1:
                spec.append(outs[0])
            else:  # e.g. SOC (t, X): the dual variables' values raveled and concatenated
                spec.append(_Out("gather", np.concatenate([np.ravel(o.slot) for o in outs])))
        return tuple(spec)

    # ------------------------------------------------------------------ evaluation
    def _check_params(self, params: Sequence[Any]) -> tuple[list[jax.Array], list[bool], Optional[int]]:
        if len(params) != len(self.parameters):
            raise ValueError(
                f"params: expected {len(self.parameters)} arrays (one per parameter), got {len(params)} "
                f"(A tensor must be provided for each CVXPY parameter; received {len(params)} tensors, "
                f"expected {len(self.parameters)})"
            )
        arrays, batched, sizes = [], [], []
        for i, (value, p, slot) in enumerate(zip(params, self.parameters, self._param_slots)):
            label = f"parameter {i} ({p.name()})"
            if value is None:
                raise MissingParameterError(f"{label}: got None; a value must be provided for each CVXPY parameter")
            if isinstance(value, np.ndarray) and value.dtype == np.float64 and not x64_enabled():
                _warn_float64_truncation()
            try:
                arr = jnp.asarray(value)
            except TypeError:
                raise ValueError(f"{label}: expected an array, got {type(value).__name__}") from None
            if not jnp.issubdtype(arr.dtype, jnp.floating):
                arr = arr.astype(jnp.result_type(float))
            shape = slot.shape
            if arr.ndim == len(shape):
                if arr.shape != shape:
                    raise ValueError(
                        f"{label}: expected shape {shape} or (batch, *{shape}), got {tuple(arr.shape)} "
                        f"(Invalid parameter shape for parameter {i})"
                    )
                batched.append(False)
            elif arr.ndim == len(shape) + 1:
                if arr.shape[1:] != shape:
                    raise ValueError(
                        f"{label}: expected shape {shape} or (batch, *{shape}), got {tuple(arr.shape)} "
                        f"(Invalid parameter shape for parameter {i})"
                    )
                batched.append(True)
                sizes.append(arr.shape[0])
            else:
                raise ValueError(
                    f"{label}: expected {len(shape)} or {len(shape) + 1} dimensions (shape {shape} or (batch, *{shape})), "
                    f"got shape {tuple(arr.shape)} (Invalid parameter dimensionality for parameter {i})"
                )
            if is_concrete(arr):
                self._check_value(label, p, slot, np.asarray(arr), batched[-1])
            arrays.append(arr)
        if len(set(sizes)) > 1:
            got = [int(a.shape[0]) if b else 0 for a, b in zip(arrays, batched)]
            raise ValueError(
                f"params: batched parameters have different batch sizes {sizes} (Inconsistent batch sizes: "
                f"per parameter {got}, 0 = unbatched)"
            )
        return arrays, batched, (sizes[0] if sizes else None)

    @staticmethod
    def _check_value(label: str, p: Any, slot: _ParamSlot, a: np.ndarray, batched: bool) -> None:
        """Reject values cvxpy itself would reject for this parameter (NaN/inf, sign, definiteness)."""
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{label}: contains NaN or inf")
        if slot.log and not np.all(a > 0):
            raise ValueError(f"{label}: a geometric program's parameters must be positive")
        for attr, (ok, word) in _SIGN_ATTRS.items():
            if p.attributes.get(attr) and not np.all(ok(a)):
                raise ValueError(f"{label}: the parameter is declared {attr}=True, so its value must be {word}")
        for attr, sign in (("PSD", 1.0), ("NSD", -1.0)):
            if p.attributes.get(attr):
                # Like cvxpylayers, only the upper triangle is read: check the matrix it defines.
                upper = np.triu(a)
                sym = upper + np.swapaxes(upper, -1, -2) - np.triu(np.tril(a))
                eig = np.linalg.eigvalsh(sign * sym)
                scale = max(1.0, float(np.abs(eig).max(initial=0.0)))
                if np.any(eig < -1e-8 * scale):
                    word = "positive" if sign > 0 else "negative"
                    raise ValueError(
                        f"{label}: the parameter is declared {attr}=True, but its value (read from the upper "
                        f"triangle) is not {word} semidefinite (eigenvalue {float(sign * eig.min()):.3g})"
                    )

    def _theta(self, params: Sequence[jax.Array], used_by: Optional[_SparseMap] = None) -> jax.Array:
        """Flat parameter vector ``θ̄`` (cvxpy's column order, column-major flattening, then 1).

        With ``used_by``, only the parameters that map reads are filled in (the others stay zero,
        which the map ignores). Each block of solver data then depends only on its own
        parameters, so under ``vmap`` a block fed by unbatched parameters (typically ``P`` and
        the constraint matrix) stays unbatched and the solver can reuse its factorisation.
        """
        c = self._canon
        dtype = jnp.result_type(*params) if params else jnp.result_type(float)
        theta = jnp.zeros((c.total + 1,), dtype).at[c.total].set(1.0)
        for value, slot in zip(params, self._param_slots):
            if used_by is not None and not np.any((used_by.cols >= slot.start) & (used_by.cols < slot.start + slot.size)):
                continue
            v = jnp.log(value) if slot.log else value
            flat = v[slot.triu] if slot.triu is not None else jnp.ravel(v, order="F")
            theta = theta.at[slot.start : slot.start + slot.size].set(flat.astype(dtype))
        return theta

    def _solve_single(self, params: Sequence[jax.Array], solver: str, options: dict) -> tuple[jax.Array, jax.Array]:
        """Primal ``x`` and conic dual ``y`` of one instance."""
        from kktbridge.bridges._qp import solve_qp

        c = self._canon
        q = c.q_map(self._theta(params, c.q_map))[: c.n]
        # [A b] is stored column-major: A is the first m*n outputs, b the last m.
        b_map = c.ab_map.rows_slice(c.m * c.n, c.m * (c.n + 1))
        b = b_map(self._theta(params, b_map))
        if c.sparse_a is not None and c.path == "qp":
            from kktbridge.bridges._sparse import Coords, SparseData

            values = c.sparse_a.data_map(self._theta(params, c.sparse_a.data_map))
            A_eq, A_in = _row_split(c.sparse_a, values, c.n_zero)
            G = None if A_in is None else SparseData(-A_in.data, A_in.coords)
            if c.sparse_p is not None:
                P = SparseData(c.sparse_p.data_map(self._theta(params, c.sparse_p.data_map)), c.sparse_p.coords)
            else:
                P = SparseData(jnp.zeros((0,), q.dtype), Coords(np.zeros(0, np.int32), np.zeros(0, np.int32), (c.n, c.n)))
            z = c.n_zero
            sol = solve_qp(P, q, A_eq, None if A_eq is None else -b[:z], G, None if G is None else b[z:], solver=solver, **options)
            return sol.x, jnp.concatenate([sol.eq_dual, sol.ineq_dual])
        if c.sparse_a is not None:
            from kktbridge.bridges._conic import solve_conic
            from kktbridge.bridges._sparse import SparseData

            # SCS form: (-A) x + s = b, s ∈ K, with A's values on the canonical pattern.
            data = -c.sparse_a.data_map(self._theta(params, c.sparse_a.data_map))
            sol = solve_conic(SparseData(data, c.sparse_a.coords), b, q, c.cone, solver=solver, **options)
            return sol.x, sol.y
        a_map = c.ab_map.rows_slice(0, c.m * c.n)
        A = jnp.reshape(a_map(self._theta(params, a_map)), (c.m, c.n), order="F")
        z = c.n_zero
        if c.path == "qp":
            if c.p_map is not None:
                P = jnp.reshape(c.p_map(self._theta(params, c.p_map)), (c.n, c.n), order="F")
                P = 0.5 * (P + P.T)  # cvxpy stores the full symmetric P; this only removes roundoff
            else:
                P = jnp.zeros((c.n, c.n), q.dtype)
            # Rows of A x + b ∈ {0}^z × R_+^l:  A_z x = -b_z,  -A_l x ≤ b_l.
            sol = solve_qp(P, q, A[:z], -b[:z], -A[z:], b[z:], solver=solver, **options)
            # cvxpy's QP interface reports OSQP's multipliers (ν, λ) as the duals of these rows
            # (its QP chain orients equalities so that this agrees with the conic chain's y).
            y = jnp.concatenate([sol.eq_dual, sol.ineq_dual])
            return sol.x, y
        from kktbridge.bridges._conic import solve_conic

        # SCS form: (-A) x + s = b, s ∈ K.
        sol = solve_conic(-A, b, q, c.cone, solver=solver, **options)
        return sol.x, sol.y

    @staticmethod
    def _read(out: _Out, x: jax.Array, y: jax.Array) -> jax.Array:
        if out.kind == "primal":
            slot = out.slot
            seg = x[slot.start : slot.start + slot.size]
            if slot.triu is not None:
                k = slot.shape[-1]
                upper = jnp.zeros((k, k), x.dtype).at[slot.triu].set(seg)
                val = upper + upper.T - jnp.diag(jnp.diag(upper))
            else:
                val = jnp.reshape(seg, slot.shape, order="F")
            return jnp.exp(val) if slot.exp else val
        if out.kind == "gather":
            return y[out.slot]
        # "psd": SCS svec, lower triangle column by column, off-diagonals scaled by √2.
        slot = out.slot
        seg = y[slot.start : slot.start + slot.size]
        k = slot.order
        rows, cols = np.triu_indices(k)  # (col, row) of the lower triangle, column-major
        scale = np.where(rows == cols, 1.0, 1.0 / np.sqrt(2.0))
        low = jnp.zeros((k, k), y.dtype).at[cols, rows].set(seg * scale)
        return low + low.T - jnp.diag(jnp.diag(low))

    def _run(self, params: Sequence[Any], solver_args: Optional[Mapping[str, Any]], duals: bool):
        if solver_args is not None and not isinstance(solver_args, Mapping):
            raise ValueError("solver_args: expected a dict of solver options")
        spec = self._spec
        if duals:
            if self.gp:
                raise NotImplementedError("with_duals: use variables=[..., con.dual_variables[0]] for geometric programs")
            spec = spec + self._dual_spec()
        solver, options = translate_options(self.solver, {**self.solver_args, **(solver_args or {})}, self._canon.path)
        arrays, batched, batch = self._check_params(params)
        in_axes = None if batch is None else tuple(0 if b else None for b in batched)
        try:
            key = (duals, in_axes, solver, tuple(sorted(options.items())))
            hash(key)
        except TypeError:  # unhashable option values: run op by op
            return self._build(spec, solver, options, in_axes)(*arrays)
        fn = self._jit_cache.get(key)
        if fn is None:
            # Compiled once per (outputs, batching pattern, options); JAX retraces per shape/dtype.
            # Eager callers (cvxpylayers-style loops) then pay one compilation, not op-by-op
            # dispatch of the implicit-differentiation machinery.
            fn = self._jit_cache[key] = jax.jit(self._build(spec, solver, options, in_axes))
        try:
            return fn(*arrays)
        except (jax.errors.JaxRuntimeError, ValueError):  # a cached executable reports ValueError
            if not all(is_concrete(a) for a in arrays):
                raise
            # A solver failure raised inside the compiled call: rerun op by op so that the bridge
            # raises its own SolverError (with status) instead of XLA's wrapped runtime error.
            return self._build(spec, solver, options, in_axes)(*arrays)

    def _build(self, spec: tuple, solver: str, options: dict, in_axes: Optional[tuple]):
        def single(*ps):
            x, y = self._solve_single(ps, solver, options)
            return tuple(self._read(o, x, y) for o in spec)

        if in_axes is None:
            return single
        return jax.vmap(single, in_axes=in_axes)

    def __call__(self, *params: Any, solver_args: Optional[Mapping[str, Any]] = None) -> tuple[jax.Array, ...]:
        """Optimal values of the requested variables (primal or dual), one array per variable.

        Args:
          *params: one array per parameter (same order as ``parameters``), each of the
            parameter's shape or with one extra leading batch axis.
          solver_args: per-call options overriding the constructor's ``solver_args``.

        Returns:
          Tuple of arrays of the variables' shapes (with the batch axis if any input had one).
        """
        return self._run(params, solver_args, duals=False)

    def with_duals(
        self, *params: Any, solver_args: Optional[Mapping[str, Any]] = None
    ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Like :meth:`__call__`, plus one dual value per ``problem.constraints`` entry.

        A convenience over requesting every ``con.dual_variables[k]`` in ``variables`` (same
        machinery). Duals follow cvxpy's ``constraint.dual_value`` convention (``λ ≥ 0`` for
        inequalities, equality multipliers with cvxpy's sign, the symmetric dual matrix of a PSD
        constraint); a constraint with several dual variables (second-order cone: ``(t, X)``,
        exponential and power cones) yields their values raveled and concatenated. All are
        differentiable like the primal outputs.

        Returns:
          ``(variables, duals)``.
        """
        out = self._run(params, solver_args, duals=True)
        k = len(self.variables)
        return tuple(out[:k]), tuple(out[k:])

    @property
    def path(self) -> str:
        """``"qp"`` (``solve_qp``: DAQP/OSQP/...) or ``"conic"`` (SCS/Clarabel via ``solve_conic``)."""
        return self._canon.path

    def __repr__(self) -> str:
        c = self._canon
        return (
            f"CvxpyLayer(solver={self.solver!r}, path={c.path!r}, n={c.n}, m={c.m}, parameters={len(self.parameters)}"
            f"{', sparse=True' if c.sparse_a is not None else ''})"
        )

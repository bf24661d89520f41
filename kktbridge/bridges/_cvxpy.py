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

* **QP path** (default when the problem is a QP, solved by OSQP through :func:`~kktbridge.solve_qp`):
  ``min ½xᵀPx + qᵀx s.t. A_z x = -b_z, -A_l x ≤ b_l`` (zero rows ``z``, nonnegative rows ``l``);
* **conic path** (default otherwise, SCS through :func:`~kktbridge.bridges._conic.solve_conic`):
  ``min qᵀx s.t. (-A) x + s = b, s ∈ K``, with any quadratic objective rewritten as a second-order
  cone by cvxpy's conic canonicalisation.

Both bridges differentiate the solution by the implicit function theorem, so the layer is
differentiable w.r.t. every parameter in forward and reverse mode, under ``jit`` and ``vmap``;
batches (leading parameter axes) are ``jax.vmap``-ed over the bridge and reach the solver in one
host call. Variable values are slices of the solver's ``x`` (reshaped in column-major order, as
cvxpy stores them); constraint duals are slices of the conic dual ``y`` (on the QP path
``y = (ν, λ)``, the equality and inequality multipliers, as cvxpy's own OSQP interface reports
them), which is exactly cvxpy's ``constraint.dual_value`` convention.

Supported: any DPP problem cvxpy can canonicalise to the cones above; parameters with the
``symmetric`` / ``PSD`` / ``NSD`` attribute (cvxpy reduces them to their upper triangle, so the
lower triangle of the value passed is ignored and gets zero gradient, as in cvxpylayers);
``cp.quad_form(x, P)`` with a PSD *parameter* ``P`` in the objective on the QP path (cvxpy's
``quad_form_dpp_scope``; the conic path cannot express it and rejects it as non-DPP);
``cp.sum_squares(L @ x - b)`` with parameters ``L, b`` on both paths; geometric programs
(``gp=True``) through cvxpy's DGP→DCP reduction (parameters enter as ``log θ``, variables leave
as ``exp``). Not supported: complex variables/parameters, variables or parameters with ``diag``
or ``sparsity`` attributes, the ``PowConeND`` cone, duals of PSD constraints with several cones.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.adapters import get_adapter
from kktbridge.bridges import _common

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


class CvxpyLayer:
    """A differentiable layer ``θ ↦ x*(θ)`` around a parametrised cvxpy problem.

    Drop-in for ``cvxpylayers.jax.CvxpyLayer``: ``layer(*param_values)`` returns one array per
    requested variable. Each parameter value may carry one leading batch axis (batched and
    unbatched values mix; unbatched ones are broadcast). Differentiable w.r.t. every parameter
    (``grad``, ``jacfwd``, ``jacrev``, higher order) and composable with ``jit`` and ``vmap``.

    Args:
      problem: a DPP-compliant :class:`cvxpy.Problem` (``problem.is_dpp()``; with ``gp=True``,
        DGP and ``is_dpp("dgp")``).
      parameters: the problem's parameters, in the order their values will be passed. Every
        parameter of the problem must be listed.
      variables: the variables whose optimal values are returned, in order.
      solver: ``None`` (OSQP for QPs, SCS otherwise), ``"osqp"`` (QP path; the problem must be a
        QP), ``"scs"`` (conic path) or any other registered adapter name; its kind (``qp`` or
        ``conic``) selects the path.
      solver_args: default keyword arguments for the bridge: solver options (e.g. ``eps_abs``,
        ``max_iter`` / ``max_iters``) plus ``on_failure`` and ``solve`` of
        :func:`~kktbridge.solve_qp` / ``solve_conic``. Overridable per call.
      gp: the problem is a disciplined geometric program.

    Each call is compiled once per layer, batching pattern and option set (``jax.jit``), so
    eager loops do not pay op-by-op dispatch; inside a user's ``jit``/``vmap``/``grad`` the layer
    simply traces. A failed solve raises :class:`~kktbridge.SolverError` (eagerly) or is reported
    as NaN with ``solver_args={"on_failure": "nan"}``.

    Raises:
      ValueError: non-DCP/non-DPP problem (naming the offending expression), parameters or
        variables not in the problem, a problem parameter missing from ``parameters``, an unknown
        solver, or ``solver="osqp"`` for a non-QP.
      NotImplementedError: unsupported structure (complex or ``diag``/``sparsity`` leaves,
        ``PowConeND``).

    Example::

        x = cp.Variable(2); A = cp.Parameter((3, 2)); b = cp.Parameter(3)
        prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [x >= 0])
        layer = CvxpyLayer(prob, parameters=[A, b], variables=[x])
        (x_star,) = layer(A_val, b_val)
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
    ) -> None:
        import cvxpy as cp

        if not isinstance(problem, cp.Problem):
            raise ValueError(f"problem: expected a cvxpy.Problem, got {type(problem).__name__}")
        if not isinstance(parameters, (list, tuple)):
            raise ValueError("parameters: expected a list or tuple of cvxpy Parameters")
        if not isinstance(variables, (list, tuple)):
            raise ValueError("variables: expected a list or tuple of cvxpy Variables")
        if solver_args is not None and not isinstance(solver_args, Mapping):
            raise ValueError("solver_args: expected a dict of solver options")
        self.problem = problem
        self.parameters = list(parameters)
        self.variables = list(variables)
        self.gp = bool(gp)
        self.solver_args = dict(solver_args or {})

        # Membership by id: cvxpy overloads ``==`` (it builds a constraint).
        problem_params = problem.parameters()
        param_ids = {p.id for p in problem_params}
        for i, p in enumerate(self.parameters):
            if not isinstance(p, cp.Parameter):
                raise ValueError(f"parameters[{i}]: expected a cvxpy Parameter, got {type(p).__name__}")
            if p.id not in param_ids:
                raise ValueError(f"parameters[{i}]: {_name(p)} is not a parameter of the problem")
        if len(set(p.id for p in self.parameters)) != len(self.parameters):
            raise ValueError("parameters: contains a parameter twice")
        given = {p.id for p in self.parameters}
        missing = [p for p in problem_params if p.id not in given]
        if missing:
            raise ValueError(f"parameters: the problem's {_name(missing[0])} is missing; list every parameter of the problem")
        var_ids = {v.id for v in problem.variables()}
        for i, v in enumerate(self.variables):
            if not isinstance(v, cp.Variable):
                raise ValueError(f"variables[{i}]: expected a cvxpy Variable, got {type(v).__name__}")
            if v.id not in var_ids:
                raise ValueError(f"variables[{i}]: {_name(v)} is not a variable of the problem")
        for leaf in list(self.parameters) + list(self.variables):
            if leaf.is_complex():
                raise NotImplementedError(f"{_name(leaf)}: complex variables/parameters are not supported")
            if getattr(leaf, "_has_dim_reducing_attr", False) and not any(leaf.attributes.get(a) for a in _SYM_ATTRS):
                raise NotImplementedError(f"{_name(leaf)}: 'diag' and 'sparsity' attributes are not supported")

        self._jit_cache: dict = {}
        self.solver, path = self._choose_solver(problem, solver)
        self._canon, self._param_slots, self._var_slots, self._dual_slots = self._canonicalize(problem, path)

    # ------------------------------------------------------------------ construction
    def _choose_solver(self, problem: Any, solver: Optional[str]) -> tuple[str, str]:
        from cvxpy.utilities import scopes

        if self.gp:
            if not problem.is_dgp(dpp=True):
                what = "DGP" if not problem.is_dgp() else "DPP (dgp)"
                raise ValueError(f"problem: gp=True needs a DGP problem that is {what}-compliant")
            is_qp = False
        else:
            if not problem.is_dcp():
                raise ValueError(f"problem: not DCP (disciplined convex); offending: {_dcp_diagnosis(problem, False)}")
            with scopes.quad_form_dpp_scope():
                qp_dpp = problem.is_dpp()
                is_qp = qp_dpp and problem.is_qp()
            if not qp_dpp:
                raise ValueError(
                    "problem: not DPP (parameters must enter affinely, cf. cvxpy's DPP rules); offending: "
                    f"{_dcp_diagnosis(problem, True)}"
                )
        if solver is None:
            return ("osqp", "qp") if is_qp else ("scs", "conic")
        if not isinstance(solver, str):
            raise ValueError(f"solver: expected a solver name such as 'osqp' or 'scs', got {solver!r}")
        name = solver.lower()
        adapter = get_adapter(name)  # raises ValueError for unknown names
        if adapter.kind == "qp":
            if not is_qp:
                raise ValueError(f"solver: {name!r} needs a QP (quadratic objective, affine constraints); use 'scs'")
            return name, "qp"
        if adapter.kind == "conic":
            if not problem.is_dpp() and not self.gp:
                raise ValueError(
                    f"solver: {name!r} (conic path) cannot take a parametric quad_form; offending: "
                    f"{_dcp_diagnosis(problem, True)}. Use solver='osqp' or write sum_squares(L @ x)"
                )
            return name, "conic"
        raise ValueError(f"solver: {name!r} solves {adapter.kind} problems; expected a 'qp' or 'conic' solver")

    def _canonicalize(self, problem: Any, path: str):
        import cvxpy as cp
        from cvxpy.reductions.solvers.conic_solvers.scs_conif import dims_to_solver_dict
        from cvxpy.utilities import scopes

        gp_params: dict = {}
        var_map_extra: dict = {}
        target = problem
        if self.gp:
            dgp2dcp = cp.reductions.Dgp2Dcp(problem)
            target, _ = dgp2dcp.apply(problem)
            gp_params = dict(dgp2dcp.canon_methods._parameters)  # original -> log-space parameter
            var_map_extra = {k: v[0] for k, v in dgp2dcp.var_id_map.items()}
        scope = scopes.quad_form_dpp_scope() if path == "qp" else contextlib.nullcontext()
        with scope:
            if path == "qp":
                data, chain, _ = target.get_problem_data(solver=cp.OSQP)
            else:
                data, chain, _ = target.get_problem_data(solver=cp.SCS, solver_opts={"use_quad_obj": False})
        pp = data[cp.settings.PARAM_PROB]
        var_ids = chain.compose_var_id_map()
        if any(len(v) > 1 for v in var_ids.values()):
            raise NotImplementedError("complex variables are not supported")
        var_ids = {k: v[0] for k, v in var_ids.items()}
        param_ids = {k: v[0] for k, v in chain.compose_param_id_map().items()}
        constr_ids = chain.compose_constr_id_map()

        n = int(pp.x.size)
        m = int(sum(c.shape[0] * (c.shape[0] + 1) // 2 if type(c) is cp.constraints.PSD else c.size for c in pp.constraints))
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
                start, size = -1, 0  # parameter does not affect the solver data
            else:
                start, size = int(pp.param_id_to_col[cid]), int(pp.param_id_to_size[cid])
            param_slots.append(_ParamSlot(tuple(p.shape), start, size, triu, p in gp_params))

        # Variables -> slices of x.
        var_slots = []
        for v in self.variables:
            vid = var_map_extra.get(v.id, v.id)
            cid = var_ids.get(vid, vid)
            if cid not in pp.var_id_to_col:
                raise ValueError(f"variables: {_name(v)} does not appear in the canonicalised problem")
            triu = tuple(np.triu_indices(v.shape[-1])) if getattr(v, "_has_dim_reducing_attr", False) else None
            size = len(triu[0]) if triu is not None else int(v.size)
            var_slots.append(_VarSlot(tuple(v.shape), int(pp.var_id_to_col[cid]), size, triu, self.gp))

        # Constraints -> slices of y (cvxpy's dual_value convention); None when unsupported.
        offsets, off = {}, 0
        for c in pp.constraints:
            size = c.shape[0] * (c.shape[0] + 1) // 2 if type(c) is cp.constraints.PSD else c.size
            offsets[c.id] = (off, size, c)
            off += size
        dual_slots = []
        for con in problem.constraints if not self.gp else []:
            cid = constr_ids.get(con.id, con.id)
            if cid not in offsets:
                dual_slots.append(None)
                continue
            start, size, canon_con = offsets[cid]
            if isinstance(canon_con, (cp.constraints.Zero, cp.constraints.NonNeg)):
                dual_slots.append(_DualSlot(tuple(con.shape), start, size, "reshape", 0))
            elif isinstance(canon_con, _psd_types(cp)):
                if len(con.shape) != 2:  # a stack of PSD cones: not unpacked
                    dual_slots.append(None)
                else:
                    dual_slots.append(_DualSlot(tuple(con.shape), start, size, "psd", con.shape[0]))
            else:
                dual_slots.append(_DualSlot((size,), start, size, "flat", 0))
        canon = _Canon(path, n, m, n_zero, cone, p_map, q_map, ab_map, total)
        return canon, tuple(param_slots), tuple(var_slots), tuple(dual_slots)

    # ------------------------------------------------------------------ evaluation
    def _check_params(self, params: Sequence[Any]) -> tuple[list[jax.Array], list[bool], Optional[int]]:
        if len(params) != len(self.parameters):
            raise ValueError(f"params: expected {len(self.parameters)} arrays (one per parameter), got {len(params)}")
        arrays, batched, sizes = [], [], []
        for i, (value, p, slot) in enumerate(zip(params, self.parameters, self._param_slots)):
            label = f"parameter {i} ({p.name()})"
            try:
                arr = jnp.asarray(value)
            except TypeError:
                raise ValueError(f"{label}: expected an array, got {type(value).__name__}") from None
            if not jnp.issubdtype(arr.dtype, jnp.floating):
                arr = arr.astype(jnp.result_type(float))
            shape = slot.shape
            if arr.shape == shape:
                batched.append(False)
            elif arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
                batched.append(True)
                sizes.append(arr.shape[0])
            else:
                raise ValueError(f"{label}: expected shape {shape} or (batch, *{shape}), got {tuple(arr.shape)}")
            if _common.is_concrete(arr):
                a = np.asarray(arr)
                if not np.all(np.isfinite(a)):
                    raise ValueError(f"{label}: contains NaN or inf")
                if slot.log and not np.all(a > 0):
                    raise ValueError(f"{label}: a geometric program's parameters must be positive")
            arrays.append(arr)
        if len(set(sizes)) > 1:
            raise ValueError(f"params: batched parameters have different batch sizes {sizes}")
        return arrays, batched, (sizes[0] if sizes else None)

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
            if slot.start < 0:
                continue
            if used_by is not None and not np.any((used_by.cols >= slot.start) & (used_by.cols < slot.start + slot.size)):
                continue
            v = jnp.log(value) if slot.log else value
            flat = v[slot.triu] if slot.triu is not None else jnp.ravel(v, order="F")
            theta = theta.at[slot.start : slot.start + slot.size].set(flat.astype(dtype))
        return theta

    def _solve_single(self, params: Sequence[jax.Array], options: dict) -> tuple[jax.Array, jax.Array]:
        """Primal ``x`` and conic dual ``y`` of one instance."""
        from kktbridge.bridges._qp import solve_qp

        c = self._canon
        q = c.q_map(self._theta(params, c.q_map))[: c.n]
        # [A b] is stored column-major: A is the first m*n outputs, b the last m.
        a_map, b_map = c.ab_map.rows_slice(0, c.m * c.n), c.ab_map.rows_slice(c.m * c.n, c.m * (c.n + 1))
        A = jnp.reshape(a_map(self._theta(params, a_map)), (c.m, c.n), order="F")
        b = b_map(self._theta(params, b_map))
        z = c.n_zero
        if c.path == "qp":
            if c.p_map is not None:
                P = jnp.reshape(c.p_map(self._theta(params, c.p_map)), (c.n, c.n), order="F")
                P = 0.5 * (P + P.T)  # cvxpy stores the full symmetric P; this only removes roundoff
            else:
                P = jnp.zeros((c.n, c.n), q.dtype)
            # Rows of A x + b ∈ {0}^z × R_+^l:  A_z x = -b_z,  -A_l x ≤ b_l.
            sol = solve_qp(P, q, A[:z], -b[:z], -A[z:], b[z:], solver=self.solver, **options)
            # cvxpy's QP interface reports OSQP's multipliers (ν, λ) as the duals of these rows
            # (its QP chain orients equalities so that this agrees with the conic chain's y).
            y = jnp.concatenate([sol.eq_dual, sol.ineq_dual])
            return sol.x, y
        from kktbridge.bridges._conic import solve_conic

        # SCS form: (-A) x + s = b, s ∈ K.
        sol = solve_conic(-A, b, q, c.cone, solver=self.solver, **options)
        return sol.x, sol.y

    def _outputs(self, x: jax.Array, y: jax.Array, duals: bool):
        outs = []
        for slot in self._var_slots:
            seg = x[slot.start : slot.start + slot.size]
            if slot.triu is not None:
                k = slot.shape[-1]
                upper = jnp.zeros((k, k), x.dtype).at[slot.triu].set(seg)
                val = upper + upper.T - jnp.diag(jnp.diag(upper))
            else:
                val = jnp.reshape(seg, slot.shape, order="F")
            outs.append(jnp.exp(val) if slot.exp else val)
        if not duals:
            return tuple(outs)
        dvals = []
        for slot in self._dual_slots:
            seg = y[slot.start : slot.start + slot.size]
            if slot.kind == "reshape":
                dvals.append(jnp.reshape(seg, slot.shape, order="F"))
            elif slot.kind == "psd":
                # SCS svec: lower triangle column by column, off-diagonals scaled by √2.
                k = slot.order
                rows, cols = np.triu_indices(k)  # (col, row) of the lower triangle, column-major
                scale = np.where(rows == cols, 1.0, 1.0 / np.sqrt(2.0))
                low = jnp.zeros((k, k), y.dtype).at[cols, rows].set(seg * scale)
                dvals.append(low + low.T - jnp.diag(jnp.diag(low)))
            else:
                dvals.append(seg)
        return tuple(outs), tuple(dvals)

    def _run(self, params: Sequence[Any], solver_args: Optional[Mapping[str, Any]], duals: bool):
        if solver_args is not None and not isinstance(solver_args, Mapping):
            raise ValueError("solver_args: expected a dict of solver options")
        if duals:
            if self.gp:
                raise NotImplementedError("with_duals: dual values of geometric programs are not supported")
            bad = [i for i, s in enumerate(self._dual_slots) if s is None]
            if bad:
                raise NotImplementedError(
                    f"with_duals: the dual of constraint {bad[0]} (`{self.problem.constraints[bad[0]]}`) cannot be recovered"
                )
        options = {**self.solver_args, **(solver_args or {})}
        arrays, batched, batch = self._check_params(params)
        in_axes = None if batch is None else tuple(0 if b else None for b in batched)
        try:
            key = (duals, in_axes, tuple(sorted(options.items())))
            hash(key)
        except TypeError:  # unhashable option values: run op by op
            return self._build(options, duals, in_axes)(*arrays)
        fn = self._jit_cache.get(key)
        if fn is None:
            # Compiled once per (outputs, batching pattern, options); JAX retraces per shape/dtype.
            # Eager callers (cvxpylayers-style loops) then pay one compilation, not op-by-op
            # dispatch of the implicit-differentiation machinery.
            fn = self._jit_cache[key] = jax.jit(self._build(options, duals, in_axes))
        try:
            return fn(*arrays)
        except (jax.errors.JaxRuntimeError, ValueError):  # a cached executable reports ValueError
            if not all(_common.is_concrete(a) for a in arrays):
                raise
            # A solver failure raised inside the compiled call: rerun op by op so that the bridge
            # raises its own SolverError (with status) instead of XLA's wrapped runtime error.
            return self._build(options, duals, in_axes)(*arrays)

    def _build(self, options: dict, duals: bool, in_axes: Optional[tuple]):
        def single(*ps):
            x, y = self._solve_single(ps, options)
            return self._outputs(x, y, duals)

        if in_axes is None:
            return single
        return jax.vmap(single, in_axes=in_axes)

    def __call__(self, *params: Any, solver_args: Optional[Mapping[str, Any]] = None) -> tuple[jax.Array, ...]:
        """Optimal values of the requested variables, one array per variable.

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

        Duals follow cvxpy's ``constraint.dual_value`` convention (``λ ≥ 0`` for inequalities,
        equality multipliers with cvxpy's sign); a second-order-cone constraint yields its dual
        cone vector ``(t, x)`` flattened, a PSD constraint the symmetric dual matrix. All are
        differentiable like the primal outputs.

        Returns:
          ``(variables, duals)``.
        """
        return self._run(params, solver_args, duals=True)

    @property
    def path(self) -> str:
        """``"qp"`` (OSQP via ``solve_qp``) or ``"conic"`` (SCS via ``solve_conic``)."""
        return self._canon.path

    def __repr__(self) -> str:
        c = self._canon
        return f"CvxpyLayer(solver={self.solver!r}, path={c.path!r}, n={c.n}, m={c.m}, parameters={len(self.parameters)})"

r"""What the dense QP adapters (DAQP, ProxSuite, PIQP) share: data checks, convexity, the batch loop.

Every QP adapter receives ``P, q, A, b, G, h`` (dense NumPy; ``h`` may hold ``+inf`` for an absent
row) and optional warm starts ``x0, y0`` and returns ``x``, ``eq_dual`` (``ν``) and ``ineq_dual``
(``λ ≥ 0``) with kktbridge's sign convention

.. math:: Px + q + A^\top ν + G^\top λ = 0.

:class:`DenseQPAdapter` owns the batch loop: consecutive instances of a chunk share one solver
setup while ``P, A, G`` are shared by the batch (only ``q, b, h`` change), and a solver that holds
the GIL during its solve gets the whole batch as one chunk (a thread pool would only add setups;
measured in ``kktbridge/_bench/qp_solvers.py``). Subclasses implement three hooks:
:meth:`~DenseQPAdapter.setup`, :meth:`~DenseQPAdapter.update` and :meth:`~DenseQPAdapter.solve`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np

from kktbridge.adapters._base import ChunkedAdapter, HostSolution, quiet_stdout
from kktbridge.core._status import Status


#: The QP's matrices; each reaches an adapter either dense (``d["P"]``) or as coordinates
#: ``d["P_data"], d["P_rows"], d["P_cols"]`` (from a sparse ``solve_qp`` input: never densified
#: on the way, so solvers that take CSC get the pattern as given).
MATRICES = ("P", "A", "G")


def is_sparse(d: Mapping[str, np.ndarray]) -> bool:
    """Whether an instance carries its matrices as coordinates (``P_data``, ``P_rows``, ``P_cols``)."""
    return "P_data" in d


def sizes(d: Mapping[str, np.ndarray]) -> tuple[int, int, int]:
    """``(n, m_eq, m_ineq)`` of an instance, dense or sparse."""
    return d["q"].shape[0], d["b"].shape[0], d["h"].shape[0]


def matrix_shape(d: Mapping[str, np.ndarray], name: str) -> tuple[int, int]:
    n, m_eq, m_ineq = sizes(d)
    return {"P": (n, n), "A": (m_eq, n), "G": (m_ineq, n)}[name]


def coo(d: Mapping[str, np.ndarray], name: str):
    """SciPy COO matrix of ``name`` from a sparse instance (duplicates are summed by consumers)."""
    import scipy.sparse as sp

    rows, cols = np.asarray(d[name + "_rows"], np.int64), np.asarray(d[name + "_cols"], np.int64)
    return sp.coo_matrix((np.asarray(d[name + "_data"], np.float64), (rows, cols)), shape=matrix_shape(d, name))


def densify(d: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The instance with dense ``P, A, G`` (for solvers that only take dense matrices)."""
    if not is_sparse(d):
        return dict(d)
    out = {k: v for k, v in d.items() if not k.split("_")[0] in MATRICES or k in MATRICES}
    for name in MATRICES:
        out[name] = coo(d, name).toarray()
    return out


def matrices_shared(d: Mapping[str, np.ndarray], shared: frozenset) -> bool:
    """Whether ``P, A, G`` are the same for every instance of the batch."""
    keys = {k + "_data" for k in MATRICES} if is_sparse(d) else set(MATRICES)
    return keys <= shared


def failed(n: int, m_eq: int, m_ineq: int, status: Status, why: Any, iterations: int = 0) -> HostSolution:
    """A failed instance: NaN values of the right shapes, ``status`` and the native reason."""
    nan = lambda k: np.full(k, np.nan)  # noqa: E731
    return HostSolution({"x": nan(n), "eq_dual": nan(m_eq), "ineq_dual": nan(m_ineq)}, status, iterations, why)


def invalid_data(d: Mapping[str, np.ndarray]) -> Optional[str]:
    """Why an instance cannot be solved as given (``None`` when its data are fine).

    ``h`` may hold ``+inf`` (an absent row); NaN anywhere, or ``-inf`` in ``h`` (a row no point
    satisfies, which no solver reports consistently), is rejected before the solver sees it.
    """
    for k in ("P", "q", "A", "b", "G"):
        if not np.all(np.isfinite(d[k])):
            return f"non-finite data in {k}"
    if np.isnan(d["h"]).any() or np.isneginf(d["h"]).any():
        return "NaN or -inf in h"
    return None


def is_convex(P: np.ndarray) -> bool:
    r"""Whether the symmetric ``P`` is positive semidefinite up to rounding.

    A Cholesky factorisation of :math:`P + τI` with :math:`τ = 10^{-9}\max(1, \max|P_{ij}|)`
    succeeds for every PSD matrix (rounding perturbs eigenvalues by ~n·ε·‖P‖ ≪ τ) and fails for
    eigenvalues below ``-τ``. It costs one ``n³/3`` factorisation per setup -- needed because
    ProxSuite and PIQP report a saddle point of an indefinite QP as ``SOLVED``.
    """
    if P.shape[0] == 0:
        return True
    tau = 1e-9 * max(1.0, float(np.abs(P).max()))
    try:
        np.linalg.cholesky(P + tau * np.eye(P.shape[0]))
    except np.linalg.LinAlgError:
        return False
    return True


class DenseQPAdapter(ChunkedAdapter):
    """Base of the dense QP adapters: options, the chunk loop, failures and warm starts.

    Subclasses set :attr:`DEFAULT_OPTIONS`, :attr:`releases_gil`, :attr:`check_convexity` and
    implement :meth:`setup`, :meth:`update`, :meth:`solve` and :meth:`valid_options`.
    """

    kind: ClassVar[str] = "qp"
    #: defaults merged under the user's options (tight, derivative-grade tolerances).
    DEFAULT_OPTIONS: ClassVar[dict[str, Any]] = {}
    #: whether the native solve releases the GIL (then chunks run on the thread pool).
    releases_gil: ClassVar[bool] = False
    #: run :func:`is_convex` at setup (for solvers that do not detect an indefinite ``P``).
    check_convexity: ClassVar[bool] = True
    #: whether the previous instance's solution is a useful warm start for the next one.
    warm_start_across_batch: ClassVar[bool] = False

    @abc.abstractmethod
    def valid_options(self) -> list[str]:
        """Every option name the adapter accepts."""

    def validate_options(self, options: Mapping[str, Any]) -> None:
        valid = sorted(self.valid_options())
        for key in options:
            if key not in valid:
                raise ValueError(f"options: {key!r} is not a {self.name} setting; valid settings: {', '.join(valid)}")

    @abc.abstractmethod
    def setup(self, d: Mapping[str, np.ndarray], settings: Mapping[str, Any], /) -> Any:
        """A solver object set up for instance ``d`` (may raise; see :meth:`map_exception`)."""

    @abc.abstractmethod
    def update(self, solver: Any, d: Mapping[str, np.ndarray], settings: Mapping[str, Any], /) -> Any:
        """The solver set up for ``d``, whose ``P, A, G`` equal the setup's: update ``q, b, h``.

        May return a new solver object (e.g. when the pattern of infinite ``h`` rows changed).
        """

    @abc.abstractmethod
    def solve(self, solver: Any, d: Mapping[str, np.ndarray], warm: Optional[tuple[np.ndarray, np.ndarray]],
              settings: Mapping[str, Any], /) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, int]:
        """Solve; return ``(x, ν, λ, native_status, iterations)`` in kktbridge's convention.

        ``warm`` is ``(x0, y0)`` with ``y0 = (ν0, λ0)`` stacked, or ``None``.
        """

    def solve_batch(self, batch, shared, options):
        if batch and is_sparse(batch[0]):
            # Dense solvers: coordinates become dense matrices here, once per instance.
            batch = [densify(d) for d in batch]
            shared = frozenset(k.split("_")[0] if k.endswith("_data") else k for k in shared)
        from kktbridge.adapters._executor import ThreadExecutor, get_executor

        if self.releases_gil or len(batch) == 1 or not isinstance(get_executor(), ThreadExecutor):
            # Worker processes / Ray actors run in parallel whatever the GIL: let the executor split.
            return super().solve_batch(batch, shared, options)
        # The solve holds the GIL: threads would only add setups, so one chunk, one setup.
        return self._guarded_chunk(list(batch), shared, options)

    def solve_chunk(self, batch: Sequence[dict], shared: frozenset, options: Mapping[str, Any]) -> list[HostSolution]:
        settings = {**self.DEFAULT_OPTIONS, **options}
        with quiet_stdout(not settings.get("verbose", False)):
            return self._loop(batch, shared, settings)

    def _loop(self, batch: Sequence[dict], shared: frozenset, settings: Mapping[str, Any]) -> list[HostSolution]:
        n, m_eq, m_ineq = batch[0]["P"].shape[0], batch[0]["A"].shape[0], batch[0]["G"].shape[0]
        matrices_batched = not {"P", "A", "G"} <= shared
        solver, convex, prev, out = None, True, None, []
        for d in batch:
            why = invalid_data(d)
            if why is not None:
                out.append(failed(n, m_eq, m_ineq, Status.INVALID_PROBLEM, why))
                continue
            # Writable float64 copies: JAX hands over read-only buffers (which Cython bindings
            # refuse), and every solver computes in float64 whatever the input precision.
            d = {k: np.array(v, dtype=np.float64) for k, v in d.items()}
            d["P"] = 0.5 * (d["P"] + d["P"].T)
            try:
                if solver is None or matrices_batched:
                    solver, prev = None, None
                    convex = not self.check_convexity or is_convex(d["P"])
                    if convex:
                        solver = self.setup(d, settings)
                else:
                    solver = self.update(solver, d, settings)
                if not convex:
                    out.append(failed(n, m_eq, m_ineq, Status.NON_CONVEX, "P is not positive semidefinite"))
                    continue
                warm = (d["x0"], d["y0"]) if "x0" in d else (prev if self.warm_start_across_batch else None)
                x, nu, lam, native, iters = self.solve(solver, d, warm, settings)
            except Exception as e:  # noqa: BLE001 - the solver rejected this instance; set up afresh next time
                solver, prev = None, None
                out.append(failed(n, m_eq, m_ineq, self.map_exception(e), f"{type(e).__name__}: {e}"))
                continue
            status = self.map_status(native)
            if not status.ok:
                out.append(failed(n, m_eq, m_ineq, status, native, iters))
                continue
            prev = (x, np.concatenate([nu, lam]))
            values = {"x": np.asarray(x, np.float64), "eq_dual": np.asarray(nu, np.float64), "ineq_dual": np.asarray(lam, np.float64)}
            out.append(HostSolution(values, status, iters, native))
        return out

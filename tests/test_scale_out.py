"""Scale-out (issue 17): executors (threads, processes, Ray) and sharded batches.

Every executor must give the same solutions, statuses, NaN policy and derivatives as the default
threads; checks are against closed forms (projection onto a hyperplane) and against the threads
executor on the same batch. Sharding runs in subprocesses (``tests/_sharded_check.py``), since the
number of CPU devices is fixed when JAX initialises.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kktbridge as kb
from kktbridge.adapters import _executor
from kktbridge.adapters.osqp import OSQPAdapter
from tests._peers import peer

REPO = Path(__file__).resolve().parent.parent
N = 3
W = np.array([1.0, -2.0, 0.5])
# Direct solves at kktbridge's default tolerances (IPOPT tol 1e-10, OSQP eps 1e-9 + polish).
RTOL = 1e-6


def projection(x, p):
    return 0.5 * jnp.sum((x - p) ** 2)


def sum_to_one(x, p):
    return jnp.sum(x, keepdims=True) - 1.0


def nlp_loss(p, sparse=False):
    """``w·x*(p)`` with ``x*(p) = p - (Σp - 1)/n`` (projection onto ``Σx = 1``)."""
    return jnp.dot(W, kb.solve_nlp(projection, jnp.zeros(N), p, eq=sum_to_one, sparse=sparse, on_failure="nan").x)


def closed_form(params):
    x = params - (params.sum(axis=1, keepdims=True) - 1.0) / N
    return x @ W, np.broadcast_to(W - W.mean(), params.shape)


def qp_batch(q, h):
    """``min ½‖x‖² + qᵀx s.t. Σx = 1, x ≤ h`` per row; ``h`` all negative is infeasible.

    OSQP explicitly: the default ``solver="auto"`` picks DAQP for small problems, which holds the
    GIL and solves a batch in the calling thread, bypassing the executor.
    """
    def one(qi, hi):
        return kb.solve_qp(jnp.eye(N), qi, A=jnp.ones((1, N)), b=jnp.ones(1), G=jnp.eye(N), h=hi, solver="osqp",
                           on_failure="nan")

    return jax.vmap(one)(q, h)


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.fixture(scope="module")
def processes():
    ex = kb.ProcessExecutor(max_workers=2)
    yield ex
    ex.shutdown()


def params(seed=0, batch=6):
    return np.random.default_rng(seed).normal(size=(batch, N))


def went_through_workers(executor, solver: str) -> bool:
    """Whether a remote executor shipped a problem of ``solver`` to its workers (threads: trivially)."""
    if executor == "threads":
        return True
    return any(e.adapter.name == solver for e in _executor._PAYLOADS.values())


def check_nlp_batch(executor, sparse=False):
    _executor._PAYLOADS.clear()
    p = params()
    value, grad = closed_form(p)
    loss = lambda p: nlp_loss(p, sparse)  # noqa: E731
    f = jax.jit(jax.vmap(loss))
    g = jax.jit(jax.grad(lambda p: jnp.sum(jax.vmap(loss)(p))))
    with kb.use_executor(executor) as ex:
        assert kb.get_executor() is ex
        v1, g1 = np.asarray(f(jnp.asarray(p))), np.asarray(g(jnp.asarray(p)))
        v2 = np.asarray(f(jnp.asarray(p) + 0.5))  # second call: setups warm in the workers
    assert rel(v1, value) <= RTOL and rel(g1, grad) <= RTOL
    assert rel(v2, closed_form(p + 0.5)[0]) <= RTOL
    assert went_through_workers(executor, "ipopt")


def check_failures_like_threads(executor):
    _executor._PAYLOADS.clear()
    rng = np.random.default_rng(1)
    q = rng.normal(size=(6, N))
    h = np.full((6, N), 2.0)
    h[[1, 4]] = -1.0  # Σx = 1 with every x_i ≤ -1: infeasible
    fun = jax.jit(qp_batch)
    ref = fun(q, h)
    with kb.use_executor(executor):
        out = fun(q, h)
        np.testing.assert_array_equal(np.asarray(out.status), np.asarray(ref.status))
        assert [int(s) for s in out.status] == [0, int(kb.Status.INFEASIBLE), 0, 0, int(kb.Status.INFEASIBLE), 0]
        x = np.asarray(out.x)
        assert np.isnan(x[[1, 4]]).all() and np.isfinite(x[[0, 2, 3, 5]]).all()
        assert rel(x[[0, 2, 3, 5]], np.asarray(ref.x)[[0, 2, 3, 5]]) <= RTOL
        # NaN derivatives for the failed instances only.
        gq = np.asarray(jax.grad(lambda q: jnp.sum(qp_batch(q, h).x * W))(jnp.asarray(q)))
        assert np.isnan(gq[[1, 4]]).all() and np.isfinite(gq[[0, 2, 3, 5]]).all()
        # on_failure="raise" under jit raises SolverError from the host, as with threads.
        strict = jax.jit(jax.vmap(lambda qi, hi: kb.solve_qp(jnp.eye(N), qi, A=jnp.ones((1, N)), b=jnp.ones(1),
                                                              G=jnp.eye(N), h=hi, solver="osqp").x))
        with pytest.raises(Exception, match="INFEASIBLE"):
            np.asarray(strict(q, h))
    assert went_through_workers(executor, "osqp")


def test_default_is_threads_and_selection_is_scoped():
    assert isinstance(kb.get_executor(), kb.ThreadExecutor)
    with kb.use_executor("processes", max_workers=2) as ex:
        assert isinstance(ex, kb.ProcessExecutor) and ex.workers == 2
        assert kb.get_executor() is ex
        assert kb.use_executor("processes", max_workers=2).executor is ex  # named executors are reused
    assert isinstance(kb.get_executor(), kb.ThreadExecutor)
    with pytest.raises(ValueError, match="executor"):
        kb.use_executor("gpu")
    with pytest.raises(ValueError, match="keyword"):
        kb.use_executor(kb.ThreadExecutor(), max_workers=2)
    with pytest.raises(ValueError, match="max_workers"):
        kb.ProcessExecutor(max_workers=0)


def test_threads_nlp_batch_matches_closed_form():
    check_nlp_batch("threads")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_processes_nlp_batch_matches_closed_form(processes, sparse):
    if sparse:
        peer("asdex")  # the sparse oracles' sparsity detection
    check_nlp_batch(processes, sparse)


def test_default_qp_solver_batches_reach_remote_workers(processes):
    """solver="auto" (DAQP here) holds the GIL in a thread pool, but processes run it in parallel."""
    _executor._PAYLOADS.clear()
    q = np.random.default_rng(2).normal(size=(6, N))

    def x(q):
        return jax.vmap(lambda qi: kb.solve_qp(jnp.eye(N), qi, A=jnp.ones((1, N)), b=jnp.ones(1)).x)(q)

    ref = np.asarray(x(jnp.asarray(q)))
    with kb.use_executor(processes):
        out = np.asarray(x(jnp.asarray(q)))
    # Projection of -q onto Σx = 1: closed form.
    np.testing.assert_allclose(ref, -q - (np.sum(-q, axis=1, keepdims=True) - 1.0) / N, atol=1e-9)
    np.testing.assert_allclose(out, ref, atol=1e-9)
    assert went_through_workers("processes", "daqp")


def test_processes_statuses_and_nan_policy_match_threads(processes):
    check_failures_like_threads(processes)


def test_processes_name_an_unpicklable_function(processes):
    lock = threading.Lock()

    def objective_holding_a_lock(x, p):
        with lock:
            pass
        return jnp.sum((x - p) ** 2)

    f = jax.jit(jax.vmap(lambda p: kb.solve_nlp(objective_holding_a_lock, jnp.zeros(N), p, on_failure="nan").x))
    with kb.use_executor(processes):
        with pytest.raises(Exception, match="objective_holding_a_lock.*cannot be sent to worker processes"):
            np.asarray(f(jnp.asarray(params())))


class CrashingOSQP(OSQPAdapter):
    """OSQP whose worker process dies on an instance with ``q[0] > 100`` (a solver segfault)."""

    def solve_chunk(self, batch, shared, options):
        import multiprocessing

        if multiprocessing.parent_process() is not None and any(d["q"][0] > 100 for d in batch):
            os._exit(1)
        return super().solve_chunk(batch, shared, options)


def test_processes_worker_death_fails_its_instances_and_recovers(processes):
    solver = CrashingOSQP()

    def solve(q):
        return jax.vmap(lambda qi: kb.solve_qp(jnp.eye(N), qi, A=jnp.ones((1, N)), b=jnp.ones(1), solver=solver,
                                               on_failure="nan"))(q)

    q = np.random.default_rng(2).normal(size=(4, N))
    x_ref = -q + (q.sum(axis=1, keepdims=True) + 1.0) / N  # x* of min ½‖x‖² + qᵀx s.t. Σx = 1
    poisoned = q.copy()
    poisoned[3, 0] = 1000.0
    with kb.use_executor(processes):
        out = solve(jnp.asarray(poisoned))
        status, x = np.asarray(out.status), np.asarray(out.x)
        # The poisoned instance's part fails; a part still in flight when the pool broke may fail
        # too (concurrent.futures fails every pending task), but nothing is ever silently wrong.
        assert list(status[2:]) == [int(kb.Status.FAILED)] * 2 and np.isnan(x[2:]).all()
        for i in range(2):
            assert status[i] == int(kb.Status.FAILED) and np.isnan(x[i]).all() or (
                status[i] == 0 and rel(x[i], x_ref[i]) <= RTOL)
        again = solve(jnp.asarray(q))  # a fresh pool
        assert (np.asarray(again.status) == 0).all() and rel(again.x, x_ref) <= RTOL


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # Ray starts its daemons by fork+exec
def test_ray_executor():
    ray = peer("ray")
    ex = kb.RayExecutor(num_cpus=2, num_actors=2)
    try:
        check_nlp_batch(ex)
        check_failures_like_threads(ex)
    finally:
        ex.shutdown()
        ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": str(REPO)}


def test_sharded_mesh_and_shard_map_match_unsharded():
    res = subprocess.run([sys.executable, "-m", "tests._sharded_check", "mesh"], cwd=REPO, env=_env(4),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "OK mesh" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]


def test_two_processes_with_jax_distributed_solve_their_own_shards():
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "tests._sharded_check", "distributed", str(rank), port], cwd=REPO,
                              env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "OK distributed" in out, out[-3000:] + err[-3000:]

"""Subprocess body of the sharding tests (``tests/test_scale_out.py``).

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be set before JAX initialises, hence a
separate process. Modes:

* ``mesh`` (4 devices): ``jax.jit`` with the batch sharded over a 4-device mesh, and
  ``jax.shard_map`` over it, for ``solve_qp`` (OSQP), ``solve_nlp`` (IPOPT) and ``CvxpyLayer``:
  values and gradients must equal the unsharded ones; ``shard_map`` with ``check_vma=True`` must
  raise the clear ``ValueError``;
* ``distributed RANK PORT`` (2 devices per process): one of two processes joined by
  ``jax.distributed.initialize`` on localhost; a batch sharded over the 4 global devices is solved
  under ``shard_map``, each process solving only its own instances (counted by a recording
  executor), and under plain ``jax.jit`` (one callback on device 0's process); values and
  gradients of its shards are checked against closed forms.

Prints ``OK <mode> <max relative error>`` on success; raises otherwise.
"""

from __future__ import annotations

import sys

import numpy as np

# Sharded and unsharded runs solve the same instances, but OSQP warm-starts each instance from the
# previous one of its chunk and the chunks differ (per device vs per thread), so solutions agree to
# the solver's tolerance (eps 1e-9, then polished), not to round-off; IPOPT and the conic layer solve
# every instance from the same start and agree to round-off.
RTOL = 1e-7
# Closed forms (distributed mode): IPOPT and OSQP at kktbridge's tight default tolerances.
RTOL_CLOSED = 1e-6


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _objective(x, p):
    import jax.numpy as jnp

    return 0.5 * jnp.sum((x - p) ** 2) + 0.25 * jnp.sum(x**4)


def _sum_to_one(x, p):
    import jax.numpy as jnp

    return jnp.sum(x, keepdims=True) - 1.0


def _projection(x, p):
    import jax.numpy as jnp

    return 0.5 * jnp.sum((x - p) ** 2)


def mesh_mode() -> float:
    import cvxpy as cp
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P_

    jax.config.update("jax_enable_x64", True)
    import kktbridge as kb

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("b",))
    rows = NamedSharding(mesh, P_("b"))
    rng = np.random.default_rng(0)
    n = 4
    M = rng.normal(size=(n, n))
    Pm, G, h = M @ M.T + np.eye(n), rng.normal(size=(3, n)), rng.uniform(0.1, 1.0, 3)

    def qp_one(qi):
        s = kb.solve_qp(Pm, qi, G=G, h=h, solver="osqp", on_failure="nan")
        return jnp.arange(1.0, n + 1) @ s.x + jnp.sum(s.ineq_dual)

    def nlp_one(pi):
        s = kb.solve_nlp(_objective, jnp.zeros(3), pi, eq=_sum_to_one, on_failure="nan")
        return jnp.sum(s.x * jnp.arange(1.0, 4.0)) + s.eq_dual[0]

    x = cp.Variable(3)
    y = cp.Parameter(3)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.sum(x) == 1, x >= 0])
    layer = kb.CvxpyLayer(prob, parameters=[y], variables=[x])

    def layer_one(yi):
        (xi,) = layer(yi)
        return jnp.sum(xi * jnp.arange(1.0, 4.0) ** 2)

    cases = (
        (qp_one, rng.normal(size=(8, n))),
        (nlp_one, rng.normal(size=(8, 3))),
        (layer_one, rng.normal(size=(8, 3))),
    )
    worst = 0.0
    for one, batch in cases:
        batch = jnp.asarray(batch)
        loss = jax.vmap(one)
        ref_v = jax.jit(loss)(batch)
        ref_g = jax.jit(jax.grad(lambda b: jnp.sum(loss(b))))(batch)
        assert np.all(np.isfinite(np.asarray(ref_v))) and np.all(np.isfinite(np.asarray(ref_g)))
        sharded = jax.device_put(batch, rows)
        # 1. jit over sharded inputs: XLA runs the callback once, on the full batch.
        v = jax.jit(loss)(sharded)
        g = jax.jit(jax.grad(lambda b: jnp.sum(loss(b))))(sharded)
        worst = max(worst, _rel(v, ref_v), _rel(g, ref_g))
        # 2. shard_map: each device's callback solves that device's rows.
        sm = jax.shard_map(loss, mesh=mesh, in_specs=P_("b"), out_specs=P_("b"), check_vma=False)
        v2 = jax.jit(sm)(sharded)
        g2 = jax.jit(jax.grad(lambda b: jnp.sum(sm(b))))(sharded)
        assert v2.sharding.is_equivalent_to(rows, v2.ndim), v2.sharding
        worst = max(worst, _rel(v2, ref_v), _rel(g2, ref_g))
        # 3. shard_map with check_vma=True would sum derivatives over devices: refused clearly.
        strict = jax.shard_map(loss, mesh=mesh, in_specs=P_("b"), out_specs=P_("b"))
        try:
            jax.jit(strict)(sharded)
        except ValueError as e:
            assert "check_vma=False" in str(e), e
        else:
            raise AssertionError("shard_map with check_vma=True was not refused")
    return worst


def distributed_mode(rank: int, port: int) -> float:
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=rank,
                               local_device_ids=[0, 1])
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P_

    import kktbridge as kb

    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = Mesh(np.array(jax.devices()), ("b",))
    rows = NamedSharding(mesh, P_("b"))
    n, batch = 3, 8
    # Every process builds the same global data and contributes its own rows.
    params = np.random.default_rng(0).normal(size=(batch, n))
    w = np.array([1.0, -2.0, 0.5])

    class Recording(kb.ThreadExecutor):
        solved = 0

        def solve_batch(self, adapter, batch, shared, options):
            Recording.solved += len(batch)
            return super().solve_batch(adapter, batch, shared, options)

    def nlp_one(p):  # projection onto the hyperplane sum(x) = 1: x* = p - (sum p - 1)/n
        return jnp.dot(w, kb.solve_nlp(_projection, jnp.zeros(n), p, eq=_sum_to_one, on_failure="nan").x)

    def qp_one(p):  # the same projection as a QP (OSQP)
        s = kb.solve_qp(jnp.eye(n), -p, A=jnp.ones((1, n)), b=jnp.ones(1), solver="osqp", on_failure="nan")
        return jnp.dot(w, s.x)

    x_star = params - (params.sum(axis=1, keepdims=True) - 1.0) / n
    value = x_star @ w
    grad = np.broadcast_to(w - w.mean(), params.shape)  # d(w·x*)/dp = (I - 11ᵀ/n) w
    worst = 0.0
    with kb.use_executor(Recording()):
        for one in (nlp_one, qp_one):
            glob = jax.make_array_from_callback(params.shape, rows, lambda idx: params[idx])
            sm = jax.jit(jax.shard_map(jax.vmap(one), mesh=mesh, in_specs=P_("b"), out_specs=P_("b"), check_vma=False))
            before = Recording.solved
            v = sm(glob)
            _, pullback = jax.vjp(sm, glob)
            (g,) = pullback(jax.make_array_from_callback((batch,), rows, lambda idx: np.ones(batch)[idx]))
            for shard in v.addressable_shards:
                worst = max(worst, _rel(shard.data, value[shard.index]))
            for shard in g.addressable_shards:
                worst = max(worst, _rel(shard.data, grad[shard.index]))
            # This process solved its own rows only (solve and pullback stages each see them once).
            local = batch // 2
            assert Recording.solved - before in (local, 2 * local), (Recording.solved - before, local)
            # Plain jit over the global array: XLA runs the callback once, on device 0's process,
            # and moves the rows there and back (gloo collectives): slower, equally exact.
            plain = jax.jit(jax.vmap(one))
            v3 = plain(glob)
            g3 = jax.jit(jax.grad(lambda b: jnp.sum(jax.vmap(one)(b))))(glob)
            for shard in v3.addressable_shards:
                worst = max(worst, _rel(shard.data, value[shard.index]))
            for shard in g3.addressable_shards:
                worst = max(worst, _rel(shard.data, grad[shard.index]))
    jax.distributed.shutdown()
    return worst


def main(argv):
    mode = argv[1]
    if mode == "mesh":
        worst, tol = mesh_mode(), RTOL
    elif mode == "distributed":
        worst, tol = distributed_mode(int(argv[2]), int(argv[3])), RTOL_CLOSED
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    assert worst <= tol, worst
    print(f"OK {mode} {worst:.2e}", flush=True)


if __name__ == "__main__":
    main(sys.argv)

r"""Suite ``scale-out``: batch throughput on threads vs worker processes vs Ray, and sharded batches.

Two batches, each solved once per executor (after a warm-up batch that starts the workers and
compiles the problem structure in each of them), with the same data:

* **NLP** -- 2,000 (quick: 200) instances of the ``nlp`` suite's problem with ``n = 4``
  (:math:`\min \tfrac12\|x-p\|^2 + \tfrac14\sum x_i^4` s.t. :math:`\mathbf 1^\top x = 1`,
  :math:`\|x\|^2 \le 0.5`, :math:`x_i x_{i+1} \le c`), IPOPT, ``jax.vmap`` over ``p``. IPOPT
  calls its JAX-compiled oracles from Python, holding the GIL, so threads serialise; processes
  and Ray actors do not. Target: processes and Ray ≥ 1.6× the threads' throughput on 2 cores.
* **QP** -- 20,000 (quick: 2,000) random strictly convex QPs with ``n = 5`` and 5 inequalities,
  OSQP (explicitly: ``solver="auto"`` picks DAQP here, which holds the GIL and solves a batch in the
  calling thread whatever the executor), ``vmap`` over ``(q, h)`` with ``P, G`` shared (one factorisation per chunk). OSQP releases
  the GIL, so threads already scale: the target is that shipping the batch to workers costs at most
  10 % (throughput ≥ 1/1.1 of the threads').

**Sharded**: in a subprocess with two CPU devices (``--xla_force_host_platform_device_count=2``),
the QP batch under ``jax.shard_map`` over a 2-device mesh (each device's callback solves its own
rows) against the unsharded ``jax.jit(jax.vmap(...))``; target: equal results (max relative
difference ≤ 1e-7: OSQP warm-starts along a chunk and the chunks differ, so they agree to the
solver tolerance).

Ray runs locally with ``ray.init(num_cpus=2)`` (skipped with a note when Ray is not installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from kktbridge._bench import Context, SuiteResult, Target, max_rel_diff

NLP_N = 4
NLP_BATCH = {True: 200, False: 2000}
QP_N, QP_M = 5, 5
QP_BATCH = {True: 2000, False: 20000}
TARGET_NLP_SPEEDUP = 1.6
TARGET_QP_OVERHEAD = 1.1
TARGET_SHARDED_DIFF = 1e-7
EXECUTORS = ("threads", "processes", "ray")


def steps(quick: bool) -> int:
    return 2 * len(EXECUTORS) + 1


def _nlp_case(batch: int):
    import jax
    import jax.numpy as jnp

    import kktbridge as kb
    from kktbridge._bench.nlp import eq, ineq, objective

    def one(p):
        return kb.solve_nlp(objective, jnp.zeros(NLP_N), p, eq=eq, ineq=ineq, on_failure="nan").x

    f = jax.jit(jax.vmap(one))
    rng = np.random.default_rng(0)
    return f, jnp.asarray(rng.standard_normal((batch, NLP_N))), jnp.asarray(rng.standard_normal((8, NLP_N)))


def _qp_data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((QP_N, QP_N))
    P = M @ M.T + np.eye(QP_N)
    G = rng.standard_normal((QP_M, QP_N))
    return P, G, rng.standard_normal((batch, QP_N)), rng.uniform(0.1, 1.0, (batch, QP_M))


def _qp_fun(P, G):
    import jax

    import kktbridge as kb

    def one(q, h):
        return kb.solve_qp(P, q, G=G, h=h, solver="osqp", on_failure="nan").x

    return jax.vmap(one)


def _qp_case(batch: int):
    import jax
    import jax.numpy as jnp

    P, G, q, h = _qp_data(batch)
    f = jax.jit(_qp_fun(P, G))
    return f, (jnp.asarray(q), jnp.asarray(h)), (jnp.asarray(q[:8]), jnp.asarray(h[:8]))


def _timed(fun, args) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = np.asarray(fun(*args))
    return time.perf_counter() - t0, out


def _timed_cpu(fun, args) -> tuple[float, np.ndarray, float]:
    """Wall time, output and the cores this process kept busy (its CPU time / wall time)."""
    c0 = time.process_time()
    wall, out = _timed(fun, args)
    return wall, out, (time.process_time() - c0) / wall


def run(ctx: Context) -> SuiteResult:
    import kktbridge as kb

    res = SuiteResult("scale-out")
    quick = ctx.quick
    ray_started = False
    try:
        import ray  # noqa: F401

        have_ray = True
    except ImportError:
        have_ray = False
        res.notes.append("Ray is not installed (pip install 'kktbridge[ray]'): its rows are skipped")
    cases = {
        "nlp": (_nlp_case(NLP_BATCH[quick]), "IPOPT"),
        "qp": (_qp_case(QP_BATCH[quick]), "OSQP"),
    }
    throughput: dict[tuple[str, str], float] = {}
    reference: dict[str, np.ndarray] = {}
    labels, series = [], {name: [] for name in EXECUTORS}
    executors = {
        "threads": kb.ThreadExecutor(),
        "processes": kb.ProcessExecutor(max_workers=2),
    }
    if have_ray:
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            ray_started = True
        executors["ray"] = kb.RayExecutor(num_actors=2)
    try:
        for case, ((fun, args, warm), solver) in cases.items():
            args = args if isinstance(args, tuple) else (args,)
            warm = warm if isinstance(warm, tuple) else (warm,)
            batch = int(args[0].shape[0])
            full = fun.lower(*args).compile()  # compiled once, outside the timings (executor-independent)
            labels.append(f"{case} x{batch}")
            for name in EXECUTORS:
                ctx.step(f"scale-out {case} {name}")
                if name not in executors:
                    series[name].append(None)
                    continue
                with kb.use_executor(executors[name]) as ex:
                    t_first, _ = _timed(fun, warm)  # starts workers, compiles the structure in each
                    wall, out, cores = _timed_cpu(full, args)
                # CPU cost per instance: this process's (threads), plus the workers' (others).
                cpu_s = cores * wall + getattr(ex, "last_worker_cpu_s", 0.0)
                if name == "threads":
                    reference[case] = out
                rate = batch / wall
                throughput[(case, name)] = rate
                series[name].append(rate)
                ok = np.isfinite(out).all(axis=-1)
                res.rows.append({
                    "case": f"{case} ({solver})", "executor": name, "batch": batch, "warmup_s": t_first,
                    "wall_s": wall, "inst_per_s": rate, "driver_cores": cores,
                    "cpu_ms_per_inst": 1e3 * cpu_s / batch,
                    "vs_threads": rate / throughput[(case, "threads")],
                    "solved": int(ok.sum()),
                    "max_rel_diff_vs_threads": max_rel_diff(out[ok], reference[case][ok]),
                })
    finally:
        for ex in executors.values():
            ex.shutdown()
        if ray_started:
            import ray

            ray.shutdown()
    for name in ("processes", "ray"):
        nlp = throughput.get(("nlp", name))
        qp = throughput.get(("qp", name))
        if nlp is not None:
            res.targets.append(Target(f"NLP (IPOPT) {name} / threads throughput", nlp / throughput[("nlp", "threads")],
                                      TARGET_NLP_SPEEDUP, ">="))
        if qp is not None:
            res.targets.append(Target(f"QP (OSQP) threads / {name} throughput (time ratio)",
                                      throughput[("qp", "threads")] / qp, TARGET_QP_OVERHEAD, "<="))
    ctx.step("scale-out sharded")
    sharded = _run_sharded(QP_BATCH[quick])
    if "error" in sharded:
        res.notes.append(f"sharded run failed: {sharded['error'][-500:]}")
        diff = float("nan")
    else:
        diff = sharded["max_rel_diff"]
        res.rows.append({"case": "qp (OSQP) sharded", "executor": "threads, shard_map over 2 devices",
                         "batch": sharded["batch"], "wall_s": sharded["sharded_s"],
                         "inst_per_s": sharded["batch"] / sharded["sharded_s"],
                         "vs_threads": sharded["unsharded_s"] / sharded["sharded_s"],
                         "max_rel_diff_vs_threads": diff})
    res.targets.append(Target("sharded vs unsharded max relative difference", diff, TARGET_SHARDED_DIFF, "<="))
    res.notes.append(f"{os.cpu_count()} CPU cores; throughput in instances/s after a warm-up batch of 8 (compilation excluded); "
                     "vs_threads = throughput / threads' throughput; driver_cores = CPU time of this process / wall time (threads "
                     "near 1 on IPOPT: the GIL serialises its Python oracle calls); cpu_ms_per_inst = CPU time per "
                     "instance in the driver plus the workers: on a machine shared with other jobs, compare it "
                     "with the throughput (processes can only beat threads if they get the cores)")
    res.plot = {"x": labels, "series": series, "ylabel": "instances / s", "logy": True}
    return res


def _run_sharded(batch: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "kktbridge._bench.scale_out", "--sharded", str(batch)],
                          env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": proc.stdout + proc.stderr}
    return json.loads(lines[-1])


def _sharded_main(batch: int) -> None:
    """Subprocess body: the QP batch unsharded vs under ``shard_map`` over every CPU device."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P_

    jax.config.update("jax_enable_x64", True)
    P, G, q, h = _qp_data(batch)
    fun = _qp_fun(P, G)
    mesh = Mesh(np.array(jax.devices()), ("b",))
    rows = NamedSharding(mesh, P_("b"))
    plain = jax.jit(fun)
    sharded = jax.jit(jax.shard_map(fun, mesh=mesh, in_specs=(P_("b"), P_("b")), out_specs=P_("b"), check_vma=False))
    qs, hs = jax.device_put(jnp.asarray(q), rows), jax.device_put(jnp.asarray(h), rows)
    args = (jnp.asarray(q), jnp.asarray(h))
    plain, sharded = plain.lower(*args).compile(), sharded.lower(qs, hs).compile()
    t_plain, ref = _timed(plain, args)
    t_sharded, out = _timed(sharded, (qs, hs))
    print(json.dumps({"batch": batch, "devices": len(jax.devices()), "unsharded_s": t_plain, "sharded_s": t_sharded,
                      "max_rel_diff": max_rel_diff(out, ref)}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sharded":
        _sharded_main(int(sys.argv[2]))

"""Pure-JAX core: implicit differentiation, linear solvers, optimality conditions, projections."""

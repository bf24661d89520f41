r"""PyTorch front end: ``kktbridge.torch.CvxpyLayer``, a drop-in for ``cvxpylayers.torch.CvxpyLayer``.

The module is a thin :class:`torch.nn.Module` around the JAX layer
(:class:`kktbridge.bridges._cvxpy.CvxpyLayer`). A :class:`torch.autograd.Function` runs the JAX
layer under :func:`jax.vjp` in ``forward`` and applies the returned pullback in ``backward``:

.. math::  \bar θ = \Big(\frac{∂x^\star}{∂θ}\Big)^{\!\top} \bar x,

where the Jacobian-vector product is the implicit-function-theorem derivative of the bridge, so
torch parameters upstream of the layer receive exact (solver-accurate) gradients.

Data cross the frameworks through DLPack (zero-copy on CPU) with a NumPy copy as fallback (e.g.
for devices JAX does not share with torch). Inputs are recorded with ``save_for_backward`` so
that torch's version counters reject in-place changes between ``forward`` and ``backward`` (the
JAX residuals may alias them); outputs are copied because torch code may modify them in place.

Precision: float64 tensors are computed in float64, whatever JAX's global x64 flag says (it is
switched on for the duration of the call; see ``_precision_scope``); float32 tensors in float32 unless
JAX's x64 mode is on globally. Outputs and gradients come back in the inputs' dtype and on their
device. Failures raise what the JAX layer raises eagerly: :class:`~kktbridge.SolverError` (a
``diffcp.SolverError`` when diffcp is installed) or ``ValueError``, never JAX's runtime error.

``torch.func`` transforms (``vmap``, ``grad``) and ``torch.compile`` treat the layer as an opaque
:class:`torch.autograd.Function` without a ``vmap`` rule or ``setup_context``: use batched
inputs (a leading batch axis) instead of ``torch.func.vmap``, and let ``torch.compile`` graph-break
around the layer.

PyTorch is optional: ``import kktbridge`` never imports this module; importing it without torch
installed raises an :class:`ImportError` that says so.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Mapping, Optional, Sequence

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "kktbridge.torch needs PyTorch, which is not installed; install it (`pip install torch`) "
        "or use the JAX layer kktbridge.bridges._cvxpy.CvxpyLayer"
    ) from e

import jax
import jax.numpy as jnp
import numpy as np

from kktbridge.bridges._cvxpy import CvxpyLayer as _JaxLayer
from kktbridge.bridges._cvxpy import MissingParameterError

__all__ = ["CvxpyLayer"]


def _to_jax(t: "torch.Tensor", dtype: Any) -> jax.Array:
    """Torch tensor -> JAX array of ``dtype`` (DLPack when possible)."""
    t = t.detach()
    if not t.is_floating_point():
        t = t.to(torch.float64)
    try:
        arr = jax.dlpack.from_dlpack(t.contiguous())
    except Exception:  # unsupported device/dtype for zero-copy: go through host memory
        arr = jnp.asarray(t.cpu().numpy())
    return arr.astype(dtype)


def _to_torch(a: jax.Array, dtype: "torch.dtype", device: "torch.device", copy: bool) -> "torch.Tensor":
    """JAX array -> torch tensor of ``dtype`` on ``device`` (DLPack when possible)."""
    try:
        t = torch.utils.dlpack.from_dlpack(a)
    except Exception:
        t = torch.from_numpy(np.array(a))
        copy = False  # already a private copy
    if copy:
        t = t.clone()
    return t.to(dtype=dtype, device=device)


def _precision(params: Sequence["torch.Tensor"]) -> tuple["torch.dtype", bool]:
    """Result dtype of the inputs and whether the solve must run in float64.

    float64 in means float64 computed, whatever JAX's global x64 flag says (see
    :func:`_precision_scope`); float32 (or half) inputs are computed in float32, or in float64
    when x64 is on globally; outputs are returned in the inputs' dtype.
    """
    floats = [p.dtype for p in params if p.is_floating_point()]
    dtype = floats[0] if floats else torch.get_default_dtype()
    for d in floats[1:]:
        dtype = torch.promote_types(dtype, d)
    return dtype, dtype == torch.float64


_X64_LOCK = threading.RLock()


@contextlib.contextmanager
def _precision_scope(x64: bool):
    """Run a call in float64 when ``x64`` (float64 tensors), whatever JAX's global flag says.

    ``jax.enable_x64(True)`` alone is not enough: it is thread-local, and the solver's host
    callback runs on an XLA thread where JAX would canonicalise its float64 results to float32.
    So the global flag is switched on for the duration of the call (under a lock, restored after).
    Other threads running JAX concurrently see x64 on meanwhile; with ``jax_enable_x64`` set
    globally (recommended) nothing is switched.
    """
    if not x64 or jax.config.jax_enable_x64:
        yield
        return
    with _X64_LOCK:
        jax.config.update("jax_enable_x64", True)
        try:
            yield
        finally:
            jax.config.update("jax_enable_x64", False)


def _surface(error: Exception, rerun) -> None:
    """Re-raise a failure from inside JAX's compiled/traced call the way an eager JAX call does.

    The torch forward runs the layer under ``jax.vjp`` (traced), where a solver failure surfaces
    as a ``JaxRuntimeError`` wrapping the message. Re-running the primal call eagerly (only on
    this failure path) raises the bridge's own :class:`~kktbridge.SolverError` or ``ValueError``.
    """
    rerun()  # raises the eager error; if it somehow succeeds, the original error stands
    raise error


class _LayerFunction(torch.autograd.Function):
    """``(layer, solver_args, duals, *params) -> flat outputs`` with a JAX-vjp backward."""

    @staticmethod
    def forward(ctx, layer: _JaxLayer, solver_args: Optional[Mapping[str, Any]], duals: bool, *params):
        dtype, x64 = _precision(params)
        device = params[0].device if params else torch.device("cpu")
        x64 = x64 or bool(jax.config.jax_enable_x64)
        jdtype = jnp.float64 if x64 else jnp.float32

        def flat(*ps):
            return tuple(layer._run(ps, solver_args, duals))  # with duals: variables then duals, flat

        with _precision_scope(x64):
            jax_in = [_to_jax(p, jdtype) for p in params]
            layer._check_params(jax_in)  # eager value checks (NaN, sign/PSD attributes, shapes)
            try:
                if any(ctx.needs_input_grad[3:]):
                    outs, pullback = jax.vjp(flat, *jax_in)
                else:
                    outs, pullback = flat(*jax_in), None
            except jax.errors.JaxRuntimeError as e:
                _surface(e, lambda: flat(*jax_in))
        ctx.pullback = pullback
        ctx.x64 = x64
        ctx.out_meta = [(o.shape, o.dtype) for o in outs]
        ctx.in_meta = [(p.dtype, p.device) for p in params]
        ctx.save_for_backward(*params)
        return tuple(_to_torch(o, dtype, device, copy=True) for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        ctx.saved_tensors  # noqa: B018 - raises if an input was modified in place since forward
        if ctx.pullback is None:  # forward ran without any input requiring grad
            return (None, None, None) + tuple(None for _ in ctx.in_meta)
        with _precision_scope(ctx.x64):
            cot = tuple(
                jnp.zeros(shape, dt) if g is None else _to_jax(g, dt).reshape(shape)
                for g, (shape, dt) in zip(grads, ctx.out_meta)
            )
            gin = ctx.pullback(cot)
        out = [_to_torch(g, dt, dev, copy=False) if dt.is_floating_point else None for g, (dt, dev) in zip(gin, ctx.in_meta)]
        return (None, None, None, *out)


class CvxpyLayer(torch.nn.Module):
    """Differentiable cvxpy problem as a :class:`torch.nn.Module` (tensors in, tensors out).

    Same constructor and call convention as ``cvxpylayers.torch.CvxpyLayer``:
    ``layer(*param_tensors)`` returns a tuple with one tensor per requested variable; each
    parameter tensor may carry one leading batch axis. Gradients flow to every input tensor that
    requires them. See :class:`kktbridge.bridges._cvxpy.CvxpyLayer` for the arguments, the
    supported problems and the errors raised.

    Example::

        layer = kktbridge.torch.CvxpyLayer(prob, parameters=[A, b], variables=[x])
        (x_star,) = layer(A_t, b_t)
        x_star.sum().backward()
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
        super().__init__()
        self.layer = _JaxLayer(problem, parameters, variables, solver=solver, solver_args=solver_args, gp=gp)

    @staticmethod
    def _tensors(params: Sequence[Any]) -> list:
        out = []
        for i, p in enumerate(params):
            if p is None:
                raise MissingParameterError(
                    f"params[{i}]: got None; a tensor must be provided for each CVXPY parameter"
                )
            if not isinstance(p, torch.Tensor):
                try:
                    p = torch.as_tensor(np.asarray(p, dtype=np.float64))
                except (TypeError, ValueError):
                    raise ValueError(f"params[{i}]: expected a tensor, got {type(p).__name__}") from None
            out.append(p)
        return out

    def forward(self, *params: Any, solver_args: Optional[Mapping[str, Any]] = None) -> tuple:
        """Optimal values of the requested variables (a tuple of tensors)."""
        return _LayerFunction.apply(self.layer, solver_args, False, *self._tensors(params))

    def with_duals(self, *params: Any, solver_args: Optional[Mapping[str, Any]] = None) -> tuple[tuple, tuple]:
        """``(variables, duals)``: also one dual tensor per constraint of the problem (cvxpy's sign)."""
        outs = _LayerFunction.apply(self.layer, solver_args, True, *self._tensors(params))
        k = len(self.layer.variables)
        return tuple(outs[:k]), tuple(outs[k:])

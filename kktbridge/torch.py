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

Precision: the solve runs in float64 when JAX has ``jax_enable_x64`` on (recommended: the
default solver tolerances are 1e-9), otherwise in float32; outputs and gradients come back in
the inputs' dtype and on their device.

PyTorch is optional: ``import kktbridge`` never imports this module; importing it without torch
installed raises an :class:`ImportError` that says so.
"""

from __future__ import annotations

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

__all__ = ["CvxpyLayer"]


def _jax_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _to_jax(t: "torch.Tensor") -> jax.Array:
    """Torch tensor -> JAX array (DLPack when possible), cast to the solve dtype."""
    t = t.detach()
    if not t.is_floating_point():
        t = t.to(torch.float64)
    try:
        arr = jax.dlpack.from_dlpack(t.contiguous())
    except Exception:  # unsupported device/dtype for zero-copy: go through host memory
        arr = jnp.asarray(t.cpu().numpy())
    return arr.astype(_jax_dtype())


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


class _LayerFunction(torch.autograd.Function):
    """``(layer, solver_args, duals, *params) -> flat outputs`` with a JAX-vjp backward."""

    @staticmethod
    def forward(ctx, layer: _JaxLayer, solver_args: Optional[Mapping[str, Any]], duals: bool, *params):
        floats = [p.dtype for p in params if p.is_floating_point()]
        dtype = floats[0] if floats else torch.get_default_dtype()
        device = params[0].device if params else torch.device("cpu")
        jax_in = [_to_jax(p) for p in params]

        def flat(*ps):
            out = layer._run(ps, solver_args, duals)
            return tuple(out[0]) + tuple(out[1]) if duals else tuple(out)

        outs, pullback = jax.vjp(flat, *jax_in)
        ctx.pullback = pullback
        ctx.out_meta = [(o.shape, o.dtype) for o in outs]
        ctx.in_meta = [(p.dtype, p.device) for p in params]
        ctx.save_for_backward(*params)
        return tuple(_to_torch(o, dtype, device, copy=True) for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        ctx.saved_tensors  # noqa: B018 - raises if an input was modified in place since forward
        cot = tuple(
            jnp.zeros(shape, dt) if g is None else _to_jax(g).astype(dt).reshape(shape)
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

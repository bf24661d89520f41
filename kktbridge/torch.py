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

Transforms. The Function is written in the ``torch.func`` style (``forward`` without ``ctx``,
``setup_context``, a ``vmap`` rule; its backward is another Function with a ``vmap`` rule that
applies :func:`jax.vmap` to the pullback), so these work:

* ``torch.func.grad``, ``vjp`` and ``jacrev`` (``jacrev`` vmaps the backward over a basis of
  cotangents: one JAX ``vmap`` of the pullback, no re-solve);
* ``torch.func.vmap``: the vmapped axis becomes the layer's own leading batch axis (one host call);
  if another input already carries a batch axis the two are merged into one batch of problems;
  ``vmap(grad(f))`` gives per-sample gradients from that batched solve's pullback;
* ``torch.compile``: TorchDynamo cannot trace the JAX call, so the layer is run eagerly through
  a graph break (``torch._disable_dynamo``) and the torch code around it is compiled.

Not supported, and why: forward mode (``torch.func.jvp``, ``jacfwd``, ``hessian``) -- the Function
has no ``jvp`` rule; second derivatives (``create_graph=True``, ``jacrev(jacrev)``) -- the backward
runs JAX, which torch cannot differentiate (use the JAX layer for higher derivatives);
``vmap(jacrev(f))`` -- the backward would be vmapped at two levels at once (take ``jacrev`` of the
batched call); ``torch.compile(fullgraph=True)`` -- the layer is a graph break by construction;
``torch.autograd.functional.jacobian(vectorize=True)`` -- torch's legacy batching ignores ``vmap``
rules. These raise (torch's error, or ``NotImplementedError`` naming the limitation).

PyTorch is optional: ``import kktbridge`` never imports this module; importing it without torch
installed raises an :class:`ImportError` that says so.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, NoReturn, Optional, Sequence

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
from kktbridge.core._checks import x64_enabled

if TYPE_CHECKING:  # cvxpy is imported by the JAX layer when it is needed
    import cvxpy as cp
    from jax.typing import ArrayLike

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
        t = torch.from_dlpack(a)
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
    if not x64 or x64_enabled():
        yield
        return
    with _X64_LOCK:
        jax.config.update("jax_enable_x64", True)
        try:
            yield
        finally:
            jax.config.update("jax_enable_x64", False)


def _surface(error: Exception, rerun: Callable[[], Any]) -> NoReturn:
    """Re-raise a failure from inside JAX's compiled/traced call the way an eager JAX call does.

    The torch forward runs the layer under ``jax.vjp`` (traced), where a solver failure surfaces
    as a ``JaxRuntimeError`` wrapping the message. Re-running the primal call eagerly (only on
    this failure path) raises the bridge's own :class:`~kktbridge.SolverError` or ``ValueError``.
    """
    rerun()  # raises the eager error; if it somehow succeeds, the original error stands
    raise error


class _State:
    """What the backward pass needs from one forward call: the JAX pullback and the metadata.

    ``pullback`` is ``None`` when the forward pass did not linearise (no input required grad);
    :meth:`pullback_for` then re-runs the layer under :func:`jax.vjp` (one more solve) from the
    inputs, so a backward pass is never silently skipped.
    """

    def __init__(self, layer, solver_args, duals, x64, pullback, out_meta, in_meta):
        self.layer, self.solver_args, self.duals = layer, solver_args, duals
        self.x64: bool = x64
        self.pullback: Optional[Callable] = pullback
        #: (shape, dtype) of every output, and (dtype, device) of every input tensor.
        self.out_meta: list[tuple[tuple[int, ...], Any]] = out_meta
        self.in_meta: list[tuple["torch.dtype", "torch.device"]] = in_meta
        self.vmapped = None  # (vmap size, own batch size or None, own-batch flags) when made by the vmap rule

    def flat(self):
        layer, solver_args, duals = self.layer, self.solver_args, self.duals
        return lambda *ps: tuple(layer._run(ps, solver_args, duals))  # with duals: variables then duals

    def pullback_for(self, params: Sequence["torch.Tensor"]):
        if self.pullback is None:
            jdtype = jnp.float64 if self.x64 else jnp.float32
            with _precision_scope(self.x64):
                self.pullback = jax.vjp(self.flat(), *[_to_jax(p, jdtype) for p in params])[1]
        return self.pullback


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (grad, jacrev, vmap, ...) is active around this call."""
    try:
        return torch._C._functorch.maybe_current_level() is not None  # pyright: ignore[reportAttributeAccessIssue]  (private, unstubbed; guarded)
    except AttributeError:  # private API moved: assume a transform may need the pullback
        return True


def _forward(layer, solver_args, duals, params, need_vjp: bool) -> tuple[tuple, _State]:
    """Run the JAX layer on torch tensors; linearise it (``jax.vjp``) when ``need_vjp``."""
    dtype, x64 = _precision(params)
    device = params[0].device if params else torch.device("cpu")
    x64 = x64 or x64_enabled()
    jdtype = jnp.float64 if x64 else jnp.float32
    state = _State(layer, solver_args, duals, x64, None, [], [(p.dtype, p.device) for p in params])  # out_meta: set below
    flat = state.flat()
    with _precision_scope(x64):
        jax_in = [_to_jax(p, jdtype) for p in params]
        layer._check_params(jax_in)  # eager value checks (NaN, sign/PSD attributes, shapes)
        try:
            if need_vjp:
                outs, state.pullback = jax.vjp(flat, *jax_in)
            else:
                outs = flat(*jax_in)
        except jax.errors.JaxRuntimeError as e:
            _surface(e, lambda: flat(*jax_in))
    state.out_meta = [(o.shape, o.dtype) for o in outs]
    return tuple(_to_torch(o, dtype, device, copy=True) for o in outs), state


#: Per thread: whether the current ``_apply`` call may be differentiated (decided outside the
#: Function, where grad mode and ``requires_grad`` are still visible), and the last forward's
#: state, handed from ``forward`` to ``setup_context`` (torch calls them back to back).
_GRAD_WANTED = threading.local()
_LAST = threading.local()


def _move_batch(t: "torch.Tensor", dim: Optional[int], size: int) -> "torch.Tensor":
    """The tensor with its ``vmap`` axis first (broadcast to ``size`` if it has none)."""
    if dim is None:
        return t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(dim, 0)


class _LayerFunction(torch.autograd.Function):
    """``(layer, solver_args, duals, *params) -> flat outputs`` with a JAX-vjp backward.

    Written in the ``torch.func``-compatible style (``forward`` without ``ctx``, ``setup_context``,
    a ``vmap`` rule, and a backward made of another Function), so ``torch.func.grad``, ``vjp``,
    ``jacrev`` and ``vmap`` compose with it.
    """

    @staticmethod
    def forward(layer, solver_args, duals, *params):
        # torch runs forward with grad mode off and (under torch.func) on unwrapped tensors, so
        # whether a gradient may follow is decided by the caller (`_apply`); default: it may.
        outs, state = _forward(layer, solver_args, duals, params, getattr(_GRAD_WANTED, "value", True))
        _LAST.value = (outs, state)
        return outs

    @staticmethod
    def setup_context(ctx, inputs, output):
        last: Optional[tuple[tuple, _State]] = getattr(_LAST, "value", None)
        if last is None or len(last[0]) != len(output) or last[1].layer is not inputs[0]:
            raise RuntimeError("kktbridge.torch: setup_context did not follow its forward call")  # torch contract
        ctx.state = last[1]
        ctx.save_for_backward(*inputs[3:])  # torch's version counters then reject in-place changes

    @staticmethod
    def backward(ctx, *grads):
        params = ctx.saved_tensors  # raises if an input was modified in place since forward
        gin = _Pullback.apply(ctx.state, len(grads), *grads, *params)
        return (None, None, None, *(g if p.is_floating_point() else None for g, p in zip(gin, params)))

    @staticmethod
    def vmap(info, in_dims, layer, solver_args, duals, *params):
        """``torch.func.vmap``: the vmapped axis becomes the layer's own leading batch axis.

        A parameter that already carries its own batch axis (``vmap`` over batched inputs) has the
        two axes merged into one batch of ``vmap size × own size`` problems, solved in one call.
        """
        size = info.batch_size
        dims = in_dims[3:]
        moved = [_move_batch(p, d, size) for p, d in zip(params, dims)]
        own = [p.dim() - 1 > len(cp_param.shape) for p, cp_param in zip(moved, layer.parameters)]
        inner = next((int(p.shape[1]) for p, o in zip(moved, own) if o), None)
        if inner is not None:  # merge (vmap, own batch) into one leading axis
            moved = [(p if o else p.unsqueeze(1).expand(size, inner, *p.shape[1:])).reshape(size * inner, *p.shape[2 - (not o):])
                     for p, o in zip(moved, own)]
        outs = _LayerFunction.apply(layer, solver_args, duals, *moved)
        _LAST.value[1].vmapped = (size, inner, own)  # how to map gradients back (vmap of grad)
        if inner is not None:
            outs = tuple(o.reshape(size, inner, *o.shape[1:]) for o in outs)
        return outs, tuple(0 for _ in outs)


class _Pullback(torch.autograd.Function):
    """``(state, n, *cotangents, *params) -> input gradients``: the JAX pullback as a Function.

    A separate Function so that ``torch.func`` transforms can see through the backward pass: its
    ``vmap`` rule maps the pullback over a batch of cotangents with :func:`jax.vmap`, which is
    what ``torch.func.jacrev`` needs.
    """

    @staticmethod
    def forward(state, n, *args):
        grads, params = args[:n], args[n:]
        return _pull(state, params, grads, batched=False)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            "kktbridge.torch.CvxpyLayer: second derivatives (double backward, create_graph=True, "
            "torch.func.hessian) are not supported; use the JAX layer kktbridge.CvxpyLayer for them"
        )

    @staticmethod
    def vmap(info, in_dims, state, n, *args):
        """Two cases: a batch of cotangents for one solve (``jacrev``: ``jax.vmap`` of the
        pullback), or the backward of a solve that the vmap rule batched (``vmap(grad(f))``:
        that solve's own, batched, pullback; gradients of merged or broadcast inputs folded back)."""
        grads, params = args[:n], args[n:]
        size = info.batch_size
        grads = [_move_batch(g, d, size) for g, d in zip(grads, in_dims[2:2 + n])]
        if all(d is None for d in in_dims[2 + n:]) and state.vmapped is None:
            out = _pull(state, params, grads, batched=True)
        elif state.vmapped is not None and state.vmapped[0] == size:
            _, inner, own = state.vmapped
            out = _pull(state, params, grads, batched=False)
            if inner is not None:  # undo the merge of (vmap, own batch); sum over broadcast copies
                out = tuple(g.reshape(size, inner, *g.shape[1:]) if o else g.reshape(size, inner, *g.shape[1:]).sum(1)
                            for g, o in zip(out, own))
        else:
            raise NotImplementedError(
                "kktbridge.torch.CvxpyLayer: this nesting of torch.func transforms around the layer "
                "(vmap of a backward pass over inputs batched by another vmap) is not supported"
            )
        return out, tuple(0 for _ in out)


def _pull(state: _State, params, grads, batched: bool) -> tuple:
    """Input gradients (one tensor per parameter) from output cotangents; ``batched``: leading axis."""
    pullback = state.pullback_for(params)
    with _precision_scope(state.x64):
        cot = tuple(
            _to_jax(g, dt).reshape((-1, *shape) if batched else shape) for g, (shape, dt) in zip(grads, state.out_meta)
        )
        gin = jax.vmap(pullback)(cot) if batched else pullback(cot)
    return tuple(
        _to_torch(g, dt if dt.is_floating_point else torch.float64, dev, copy=False)
        for g, (dt, dev) in zip(gin, state.in_meta)
    )


def _apply(layer, solver_args, duals, params) -> tuple:
    """``_LayerFunction.apply``, telling its forward whether a gradient may be asked for.

    Under ``torch.compile`` the call goes through :data:`_apply_eager`: TorchDynamo cannot trace
    the JAX call (DLPack, host callbacks), so it graph-breaks and runs the layer eagerly.
    """
    if torch.compiler.is_compiling():
        return _apply_eager(layer, solver_args, duals, params)
    _GRAD_WANTED.value = torch.is_grad_enabled() and (any(p.requires_grad for p in params) or _functorch_active())
    try:
        return _LayerFunction.apply(layer, solver_args, duals, *params)
    finally:
        del _GRAD_WANTED.value


# torch._disable_dynamo imports TorchDynamo (seconds) only when first called, i.e. only under
# torch.compile, where it is loaded anyway; torch.compiler.disable would import it right here.
_apply_eager = torch._disable_dynamo(_apply)  # pyright: ignore[reportPrivateImportUsage]  (private on purpose, see above)


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
        problem: "cp.Problem",
        parameters: Sequence["cp.Parameter"],
        variables: Sequence["cp.Variable"],
        *,
        solver: Optional[str] = None,
        solver_args: Optional[Mapping[str, Any]] = None,
        gp: bool = False,
    ) -> None:
        super().__init__()
        self.layer = _JaxLayer(problem, parameters, variables, solver=solver, solver_args=solver_args, gp=gp)

    @staticmethod
    def _tensors(params: Sequence["torch.Tensor | ArrayLike | None"]) -> list["torch.Tensor"]:
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

    def forward(self, *params: "torch.Tensor | ArrayLike", solver_args: Optional[Mapping[str, Any]] = None) -> tuple:
        """Optimal values of the requested variables (a tuple of tensors)."""
        return _apply(self.layer, solver_args, False, self._tensors(params))

    def with_duals(self, *params: "torch.Tensor | ArrayLike", solver_args: Optional[Mapping[str, Any]] = None) -> tuple[tuple, tuple]:
        """``(variables, duals)``: also one dual tensor per constraint of the problem (cvxpy's sign)."""
        outs = _apply(self.layer, solver_args, True, self._tensors(params))
        k = len(self.layer.variables)
        return tuple(outs[:k]), tuple(outs[k:])

"""PyTorch integration: the router as an autograd Function, and a gate module that takes the place
of ``softmax + topk`` in an MoE layer.

    gate = carl.torch.CarlGate("carl", topology="configs/topologies/h800-2x8.json", k=2)
    weights, experts, aux = gate(logits)        # logits [T, E] = router(x); weights [T, k]
    ...                                         # dispatch x to experts, combine with weights
    (task_loss + aux).backward()                # gradients of gates and router losses -> logits
    gate.last.cost.inter_node_bytes             # the plan of this step's decision

Forward runs in C (carl_step_route: route, plan, cost). Backward returns
``d(weights)/d(logits)^T dweights`` (carl_router_backward) plus ``dloss * dlogits`` (the router
losses' gradient computed during the route): the C trainer's router backward. The router state
(lossfree bias, carl's controller, warm start) is updated from the step's loads after the
backward pass by default (update="backward", as the C trainer does), at once with
update="forward", or by calling gate.update() with update="manual". A forward under
torch.no_grad() or in eval mode never updates it.

Logits of any floating dtype and device are routed in float32 on the CPU (a copy when they are
not float32 CPU tensors already, none when they are); outputs and gradients go back to the
logits' device (gradients in the logits' dtype).
"""

import numpy as np
import torch

from .errors import DtypeError, InvalidError, ShapeError
from .router import Router

UPDATES = ("backward", "forward", "manual")


def _cpu_f32(t, name):
    if not isinstance(t, torch.Tensor):
        raise InvalidError("%s: expected a torch.Tensor, got %s" % (name, type(t).__name__))
    if not t.is_floating_point():
        raise DtypeError("%s: %s tensor, expected a floating dtype (routed in float32)" % (name, t.dtype))
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()


class RouteFunction(torch.autograd.Function):
    """apply(logits, router, src, update, box) -> (weights [T, k], experts [T, k] int64, loss []).

    box: a dict that receives the RouteResult under "result" (the cost, the losses by name)."""

    @staticmethod
    def forward(ctx, logits, router, src, update, box):
        if logits.dim() != 2:
            raise ShapeError("logits: %d dimensions (shape %s), expected 2 [T, E]" % (logits.dim(), list(logits.shape)))
        z = _cpu_f32(logits, "logits")
        s = None
        if src is not None:
            if isinstance(src, torch.Tensor):
                if src.dtype not in (torch.int32, torch.int64):
                    raise DtypeError("src: %s tensor, expected int32 or int64 device ids" % src.dtype)
                s = src.detach().to(device="cpu", dtype=torch.int32).contiguous().numpy()
            else:
                s = src
        res = router.route(z.numpy(), src=s, update=(update == "forward"), grad=True)
        ctx.res, ctx.router, ctx.update = res, router, update
        ctx.device, ctx.dtype = logits.device, logits.dtype
        ctx.save_for_backward(logits)  # an in-place change of the logits before backward is an error
        if box is not None:
            box["result"] = res
        dev = logits.device
        weights = torch.from_numpy(res.weights).to(dev)
        experts = torch.from_numpy(res.experts).to(device=dev, dtype=torch.int64)
        loss = torch.tensor(res.loss_total, dtype=torch.float32, device=dev)
        ctx.mark_non_differentiable(experts)
        return weights, experts, loss

    @staticmethod
    def backward(ctx, dweights, dexperts, dloss):
        ctx.saved_tensors  # noqa: B018 (checks that the logits were not modified in place)
        res, router = ctx.res, ctx.router
        T, k = res.experts.shape
        if dweights is None:
            dw = np.zeros((T, k), np.float32)
        else:
            dw = dweights.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        dz = router.backward(res, dw)
        if dloss is not None:
            g = float(dloss)
            dz += res.dlogits if g == 1.0 else np.float32(g) * res.dlogits
        if ctx.update == "backward" and not res.updated:
            router.update(res)
        return torch.from_numpy(dz).to(device=ctx.device, dtype=ctx.dtype), None, None, None, None


def route(logits, router, src=None, update="backward"):
    """Route logits [T, E] (a tensor with grad) with a carl.Router: returns (weights [T, k],
    experts [T, k] int64 (-1 where dropped), loss (the router losses, a 0-d tensor), result)."""
    if update not in UPDATES:
        raise InvalidError("update: %r is not one of %s" % (update, ", ".join(UPDATES)))
    if not isinstance(router, Router):
        raise InvalidError("router: expected a carl.Router, got %s" % type(router).__name__)
    box = {}
    if update == "backward" and not (torch.is_grad_enabled() and logits.requires_grad):
        update = "manual"  # no backward will come: the state stays as it is
    w, e, loss = RouteFunction.apply(logits, router, src, update, box)
    return w, e, loss, box["result"]


class CarlGate(torch.nn.Module):
    """Drop-in for ``softmax + topk``: forward(logits [T, E], src=None) -> (weights [T, k],
    experts [T, k] int64, loss).

    CarlGate(router="carl", topology=None, placement=None, update="backward", **router_options);
    router may also be a carl.Router. The last RouteResult is gate.last (cost, losses, experts);
    gate.router is the carl.Router (state, save/load). In eval mode the state is not updated."""

    def __init__(self, router="carl", topology=None, placement=None, update="backward", **options):
        super().__init__()
        if update not in UPDATES:
            raise InvalidError("update: %r is not one of %s" % (update, ", ".join(UPDATES)))
        if isinstance(router, Router):
            if options or topology is not None or placement is not None:
                raise InvalidError("CarlGate: with a Router, give topology, placement and options to the Router")
            self.router = router
        else:
            self.router = Router(router, topology, placement, **options)
        self.update_mode = update
        self.last = None

    @property
    def k(self):
        return self.router.k

    def forward(self, logits, src=None):
        mode = self.update_mode if self.training else "manual"
        w, e, loss, res = route(logits, self.router, src, mode)
        self.last = res
        return w, e, loss

    def update(self):
        """With update="manual": update the router state from the last forward's loads."""
        if self.last is not None and not self.last.updated:
            self.router.update(self.last)

    def extra_repr(self):
        return "router=%r, k=%d, update=%r" % (self.router.name, self.router.k, self.update_mode)

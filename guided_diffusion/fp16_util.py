"""Mixed-precision optimisation as the release does it: fp32 master weights beside an fp16 model, a dynamic
log2 loss scale (start 20, +fp16_scale_growth per good step, -1 and skip on a non-finite gradient).

Beyond the release: a non-finite *loss* is told apart from a gradient overflow (the scale is not
lowered for it), fp32 training also skips steps with non-finite gradients, and the norms are computed
with torch._foreach_norm with a single host sync per step (the release syncs twice per parameter).
"""

import math

import torch as th
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from . import dist_util, logger

STEP_TAKEN = "ok"
GRAD_OVERFLOW = "grad_overflow"
NONFINITE_LOSS = "nonfinite_loss"


def get_param_groups_and_shapes(named_model_params):
    """Split parameters as the release does for fp16 master weights: [(scalars/vectors, -1), (matrices, (1, -1))]."""
    named_model_params = list(named_model_params)
    scalar_vector = [(n, p) for n, p in named_model_params if p.ndim <= 1]
    matrix = [(n, p) for n, p in named_model_params if p.ndim > 1]
    return [(scalar_vector, (-1)), (matrix, (1, -1))]


def make_master_params(param_groups_and_shapes):
    """One flat fp32 master tensor per group (the layout of the release's fp16 optimizer state)."""
    master_params = []
    for group, shape in param_groups_and_shapes:
        flat = _flatten_dense_tensors([p.detach().float() for _, p in group]).view(shape)
        master_params.append(th.nn.Parameter(flat))
    return master_params


def model_grads_to_master_grads(param_groups_and_shapes, master_params):
    """Copy the (fp16) model gradients into the flat fp32 master gradients."""
    for master, (group, shape) in zip(master_params, param_groups_and_shapes):
        grads = [p.grad.float() if p.grad is not None else th.zeros_like(p, dtype=th.float32) for _, p in group]
        master.grad = _flatten_dense_tensors(grads).view(shape)


def master_params_to_model_params(param_groups_and_shapes, master_params):
    """Copy the flat fp32 master values back into the model's parameters (casting to their dtype)."""
    for master, (group, _) in zip(master_params, param_groups_and_shapes):
        params = [p for _, p in group]
        for p, value in zip(params, _unflatten_dense_tensors(master.detach().view(-1), params)):
            p.detach().copy_(value)


def master_params_to_state_dict(model, param_groups_and_shapes, master_params, use_fp16):
    """The model's state dict with every parameter taken (in fp32) from `master_params`."""
    state_dict = model.state_dict()
    if use_fp16:
        for master, (group, _) in zip(master_params, param_groups_and_shapes):
            params = [p for _, p in group]
            for (name, _), value in zip(group, _unflatten_dense_tensors(master.detach().view(-1), params)):
                state_dict[name] = value
    else:
        for (name, _), value in zip(model.named_parameters(), master_params):
            state_dict[name] = value
    return state_dict


def state_dict_to_master_params(model, state_dict, use_fp16):
    """fp32 master tensors (same layout as make_master_params / model.parameters()) from a state dict."""
    named = [(name, state_dict[name]) for name, _ in model.named_parameters()]
    if use_fp16:
        groups = get_param_groups_and_shapes(named)
        return [_flatten_dense_tensors([v.float() for _, v in group]).view(shape) for group, shape in groups]
    return [v for _, v in named]


def zero_grad(params):
    """Drop the gradients of `params` (set to None, as torch's zero_grad does by default)."""
    for p in params:
        p.grad = None


class MixedPrecisionTrainer:
    """Owns the master parameters, the loss scale and the decision to take or skip a step.

    model:              the module being trained, in float32: with use_fp16 its weights become the fp32
                        master weights, then its convert_to_fp16() casts the torso to half precision.
    use_fp16:           keep flat fp32 master copies and scale the loss by 2**lg_loss_scale.
    fp16_scale_growth:  added to lg_loss_scale after every step taken.
    initial_lg_loss_scale: log2 of the first loss scale (20 for diffusion models, 16 for classifiers).
    master_weights:     a float32 state dict to take the fp16 master weights from (the checkpoint a run
                        resumes from: the fp16 model holds its values rounded); default: the model's own.
    After `optimize`, `last_status` is STEP_TAKEN, GRAD_OVERFLOW or NONFINITE_LOSS.
    """

    def __init__(self, *, model, use_fp16=False, fp16_scale_growth=1e-3,
                 initial_lg_loss_scale=20.0, master_weights=None):
        self.model, self.use_fp16, self.fp16_scale_growth = model, use_fp16, fp16_scale_growth
        self.model_params = list(model.parameters())
        self.master_params = self.model_params
        self.param_groups_and_shapes = None
        self.lg_loss_scale = initial_lg_loss_scale
        self.last_status = STEP_TAKEN
        self._loss_sum = None
        if use_fp16:
            if master_weights is None and any(p.dtype == th.float16 for p in self.model_params):
                logger.warn("the model's weights are already float16, so the fp32 master weights start from "
                            "the rounded values: build it in float32 (use_fp16=False) and let the trainer "
                            "cast it, as the release and the training scripts do")
            self.param_groups_and_shapes = get_param_groups_and_shapes(model.named_parameters())
            self.master_params = make_master_params(self.param_groups_and_shapes)
            if master_weights is not None:
                for master, value in zip(self.master_params, self.state_dict_to_master_params(master_weights)):
                    master.data.copy_(value)
            model.convert_to_fp16()

    def zero_grad(self):
        zero_grad(self.model_params)
        self._loss_sum = None

    def backward(self, loss):
        """Backpropagate `loss` (a scalar), scaled by 2**lg_loss_scale when use_fp16."""
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        if self.use_fp16:
            (loss * 2 ** self.lg_loss_scale).backward()
        else:
            loss.backward()

    def optimize(self, opt):
        """Step `opt` unless the loss or the gradients are non-finite; returns whether it stepped."""
        if self.use_fp16:
            logger.logkv_mean("lg_loss_scale", self.lg_loss_scale)
            model_grads_to_master_grads(self.param_groups_and_shapes, self.master_params)
        grad_scale = 2 ** self.lg_loss_scale if self.use_fp16 else 1.0
        grad_norm, param_norm, loss_finite = self._norms_and_loss_check(grad_scale)
        if not loss_finite:
            self.last_status = NONFINITE_LOSS
        elif not math.isfinite(grad_norm):
            self.last_status = GRAD_OVERFLOW
            if self.use_fp16:
                self.lg_loss_scale -= 1
                logger.log(f"Found NaN, decreased lg_loss_scale to {self.lg_loss_scale}")
        else:
            self.last_status = STEP_TAKEN
        if self.last_status != STEP_TAKEN:
            zero_grad(self.master_params)
            return False
        logger.logkv_mean("grad_norm", grad_norm)
        logger.logkv_mean("param_norm", param_norm)
        if self.use_fp16:
            th._foreach_mul_([p.grad for p in self.master_params], 1.0 / grad_scale)
        opt.step()
        if self.use_fp16:
            zero_grad(self.master_params)
            master_params_to_model_params(self.param_groups_and_shapes, self.master_params)
            self.lg_loss_scale += self.fp16_scale_growth
        return True

    def _norms_and_loss_check(self, grad_scale):
        """(grad norm / grad_scale, param norm, loss finite on every rank) with one host sync."""
        params = [p for p in self.master_params if p.grad is not None]
        ref = self.master_params[0]
        grad_sq = _sum_of_squares([p.grad for p in params], ref)
        param_sq = _sum_of_squares([p.detach() for p in self.master_params], ref)
        loss = self._loss_sum if self._loss_sum is not None else th.zeros((), device=ref.device)
        loss_bad = (~th.isfinite(loss)).float().to(ref.device)
        if dist_util.get_world_size() > 1:
            dist.all_reduce(loss_bad, op=dist.ReduceOp.MAX)
        grad_sq, param_sq, loss_bad = th.stack([grad_sq, param_sq, loss_bad]).tolist()
        return grad_sq ** 0.5 / grad_scale, param_sq ** 0.5, loss_bad == 0.0

    def master_params_to_state_dict(self, master_params):
        return master_params_to_state_dict(self.model, self.param_groups_and_shapes, master_params,
                                           self.use_fp16)

    def state_dict_to_master_params(self, state_dict):
        return state_dict_to_master_params(self.model, state_dict, self.use_fp16)

    def state_dict(self):
        """The loss-scale state needed for an exact resume."""
        return {"lg_loss_scale": self.lg_loss_scale}

    def load_state_dict(self, state):
        self.lg_loss_scale = float(state["lg_loss_scale"])


def _sum_of_squares(tensors, ref):
    if not tensors:
        return th.zeros((), device=ref.device)
    norms = th._foreach_norm([t.float() for t in tensors])
    return th.stack(norms).square().sum()

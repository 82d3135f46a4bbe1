"""Timestep samplers for training: which t each example of a batch gets, with importance weights
that keep the loss an unbiased estimate of the uniform-t objective.
"""

from abc import ABC, abstractmethod

import numpy as np
import torch as th
import torch.distributed as dist


def create_named_schedule_sampler(name, diffusion):
    """The ScheduleSampler named by --schedule_sampler: "uniform" or "loss-second-moment"."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise NotImplementedError(
        f"unknown schedule sampler {name!r}: use --schedule_sampler uniform or loss-second-moment"
    )


class ScheduleSampler(ABC):
    """A distribution over timesteps, sampled with importance weights 1 / (T * p(t))."""

    @abstractmethod
    def weights(self):
        """Unnormalised positive weights [T] (numpy), one per timestep."""

    def sample(self, batch_size, device):
        """Draw timesteps with numpy's global RNG.

        Returns (t [batch_size] long, weights [batch_size] float32) on device.
        """
        w = self.weights()
        p = w / np.sum(w)
        indices_np = np.random.choice(len(p), size=(batch_size,), p=p)
        indices = th.from_numpy(indices_np).long().to(device)
        weights_np = 1 / (len(p) * p[indices_np])
        weights = th.from_numpy(weights_np).float().to(device)
        return indices, weights

    def state_dict(self):
        """The sampler's mutable state as tensors (safe for torch.load(weights_only=True))."""
        return {}

    def load_state_dict(self, state_dict):
        if state_dict:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state_dict)}")


class UniformSampler(ScheduleSampler):
    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self):
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler whose weights follow the losses seen at each timestep."""

    def update_with_local_losses(self, local_ts, local_losses):
        """Record this rank's losses, gathered from every rank when torch.distributed is initialised.

        local_ts: [n] long timesteps, local_losses: [n] float losses; n may differ between ranks.
        Every rank must call this (it is a collective) and ends with the same history.
        """
        if dist.is_available() and dist.is_initialized():
            ts, losses = _all_gather_variable(local_ts), _all_gather_variable(local_losses)
        else:
            ts, losses = local_ts, local_losses
        self.update_with_all_losses([x.item() for x in ts], [x.item() for x in losses])

    @abstractmethod
    def update_with_all_losses(self, ts, losses):
        """Record losses (list of floats) at timesteps ts (list of ints), identically on every rank."""


def _all_gather_variable(tensor):
    """Concatenate a 1-D tensor of per-rank length across ranks, in rank order."""
    world_size = dist.get_world_size()
    sizes = [th.zeros([1], dtype=th.int64, device=tensor.device) for _ in range(world_size)]
    dist.all_gather(sizes, th.tensor([len(tensor)], dtype=th.int64, device=tensor.device))
    sizes = [int(s.item()) for s in sizes]
    padded = th.zeros([max(sizes)], dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    gathered = [th.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return th.cat([g[:n] for g, n in zip(gathered, sizes)])


class LossSecondMomentResampler(LossAwareSampler):
    """Importance sampling of timesteps by the loss's second moment (improved DDPM, section 3.3).

    Uniform until every timestep has history_per_term losses; then p(t) ∝ sqrt(E[loss_t^2]) over the
    last history_per_term losses, mixed with uniform_prob of the uniform distribution.
    """

    def __init__(self, diffusion, history_per_term=10, uniform_prob=0.001):
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self):
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                # Full: drop the oldest loss.
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self):
        return (self._loss_counts == self.history_per_term).all()

    def state_dict(self):
        return {
            "loss_history": th.from_numpy(self._loss_history.copy()),
            "loss_counts": th.from_numpy(self._loss_counts.copy()),
        }

    def load_state_dict(self, state_dict):
        history = th.as_tensor(state_dict["loss_history"]).cpu().numpy().astype(np.float64)
        counts = th.as_tensor(state_dict["loss_counts"]).cpu().numpy().astype(np.int64)
        if history.shape != self._loss_history.shape or counts.shape != self._loss_counts.shape:
            raise ValueError(
                f"loss history of shape {history.shape} does not fit this sampler's "
                f"{self._loss_history.shape} (num_timesteps, history_per_term): was it saved with "
                f"other --diffusion_steps / --timestep_respacing?"
            )
        self._loss_history = history
        self._loss_counts = counts

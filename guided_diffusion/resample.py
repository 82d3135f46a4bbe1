"""Timestep samplers for training: which t each example of a batch gets, with importance weights
that keep the loss an unbiased estimate of the uniform-t objective.
"""

from abc import ABC, abstractmethod

import numpy as np
import torch as th

from .dist_util import all_gather_rows


def create_named_schedule_sampler(name, diffusion):
    """The ScheduleSampler named by --schedule_sampler: "uniform" or "loss-second-moment"."""
    samplers = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentResampler}
    if name not in samplers:
        raise NotImplementedError(f"unknown schedule sampler {name!r}: use --schedule_sampler uniform or loss-second-moment")
    return samplers[name](diffusion)


class ScheduleSampler(ABC):
    """A distribution p over the T timesteps, sampled with importance weights 1 / (T * p(t))."""

    @abstractmethod
    def weights(self):
        """Unnormalised positive weights [T] (numpy), one per timestep."""

    def sample(self, batch_size, device):
        """Draw timesteps with numpy's global RNG.

        Returns (t [batch_size] long, weights [batch_size] float32) on device.
        """
        weights = self.weights()
        probabilities = weights / np.sum(weights)
        num_timesteps = len(probabilities)
        drawn = np.random.choice(num_timesteps, size=(batch_size,), p=probabilities)
        importance = 1 / (num_timesteps * probabilities[drawn])
        return th.from_numpy(drawn).long().to(device), th.from_numpy(importance).float().to(device)

    def state_dict(self):
        """The sampler's mutable state as tensors (safe for torch.load(weights_only=True))."""
        return {}

    def load_state_dict(self, state_dict):
        if state_dict:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state_dict)}")


class UniformSampler(ScheduleSampler):
    """Every timestep equally likely (the release's default)."""

    def __init__(self, diffusion):
        self.diffusion = diffusion

    def weights(self):
        return np.ones([self.diffusion.num_timesteps])


class LossAwareSampler(ScheduleSampler):
    """A sampler whose weights follow the losses seen at each timestep."""

    def update_with_local_losses(self, local_ts, local_losses):
        """Record this rank's losses, gathered from every rank when torch.distributed is initialised.

        local_ts: [n] long timesteps, local_losses: [n] float losses; n may differ between ranks.
        Every rank must call this (it is a collective) and ends with the same history.
        """
        ts, losses = th.cat(all_gather_rows(local_ts)), th.cat(all_gather_rows(local_losses))
        self.update_with_all_losses(ts.tolist(), losses.tolist())

    @abstractmethod
    def update_with_all_losses(self, ts, losses):
        """Record losses (list of floats) at timesteps ts (list of ints), identically on every rank."""


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
        num_timesteps = self.diffusion.num_timesteps
        if not (self._loss_counts == self.history_per_term).all():
            return np.ones([num_timesteps], dtype=np.float64)
        root_mean_square = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        return root_mean_square / np.sum(root_mean_square) * (1 - self.uniform_prob) + self.uniform_prob / num_timesteps

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            seen = self._loss_counts[t]
            if seen < self.history_per_term:
                self._loss_history[t, seen] = loss
                self._loss_counts[t] = seen + 1
            else:  # full: the oldest loss drops out
                self._loss_history[t] = np.append(self._loss_history[t, 1:], loss)

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

"""Timestep respacing: sample (or train) with a subset of a diffusion's timesteps.

The kept steps keep their alphas_cumprod; the betas between them are recomputed, and the model is
still called with the original timestep indices.
"""

import numpy as np
import torch as th

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps, section_counts):
    """The set of original timesteps to keep.

    section_counts: "ddimN" takes the integer stride giving exactly N steps from 0 (as in the DDIM
    paper); otherwise a comma-separated string or a list of counts, one per section of equal length
    (the first sections take the remainder), each section evenly spaced with a rounded fractional
    stride that keeps its first and last step. E.g. space_timesteps(300, "10,15,20") keeps 10 steps of
    [0, 100), 15 of [100, 200) and 20 of [200, 300); "250" keeps 250 evenly spaced steps of all.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            return _ddim_timesteps(num_timesteps, int(section_counts[len("ddim"):]))
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(
                f"cannot take {section_count} steps from a section of {size} steps "
                f"(timestep_respacing {section_counts} over {num_timesteps} steps): use fewer steps per section"
            )
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


def _ddim_timesteps(num_timesteps, desired_count):
    """{0, s, 2s, ...} with the smallest integer stride s giving exactly desired_count steps."""
    for stride in range(1, num_timesteps):
        steps = range(0, num_timesteps, stride)
        if len(steps) == desired_count:
            return set(steps)
    possible = {len(range(0, num_timesteps, s)) for s in range(1, num_timesteps)}
    nearest = sorted(sorted(possible, key=lambda n: abs(n - desired_count))[:4])
    raise ValueError(
        f"no integer stride gives exactly {desired_count} of {num_timesteps} steps for "
        f"timestep_respacing 'ddim{desired_count}': use a nearby count ({', '.join(f'ddim{n}' for n in nearest)}) "
        f"or a plain count like '{desired_count}'"
    )


class SpacedDiffusion(GaussianDiffusion):
    """A GaussianDiffusion over a subset of the base process's timesteps.

    use_timesteps: the original timesteps to keep (e.g. from space_timesteps).
    kwargs: the base GaussianDiffusion's arguments (betas of the full schedule).
    timestep_map[i] is the original timestep of step i.
    """

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        self.timestep_map = []
        self.original_num_steps = len(kwargs["betas"])

        base_diffusion = GaussianDiffusion(**kwargs)
        last_alpha_cumprod = 1.0
        new_betas = []
        for i, alpha_cumprod in enumerate(base_diffusion.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)

    def _scale_timesteps(self, t):
        return t  # the wrapped model maps and scales the timesteps


class _WrappedModel:
    """Calls model(x, original timestep, **kwargs) given a respaced step index.

    The original index is scaled to [0, 1000) when rescale_timesteps is set.
    """

    def __init__(self, model, timestep_map, rescale_timesteps, original_num_steps):
        self.model = model
        self.timestep_map = timestep_map
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps

    def __call__(self, x, ts, **kwargs):
        map_tensor = th.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        new_ts = map_tensor[ts]
        if self.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.original_num_steps)
        return self.model(x, new_ts, **kwargs)

"""Timestep respacing: sample (or train) with a subset of a diffusion's timesteps.

The kept steps keep their alphas_cumprod; the betas between them are recomputed, and the model is
still called with the original timestep indices.
"""

import itertools

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps, section_counts):
    """The set of original timesteps to keep.

    section_counts: "ddimN" takes the integer stride giving exactly N steps from 0 (as in the DDIM
    paper); otherwise a comma-separated string or a list of counts, one per section of equal length
    (the first sections take the remainder), each section evenly spaced with a rounded fractional
    stride that keeps its first and last step. E.g. space_timesteps(300, "10,15,20") keeps 10 steps of
    [0, 100), 15 of [100, 200) and 20 of [200, 300); "250" keeps 250 evenly spaced steps of all.
    """
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        return _ddim_timesteps(num_timesteps, int(section_counts[len("ddim"):]))
    if isinstance(section_counts, str):
        section_counts = [int(count) for count in section_counts.split(",")]
    base_size, remainder = divmod(num_timesteps, len(section_counts))
    sizes = [base_size + (index < remainder) for index in range(len(section_counts))]
    starts = itertools.accumulate(sizes[:-1], initial=0)
    kept = set()
    for start, size, count in zip(starts, sizes, section_counts):
        if count > size:
            raise ValueError(
                f"cannot take {count} steps from a section of {size} steps "
                f"(timestep_respacing {section_counts} over {num_timesteps} steps): use fewer steps per section"
            )
        kept.update(_evenly_spaced(start, size, count))
    return kept


def _evenly_spaced(start, size, count):
    """count steps of [start, start + size) keeping the first and last, at a rounded fractional stride.

    The stride is accumulated (not multiplied) and rounded half to even, as in the release.
    """
    if count < 1:
        return []
    stride = 1 if count == 1 else (size - 1) / (count - 1)
    offsets = itertools.accumulate(itertools.repeat(stride, count - 1), initial=0.0)
    return [start + round(offset) for offset in offsets]


def _ddim_timesteps(num_timesteps, desired_count):
    """{0, s, 2s, ...} with the smallest integer stride s giving exactly desired_count steps."""
    counts = {stride: len(range(0, num_timesteps, stride)) for stride in range(1, num_timesteps)}
    stride = next((s for s, n in counts.items() if n == desired_count), None)
    if stride is not None:
        return set(range(0, num_timesteps, stride))
    nearest = sorted(sorted(set(counts.values()), key=lambda n: abs(n - desired_count))[:4])
    raise ValueError(
        f"no integer stride gives exactly {desired_count} of {num_timesteps} steps for "
        f"timestep_respacing 'ddim{desired_count}': use a nearby count ({', '.join(f'ddim{n}' for n in nearest)}) "
        f"or a plain count like '{desired_count}'"
    )


class SpacedDiffusion(GaussianDiffusion):
    """A GaussianDiffusion over a subset of the base process's timesteps.

    use_timesteps: the original timesteps to keep (e.g. from space_timesteps).
    kwargs: the base GaussianDiffusion's arguments (betas of the full schedule).
    timestep_map[i] is the original timestep of step i; original_num_steps the base process's T.
    """

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        super().__init__(**kwargs)

    def _make_schedule(self, betas):
        return super()._make_schedule(betas).respaced(self.use_timesteps)

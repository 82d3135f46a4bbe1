"""Distillation to one to four steps: consistency distillation and consistency training (Song et al. 2023;
openai/consistency_models), in the sigma view x = x_0 + sigma z (SPEC, "Beyond the release, fourth part").

- grid.py: the noise levels (Karras spacing; on a VP schedule, rounded to distinct integer timesteps);
- parameterisation.py: the teacher's denoiser D and the student's consistency function f (EDM or ADM model);
- losses.py: the CD / CT loss, its distances, weightings and index draw;
- schedules.py: the target EMA rate and number of levels (mu, N) per training step;
- sampling.py: multistep consistency sampling.
"""

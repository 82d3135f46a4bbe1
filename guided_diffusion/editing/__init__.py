"""Restoration and editing with a trained diffusion model as the prior (docs/editing.md).

- methods.py: DPS, RePaint, GLIDE's inpainting, SDEdit, DDIM reconstruction over the samplers and guides, re-exported here
  (`from guided_diffusion import editing; editing.dps(...)`);
- operators.py: the forward models y = A(x) + n (inpainting masks, super-resolution, blur);
- inputs.py: image_edit.py's --input (a folder of images or an npz batch);
- run.py: image_edit.py's run: its checks before anything is written, the per-batch edit, metrics.json.

Only methods.py is imported here: inputs.py and run.py belong to the runs layer (docs/architecture.md) and
are imported by name (`from guided_diffusion.editing import run`).
"""

from .methods import (check_loss, check_strength, dps, glide_inpaint, reconstruct, repaint, repaint_states, sdedit,
                      sdedit_start_step, with_label)

__all__ = ["check_loss", "check_strength", "dps", "glide_inpaint", "reconstruct", "repaint", "repaint_states",
           "sdedit", "sdedit_start_step", "with_label"]

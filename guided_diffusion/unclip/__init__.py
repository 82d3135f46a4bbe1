"""DALL-E 2's decoder (unCLIP): a diffusion UNet conditioned on a CLIP image embedding (docs/clip.md)."""

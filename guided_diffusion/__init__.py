"""ADM / ADM-G ("Diffusion Models Beat GANs on Image Synthesis"): models, diffusion, training and sampling."""

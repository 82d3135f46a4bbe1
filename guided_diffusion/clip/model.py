"""A CLIP model over GLIDE's encoders: open_clip's interface (encode_image, encode_text, logit_scale, tokenizer)
with a noise-aware image side, and GLIDE's CLIPModel methods (text_embeddings, image_embeddings, cond_fn)."""

import math

import torch as th
import torch.nn as nn


def unit(z):
    """z [N, D] scaled to unit length, as GLIDE: z / (||z|| + 1e-12)."""
    return z / (th.linalg.norm(z, dim=-1, keepdim=True) + 1e-12)


class NoisyCLIP(nn.Module):
    """text_encoder (encoders.TextEncoder), image_encoder (encoders.ImageEncoder), their similarity's scale
    exp(logit_scale), and the tokenizer of the text side (tokenizer.Tokenizer)."""

    def __init__(self, text_encoder, image_encoder, logit_scale, tokenizer, learn_logit_scale=False):
        """logit_scale: the similarity's scale itself (GLIDE's 100; CLIP starts training at 1 / 0.07); the attribute
        holds its log, as open_clip's: a fixed buffer outside the state dict (GLIDE's files have none), or with
        learn_logit_scale a parameter, trained and saved as `logit_scale`."""
        super().__init__()
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        log_scale = th.tensor(math.log(logit_scale), dtype=th.float32)
        if learn_logit_scale:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale, persistent=False)
        self.tokenizer = tokenizer

    @property
    def image_size(self):
        """Height and width in pixels of the images encode_image takes."""
        return self.image_encoder.blocks["input"].image_size

    @property
    def noise_aware(self):
        """True when the image encoder reads timesteps t with x_t (encode_image(x_t, t)); False: clean images only."""
        return self.n_timesteps > 0

    @property
    def n_timesteps(self):
        """T of the timesteps the image encoder takes, t in [0, T) (0: a clean image encoder)."""
        return self.image_encoder.blocks["input"].n_timesteps

    def forward(self, images, tokens, t=None):
        """The unit features of a batch of pairs, as open_clip's CLIP(image, text) (so DDP sees the training
        forward): images [N, 3, S, S] in [-1, 1] (x_t at timesteps t [N] for a noise-aware encoder), tokens
        [N, max_text_len] -> (unit image features [N, D], unit text features [N, D], the scale exp(logit_scale))."""
        image_features, text_features = self.encode_image(images, t, normalize=True), self.encode_text(tokens, True)
        return image_features, text_features, self.logit_scale.exp()

    def encode_image(self, images, t=None, normalize=False):
        """images: [N, 3, S, S] on the diffusion's [-1, 1] scale, x_t at any noise level; t: [N] timesteps of the
        diffusion's original T (None for a clean image encoder) -> features [N, D], unit length if normalize."""
        features = self.image_encoder((images + 1) * 127.5, t)
        return unit(features) if normalize else features

    def encode_text(self, tokens, normalize=False):
        """tokens: [N, max_text_len] as the tokenizer pads them -> features [N, D] read at each row's last end
        token, unit length if normalize."""
        is_end = tokens == self.tokenizer.end_token
        if not is_end.any(dim=1).all():
            raise ValueError("every row of tokens needs the end token (49407): pad texts with model.tokenizer(texts, "
                             "model.text_encoder.max_text_len)")
        positions = th.arange(tokens.shape[1], device=tokens.device)
        features = self.text_encoder(tokens, th.where(is_end, positions, -1).amax(dim=1) + 1)
        return unit(features) if normalize else features

    def text_embeddings(self, prompts):
        """The prompts' (a list of str) unit text embeddings [N, D] (GLIDE's)."""
        tokens = self.tokenizer(prompts, self.text_encoder.max_text_len).to(self.logit_scale.device)
        return self.encode_text(tokens, normalize=True)

    def image_embeddings(self, images, t):
        """Unit image embeddings [N, D] of x_t [N, 3, S, S] in [-1, 1] at timesteps t [N] (GLIDE's)."""
        return self.encode_image(images, t, normalize=True)

    def cond_fn(self, prompts, grad_scale):
        """GLIDE's CLIP guidance: cond_fn(x, t, **model_kwargs) -> grad_scale * grad_x of exp(logit_scale) *
        sum_i <z_text_i, z_image(x_i, t_i)> [N, 3, S, S]. prompts: one per sample of x (or one for all), encoded
        once, here. A release-style cond_fn: pass it to p_sample_loop(cond_fn=...) or wrap it in
        guidance.CondFnGuidance for any sampler."""
        with th.no_grad():
            z_text = self.text_embeddings(prompts)

        def cond_fn(x, t, grad_scale=grad_scale, **model_kwargs):
            if len(z_text) not in (1, len(x)):
                raise ValueError(f"cond_fn was made for {len(z_text)} prompts and x has {len(x)} samples: give one "
                                 "prompt per sample, or one for all")
            with th.enable_grad():
                x_in = x.detach().requires_grad_(True)
                similarity = th.exp(self.logit_scale) * (z_text * self.image_embeddings(x_in, t)).sum()
                gradient = th.autograd.grad(similarity, x_in)[0].detach()
            return gradient * grad_scale

        return cond_fn

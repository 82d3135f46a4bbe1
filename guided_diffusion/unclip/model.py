"""DALL-E 2's decoder (Ramesh et al. 2022, sec. 2.1): the UNet conditioned on a CLIP image embedding e [N, D].

e is projected twice: into the timestep embedding (added to it) and into K context tokens [N, W, K] that every
attention block attends to through the UNet's encoder_kv path (GLIDE's cross-attention). The embedding-only
decoder has the K tokens as its whole context; the captioned one appends them to the caption's encoding
[N, W, L + K]. In training, each sample's embedding is zeroed with probability clip_emb_dropout_prob: the zero
embedding is the unconditional branch of classifier-free guidance, as in DALL-E 2.
"""

import torch as th
import torch.nn as nn

from ..text.model import TextUNet
from ..unet import UNetModel


class ClipEmbeddingProjection(nn.Module):
    """e [N, D] -> (time embedding term [N, time_channels], context tokens [N, width, tokens]).

    Two linear maps with PyTorch's default init (uniform in +-1/sqrt(D)); the zero embedding maps to the biases.
    Kept in float32 (the tokens are cast to the attention's dtype by the model).
    """

    def __init__(self, emb_dim, time_channels, width, tokens):
        super().__init__()
        self.width, self.tokens = width, tokens
        self.to_time = nn.Linear(emb_dim, time_channels)
        self.to_tokens = nn.Linear(emb_dim, width * tokens)

    def forward(self, clip_emb):
        clip_emb = clip_emb.float()
        tokens = self.to_tokens(clip_emb).view(len(clip_emb), self.width, self.tokens)
        return self.to_time(clip_emb), tokens


def drop_embeddings(clip_emb, prob):
    """clip_emb [N, D] with each row replaced by zeros with probability prob (torch's global RNG)."""
    kept = th.rand(clip_emb.shape[:1], device=clip_emb.device) >= prob
    return clip_emb * kept[:, None].to(clip_emb.dtype)


class _ClipConditioned:
    """What both decoders share: the projection, the embedding's checks and its dropout in training."""

    def _init_clip(self, emb_dim, tokens, width, dropout_prob):
        if not 0 <= dropout_prob <= 1:
            raise ValueError(f"clip_emb_dropout_prob must be in [0, 1], got {dropout_prob}")
        if emb_dim < 1 or tokens < 1:
            raise ValueError(f"clip_emb_dim ({emb_dim}) and clip_emb_tokens ({tokens}) must be at least 1")
        self.clip_emb_dim, self.clip_emb_dropout_prob = emb_dim, dropout_prob
        self.clip_proj = ClipEmbeddingProjection(emb_dim, 4 * self.model_channels, width, tokens)

    def _clip_terms(self, clip_emb, x):
        """(time term [N, 4C], tokens [N, W, K] in the torso's dtype) of clip_emb [N, D] for x [N, ...]."""
        if clip_emb is None or clip_emb.shape != (len(x), self.clip_emb_dim):
            got = "none" if clip_emb is None else list(clip_emb.shape)
            raise ValueError(f"an unCLIP decoder needs clip_emb=[{len(x)}, {self.clip_emb_dim}] (the images' CLIP "
                             f"embeddings), got {got}")
        if self.training and self.clip_emb_dropout_prob:
            clip_emb = drop_embeddings(clip_emb, self.clip_emb_dropout_prob)
        time, tokens = self.clip_proj(clip_emb)
        return time, tokens.to(self.dtype)


class UnCLIPUNet(_ClipConditioned, UNetModel):
    """The embedding-only decoder: UNetModel whose attention blocks attend to the K tokens.

    forward(x [N, C, H, W], timesteps [N], clip_emb [N, D]) -> [N, out_channels, H, W].
    """

    def __init__(
        self,
        *,
        clip_emb_dim,                   # D, the CLIP embedding's width
        clip_emb_tokens=4,              # K, context tokens projected from e
        clip_emb_width=512,             # W, the tokens' width (the attention's encoder_channels)
        clip_emb_dropout_prob=0.0,      # in training, zero e with this probability
        **unet_options,                 # UNetModel's (no classes)
    ):
        super().__init__(encoder_channels=clip_emb_width, **unet_options)
        self._init_clip(clip_emb_dim, clip_emb_tokens, clip_emb_width, clip_emb_dropout_prob)

    def forward(self, x, timesteps, clip_emb=None):
        time, tokens = self._clip_terms(clip_emb, x)
        return self._denoise(x, self._embed(timesteps) + time.to(x.dtype), tokens)


class UnCLIPTextUNet(_ClipConditioned, TextUNet):
    """The captioned decoder: GLIDE's TextUNet whose context is the caption's encoding and the K tokens,
    [N, xf_width, text_ctx + K]; both the caption's and e's projections are added to the timestep embedding.

    forward(x [N, C, H, W], timesteps [N], clip_emb [N, D], tokens [N, L], mask [N, L]) -> [N, out_channels, H, W].
    """

    def __init__(self, *, clip_emb_dim, clip_emb_tokens=4, clip_emb_dropout_prob=0.0, **text_options):
        super().__init__(**text_options)
        if self.inpaint or self.super_res:
            raise ValueError("an unCLIP decoder is a base model: build it with inpaint=False and super_res=False")
        self._init_clip(clip_emb_dim, clip_emb_tokens, self.xf_width, clip_emb_dropout_prob)

    def forward(self, x, timesteps, clip_emb=None, tokens=None, mask=None):
        if tokens is None:
            raise ValueError("a captioned unCLIP decoder needs the caption: pass tokens=[N, text_ctx] and mask "
                             "(the empty caption: mask all False)")
        time, clip_tokens = self._clip_terms(clip_emb, x)
        if self.training and self.caption_dropout_prob:
            kept = th.rand(tokens.shape[:1], device=tokens.device) >= self.caption_dropout_prob
            mask = mask & kept[:, None]
        text = self.encode_text(tokens, mask)
        emb = self._embed(timesteps)
        emb = emb + text["xf_proj"].to(emb) + time.to(emb)
        return self._denoise(x, emb, th.cat([text["xf_out"], clip_tokens], dim=2))

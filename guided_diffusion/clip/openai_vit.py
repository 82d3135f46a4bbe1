"""OpenAI's CLIP ViTs, and open_clip's models of the same layout, built from a state dict's shapes: clean
image-text models with open_clip's interface, so that their weights on disk guide a diffusion model by a
prompt (docs/clip.md, "OpenAI and open_clip checkpoints").

The layout (OpenAI's `clip/model.py` names, which open_clip's `CLIP` keeps): a ViT image tower under `visual.`
(`conv1` patches without bias, `class_embedding`, `positional_embedding`, `ln_pre`, `transformer`, `ln_post`,
`proj`) and a causal text transformer at the top level (`token_embedding`, `positional_embedding`,
`transformer`, `ln_final`, `text_projection`), `logit_scale`. Every block is pre-LN: x + attn(ln_1(x)), then
x + mlp(ln_2(x)), attention in nn.MultiheadAttention's layout (`in_proj_weight` [3W, W] holds q, k, v).
"""

import dataclasses
import importlib.util
import re
import zipfile
from pathlib import Path

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from .encoders import CHANNEL_MEANS, CHANNEL_STDS
from .files import _mismatch
from .tokenizer import get_tokenizer

HEAD_WIDTH = 64  # channels of a head: OpenAI's rule, heads = width // 64
# open_clip's image towers of wider heads (ViT-H-14 80, ViT-g-14 88, ViT-bigG-14 104, ViT-e-14 112; 16 heads
# each), told apart by their width: no text tower has these head widths.
VISION_HEAD_WIDTHS = {1280: 80, 1408: 88, 1664: 104, 1792: 112}
CLIP_VOCAB = 49408  # rows of CLIP's BPE vocabulary, which model.tokenizer writes
# Entries OpenAI's files hold beside the weights (its TorchScript archives' hyperparameters): ignored.
IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size")
TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection", "logit_scale")
VIT_KEYS = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj")
BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class ClipArchitecture:
    """The sizes of an OpenAI-layout ViT CLIP, all read from its state dict's shapes (architecture_of)."""

    embed_dim: int  # D: dimension of the joint image-text embedding
    image_size: int  # S: side of the square input image, pixels
    patch_size: int  # side of a patch, pixels (image tokens: (S / patch_size)^2 + the class token)
    vision_width: int  # channels of the image transformer
    vision_layers: int  # residual attention blocks of the image transformer
    vision_heads: int  # attention heads of the image transformer
    vision_mlp: int  # hidden channels of an image block's MLP
    context_length: int  # tokens a text is read as (77)
    vocab_size: int  # rows of the token embedding (CLIP's 49,408)
    text_width: int  # channels of the text transformer
    text_layers: int  # residual attention blocks of the text transformer
    text_heads: int  # attention heads of the text transformer
    text_mlp: int  # hidden channels of a text block's MLP


def _unwrap(state):
    """The flat state dict of state: open_clip's training checkpoints nest it under "state_dict" with DDP's
    "module." prefix on every key."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def is_openai_clip_state(state):
    """Whether state (a state dict, or open_clip's training checkpoint) has OpenAI's CLIP layout: its text keys
    and an image tower under `visual.` (a ResNet tower too: openai_clip_from_state refuses it by name)."""
    state = _unwrap(state)
    return (isinstance(state, dict) and all(key in state for key in TEXT_KEYS)
            and any(isinstance(key, str) and key.startswith("visual.") for key in state))


def _heads(width, head_widths=None):
    """Heads of a transformer `width` channels wide: width // 64, or width // head_widths[width] (at least 1)."""
    return max(1, width // (head_widths or {}).get(width, HEAD_WIDTH))


def architecture_of(state):
    """The ClipArchitecture of an OpenAI-layout ViT CLIP state dict (tensors of any device, meta included), from
    its shapes; UsageError for another layout."""
    state = _unwrap(state)
    if not is_openai_clip_state(state):
        missing = next((key for key in TEXT_KEYS if key not in state), "visual.*") if isinstance(state, dict) else None
        raise UsageError(f"not a CLIP of OpenAI's layout ({f'no {missing}' if missing else 'not a dict'}): give "
                         "OpenAI's or open_clip's ViT CLIP weights (keys visual.conv1.weight, token_embedding.weight, "
                         "...)")
    if "visual.layer1.0.conv1.weight" in state or "visual.attnpool.c_proj.weight" in state:
        raise UsageError("a CLIP with a ResNet image tower (visual.layer1...): only ViT CLIPs are supported; give a "
                         "ViT checkpoint (ViT-B-32, ViT-B-16, ViT-L-14, ...)")
    missing = [key for key in VIT_KEYS if key not in state]
    if missing:
        raise UsageError(f"a CLIP of OpenAI's layout without {missing[0]}: not OpenAI's ViT image tower (open_clip's "
                         "timm or attention-pooled towers are not supported); give a ViT checkpoint")
    layers = {"visual.": set(), "": set()}
    for key in state:
        match = BLOCK_KEY.match(key)
        if match:
            layers[match.group(1) or ""].add(int(match.group(2)))
    vision_width, _, patch_size, _ = state["visual.conv1.weight"].shape
    text_width = state["ln_final.weight"].shape[0]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return ClipArchitecture(
        embed_dim=state["text_projection"].shape[1], image_size=grid * patch_size, patch_size=patch_size,
        vision_width=vision_width, vision_layers=len(layers["visual."]),
        vision_heads=_heads(vision_width, VISION_HEAD_WIDTHS),
        vision_mlp=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        context_length=state["positional_embedding"].shape[0], vocab_size=state["token_embedding.weight"].shape[0],
        text_width=text_width, text_layers=len(layers[""]), text_heads=_heads(text_width),
        text_mlp=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIPs were trained with."""

    def forward(self, x):
        return x * th.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention: q, k, v = in_proj(x) split into heads, softmax(q k^T / sqrt(head width)) v,
    then out_proj. Parameters in nn.MultiheadAttention's layout: in_proj_weight [3W, W], in_proj_bias [3W]."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(th.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(th.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, causal):
        """x: [N, L, W]; causal: token i attends to tokens j <= i only -> [N, L, W]."""
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(n, length, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [N, heads, L, head width]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class MLP(nn.Module):
    """c_proj(activation(c_fc(x))): width -> hidden -> width."""

    def __init__(self, width, hidden, activation):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = activation()  # the name open_clip gives it; it holds no weights
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width, heads, hidden, activation):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden, activation)

    def forward(self, x, causal):
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """`resblocks`: layers residual attention blocks of width channels and heads heads."""

    def __init__(self, width, layers, heads, hidden, activation):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, hidden, activation) for _ in range(layers))

    def forward(self, x, causal):
        """x: [N, L, width] -> [N, L, width]."""
        for block in self.resblocks:
            x = block(x, causal)
        return x


class VisionTransformer(nn.Module):
    """CLIP's ViT: patches of a normalised image, after a class token, plus positions, ln_pre, the transformer,
    then ln_post of the class token's slot times proj [width, D]."""

    def __init__(self, arch, activation):
        super().__init__()
        width, grid = arch.vision_width, arch.image_size // arch.patch_size
        self.conv1 = nn.Conv2d(3, width, arch.patch_size, stride=arch.patch_size, bias=False)
        self.class_embedding = nn.Parameter(th.empty(width))
        self.positional_embedding = nn.Parameter(th.empty(1 + grid * grid, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, arch.vision_layers, arch.vision_heads, arch.vision_mlp, activation)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(th.empty(width, arch.embed_dim))

    def forward(self, pixels):
        """pixels: [N, 3, S, S] normalised by CLIP's pixel statistics -> features [N, D]."""
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # [N, patches, width]
        x = th.cat((self.class_embedding.to(x.dtype).expand(len(x), 1, -1), x), dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x), causal=False)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAIClip(nn.Module):
    """A clean ViT CLIP in OpenAI's layout with open_clip's interface: encode_image, encode_text, logit_scale (the
    log of the similarity's scale), tokenizer (CLIP's BPE), image_size; noise_aware is False (no t).

    Built with uninitialised weights: load a state dict (openai_clip_from_state does)."""

    noise_aware = False

    def __init__(self, arch, quickgelu=True):
        """arch: a ClipArchitecture; quickgelu: QuickGELU activations (OpenAI's weights, open_clip's "-quickgelu"
        models) or exact GELU (open_clip's own LAION-trained ViTs)."""
        super().__init__()
        self.architecture, self.quickgelu = arch, quickgelu
        activation = QuickGELU if quickgelu else nn.GELU
        self.visual = VisionTransformer(arch, activation)
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.text_width)
        self.positional_embedding = nn.Parameter(th.empty(arch.context_length, arch.text_width))
        self.transformer = Transformer(arch.text_width, arch.text_layers, arch.text_heads, arch.text_mlp, activation)
        self.ln_final = nn.LayerNorm(arch.text_width)
        self.text_projection = nn.Parameter(th.empty(arch.text_width, arch.embed_dim))
        self.logit_scale = nn.Parameter(th.empty(()))
        self.tokenizer = get_tokenizer()

    @property
    def image_size(self):
        """S: encode_image takes images [N, 3, S, S]."""
        return self.architecture.image_size

    @property
    def context_length(self):
        """Tokens a text is read as: encode_text takes tokens [N, context_length]."""
        return self.architecture.context_length

    def encode_image(self, images, t=None, normalize=False):
        """images: [N, 3, S, S] in [-1, 1], clean (t must be None) -> features [N, D], unit length if normalize.
        CLIP's pixel normalisation ((x + 1) * 127.5 - mean) / std, per channel, is done here."""
        if t is not None:
            raise UsageError("this CLIP is clean, not noise-aware: call encode_image without t (guide through the "
                             "denoised x0_hat, not x_t)")
        size = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise UsageError(f"the CLIP image encoder takes images [N, 3, {size}, {size}], got {list(images.shape)}: "
                             f"resize (or crop) them to {size}x{size} first")
        means, stds = (images.new_tensor(stats)[None, :, None, None] for stats in (CHANNEL_MEANS, CHANNEL_STDS))
        features = self.visual(((images + 1) * 127.5 - means) / stds)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens, normalize=False):
        """tokens: [N, context_length] as model.tokenizer pads them -> features [N, D] read at each row's argmax
        (the end token, CLIP's highest id), unit length if normalize."""
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length:
            raise UsageError(f"the CLIP text encoder reads tokens [N, {self.context_length}], got "
                             f"{list(tokens.shape)}: pad texts with model.tokenizer(texts, {self.context_length})")
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x, causal=True))
        features = x[th.arange(len(x), device=x.device), tokens.argmax(dim=-1)] @ self.text_projection
        return F.normalize(features, dim=-1) if normalize else features

    def text_embeddings(self, prompts):
        """The prompts' (a list of str) unit text embeddings [N, D]."""
        tokens = self.tokenizer(prompts, self.context_length).to(self.logit_scale.device)
        return self.encode_text(tokens, normalize=True)

    def image_embeddings(self, images, t=None):
        """Unit image embeddings [N, D] of clean images [N, 3, S, S] in [-1, 1] (t must be None)."""
        return self.encode_image(images, t, normalize=True)

    def forward(self, images, tokens):
        """CLIP's logits: exp(logit_scale) <z_image_i, z_text_j> as [N_images, N_texts], and its transpose."""
        logits = self.logit_scale.exp() * self.encode_image(images, normalize=True) @ self.encode_text(
            tokens, normalize=True).T
        return logits, logits.T


def openai_clip_from_state(state, quickgelu=None, heads=None):
    """An OpenAIClip (float32, eval mode, frozen) with state loaded strictly, its architecture read from the
    shapes (architecture_of).

    state: OpenAI's or open_clip's state dict (any float dtype; OpenAI's hyperparameter entries ignored), or
    open_clip's training checkpoint; quickgelu: None for OpenAI's QuickGELU, False for open_clip's own
    LAION-trained ViTs (exact GELU: the state dict cannot tell); heads: (vision, text) to override the heads read
    from the widths (width // 64, open_clip's wider-head towers by VISION_HEAD_WIDTHS)."""
    if quickgelu not in (None, True, False):
        raise UsageError(f"quickgelu must be None, True or False, got {quickgelu!r}: True for OpenAI's weights, False "
                         "for open_clip's LAION-trained ViTs")
    state = _unwrap(state)
    arch = architecture_of(state)
    if heads is not None:
        arch = dataclasses.replace(arch, vision_heads=heads[0], text_heads=heads[1])
    for width, n_heads, tower in ((arch.vision_width, arch.vision_heads, "image"),
                                  (arch.text_width, arch.text_heads, "text")):
        if n_heads < 1 or width % n_heads:
            raise UsageError(f"the {tower} transformer's width {width} does not split into {n_heads} heads: give "
                             "heads that divide it")
    if arch.vocab_size != CLIP_VOCAB:
        raise UsageError(f"a text tower of {arch.vocab_size} token rows, not CLIP's {CLIP_VOCAB}: its tokenizer is not "
                         "CLIP's BPE; give a CLIP whose text side reads CLIP's tokens")
    state = {key: value for key, value in state.items() if key not in IGNORED_KEYS}
    with th.device("meta"):  # no initialisation: nothing drawn from the global RNG, no memory twice
        model = OpenAIClip(arch, quickgelu=True if quickgelu is None else quickgelu)
    mismatch = _mismatch(model.state_dict(), state)
    if mismatch:
        raise UsageError(f"the CLIP state dict does not fit the architecture read from its shapes ({mismatch}): "
                         "give OpenAI's or open_clip's plain ViT CLIP weights")
    model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)  # copied into the float32 parameters
    return model.eval().requires_grad_(False)


def _is_torchscript(path):
    """Whether the file at path is a TorchScript archive (a zip holding constants.pkl and code/)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name == "constants.pkl" or name.endswith("/constants.pkl") for name in archive.namelist())


def read_state(path):
    """The state dict in the file at path: a .safetensors file (if safetensors is installed), OpenAI's TorchScript
    archive (its state_dict()), or a torch file of tensors (torch.load(weights_only=True)); UsageError naming
    the file and the fix otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file: give the local path of a CLIP checkpoint (OpenAI's ViT-B-32.pt, or "
                         "open_clip's open_clip_pytorch_model.bin / .safetensors)")
    expected = "expected OpenAI's or open_clip's CLIP weights (.pt, .bin, .safetensors)"
    if path.suffix == ".safetensors":
        if importlib.util.find_spec("safetensors") is None:
            raise UsageError(f"{path}: reading .safetensors needs the safetensors package: pip install safetensors, or "
                             "give the checkpoint's .bin / .pt file")
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise UsageError(f"{path} is not a readable .safetensors file ({type(exc).__name__}): {expected}") from exc
    if _is_torchscript(path):
        try:
            return th.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:
            raise UsageError(f"{path} is not a readable TorchScript archive ({type(exc).__name__}): "
                             f"{expected}") from exc
    try:
        return th.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"{path} is not a torch file of tensors ({type(exc).__name__}): {expected}") from exc


def load_openai_clip_file(path, quickgelu=None, heads=None):
    """openai_clip_from_state of the file at path (read_state); every refusal a UsageError naming the file."""
    state = read_state(path)
    if not isinstance(state, dict):
        raise UsageError(f"{path} holds a {type(state).__name__}, not a state dict: expected OpenAI's or open_clip's "
                         "CLIP weights")
    try:
        return openai_clip_from_state(state, quickgelu=quickgelu, heads=heads)
    except UsageError as error:
        raise UsageError(f"{path}: {error}") from None

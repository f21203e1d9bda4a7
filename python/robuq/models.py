"""The PyTorch reference Diffusion Transformer (DiT, Peebles & Xie).

Module and parameter names are the official checkpoint's state-dict names, so released checkpoints load
with ``strict=True`` and the exporter packs the state dict without renaming. The semantics follow
``docs/dit.md``; the code is our own.

Public API:
    CONFIGS                   name -> dict(depth, hidden_size, patch_size, num_heads) for the 12 models
    DiTConfig                 the full configuration (dataclass with to_dict / from_dict)
    create(name, **overrides) build a model from a registry name plus config overrides
    DiT                       the model; ``model.config`` is its DiTConfig
    reinit_zero_layers        give the zero-initialised adaLN / final layers small random weights
    timestep_embedding        sinusoidal timestep features [N] -> [N, dim]
    get_2d_sincos_pos_embed   fixed 2D sin-cos positional table (numpy float64)
    unpatchify                token features [N, T, p*p*C] -> image [N, C, H, W]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

__all__ = [
    "CONFIGS",
    "DiTConfig",
    "create",
    "DiT",
    "DiTBlock",
    "Attention",
    "Mlp",
    "PatchEmbed",
    "TimestepEmbedder",
    "LabelEmbedder",
    "FinalLayer",
    "modulate",
    "reinit_zero_layers",
    "timestep_embedding",
    "get_2d_sincos_pos_embed",
    "unpatchify",
]

# ---------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------

_SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}

#: The 12 official model configurations, e.g. ``CONFIGS["DiT-XL/2"]``.
CONFIGS: dict[str, dict[str, int]] = {
    f"DiT-{size}/{p}": {**s, "patch_size": p} for size, s in _SIZES.items() for p in (2, 4, 8)
}


@dataclass
class DiTConfig:
    """Everything needed to build a DiT. Defaults are the official ImageNet-256 latent model's.

    ``input_size`` is the latent side (image side / 8); ``out_channels`` is ``2 * in_channels`` when
    ``learn_sigma`` (eps channels first, then variance channels), else ``in_channels``.
    """

    depth: int
    hidden_size: int
    patch_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    input_size: int = 32
    in_channels: int = 4
    num_classes: int = 1000
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by 4 (2D sin-cos embedding)")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if not 0.0 <= self.class_dropout_prob <= 1.0:
            raise ValueError(f"class_dropout_prob {self.class_dropout_prob} is not in [0, 1]")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens T."""
        return self.grid_size**2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DiTConfig fields: {sorted(unknown)}")
        return cls(**d)


def create(name: str, **overrides) -> DiT:
    """Build ``DiT`` from a registry name (``"DiT-XL/2"``, ...) with any DiTConfig field overridden.

    Example (a small digits model): ``create("DiT-S/2", depth=2, hidden_size=192, num_heads=3,
    input_size=16, in_channels=1, num_classes=10)``. Builds on the current default device, so
    ``with torch.device("meta"): create("DiT-XL/2")`` allocates nothing.
    """
    if name not in CONFIGS:
        raise KeyError(f"unknown DiT config {name!r}; known: {', '.join(CONFIGS)}")
    known = {f.name for f in fields(DiTConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)}; allowed: {sorted(known)}")
    return DiT(DiTConfig(**{**CONFIGS[name], **overrides}))


# ---------------------------------------------------------------------------------------------------------
# Fixed embeddings and layout helpers
# ---------------------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal features of timesteps: t [N] (int or float) -> [N, dim] float32.

    ``half = dim // 2``, ``freqs_i = exp(-ln(max_period) * i / half)``, ``args = t * freqs``, output
    ``[cos(args), sin(args)]`` (cos first); a zero column is appended when ``dim`` is odd.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # [N, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [N, 2*half]
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2D sin-cos positional table (MAE style), float64 [grid_size**2, embed_dim].

    Tokens are row-major over the grid. The first ``embed_dim/2`` features encode the column index, the
    last ``embed_dim/2`` the row index; each half is ``[sin(pos * w), cos(pos * w)]`` with
    ``w_i = 1 / 10000**(i / (embed_dim/4))``.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim {embed_dim} must be divisible by 4")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)  # [D/4]
    rows, cols = np.divmod(np.arange(grid_size * grid_size), grid_size)  # token index -> (row, col)

    def encode(pos: np.ndarray) -> np.ndarray:
        args = np.outer(pos.astype(np.float64), omega)  # [T, D/4]
        return np.concatenate([np.sin(args), np.cos(args)], axis=1)  # [T, D/2]

    return np.concatenate([encode(cols), encode(rows)], axis=1)  # [T, D]


def unpatchify(x: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """Token features [N, T, p*p*C] -> image [N, C, h*p, w*p].

    Features are ordered (p_row, p_col, channel) with channel fastest; tokens are row-major over the
    square h x w patch grid. Written as reshape + permute (export friendly).
    """
    n, t, _ = x.shape
    p, c = patch_size, channels
    h = w = math.isqrt(t)
    if h * w != t:
        raise ValueError(f"{t} tokens do not form a square grid")
    x = x.reshape(n, h, w, p, p, c)  # [N, h, w, p_row, p_col, C]
    x = x.permute(0, 5, 1, 3, 2, 4)  # [N, C, h, p_row, w, p_col]
    return x.reshape(n, c, h * p, w * p)  # [N, C, H, W]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x [N, T, D], shift / scale [N, D] -> x * (1 + scale) + shift (over tokens)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ---------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Image [N, C, H, W] -> tokens [N, T, D] by a conv with kernel = stride = patch size (``proj``)."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.patch_size = patch_size
        self.grid_size = input_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"input is {tuple(x.shape[-2:])}, the model expects {self.input_size} square")
        x = self.proj(x)  # [N, D, h, w]
        return x.flatten(2).transpose(1, 2)  # [N, T, D], tokens row-major


class TimestepEmbedder(nn.Module):
    """Timesteps [N] -> [N, D]: 256 sinusoidal features, then Linear(256, D), SiLU, Linear(D, D)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    timestep_embedding = staticmethod(timestep_embedding)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = timestep_embedding(t, self.frequency_embedding_size)  # [N, 256] float32
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # [N, D]


class LabelEmbedder(nn.Module):
    """Class labels [N] -> [N, D]; handles label dropout for classifier-free guidance.

    As in the official model the table has an extra "null class" row (index ``num_classes``) only when
    ``dropout_prob > 0``. Labels are replaced by the null class with probability ``dropout_prob`` when
    ``train`` is true, or where ``force_drop_ids == 1`` when that is given.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + int(self.use_cfg_embedding), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, torch.full_like(labels, self.num_classes), labels)

    def forward(
        self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)  # [N]
        return self.embedding_table(labels)  # [N, D]


class Attention(nn.Module):
    """Multi-head self-attention, written out so the quantized path can hook in.

    ``qkv`` output rows are [q | k | v], each split into heads. When ``act_bits`` is set, q, k and v are
    fake-quantized per (token, head) row with "minmax" clipping and the softmax probabilities on the
    fixed unsigned grid (``robuq.quant``), as the integer engine computes them.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.act_bits: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim)  # [N, T, 3, H, hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, H, T, hd]
        if self.act_bits is not None:
            from robuq import quant

            q = quant.fake_quantize_activations(q, self.act_bits, clip="minmax")
            k = quant.fake_quantize_activations(k, self.act_bits, clip="minmax")
            v = quant.fake_quantize_activations(v, self.act_bits, clip="minmax")
        attn = (q @ k.transpose(-2, -1)) * self.scale  # [N, H, T, T]
        attn = attn.softmax(dim=-1)
        if self.act_bits is not None:
            attn = quant.fake_quantize_probs(attn, self.act_bits)
        x = attn @ v  # [N, H, T, hd]
        x = x.transpose(1, 2).reshape(n, t, d)  # [N, T, D], heads concatenated
        return self.proj(x)  # [N, T, D]


class Mlp(nn.Module):
    """Token MLP: fc1 (D -> hidden), GELU (tanh approximation), fc2 (hidden -> D)."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # [N, T, D]


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning.

    ``adaLN_modulation(c)`` gives six [N, D] chunks in the order shift_msa, scale_msa, gate_msa, shift_mlp,
    scale_mlp, gate_mlp; each branch input is modulated and its output gated before the residual add.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mod = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x [N, D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # [N, T, D]
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # [N, T, D]
        return x


class FinalLayer(nn.Module):
    """Last adaLN-modulated LayerNorm and the linear to p*p*out_channels features per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x [N, D]
        x = modulate(self.norm_final(x), shift, scale)  # [N, T, D]
        return self.linear(x)  # [N, T, p*p*out_channels]


class DiT(nn.Module):
    """Diffusion Transformer: noisy latents, timesteps and class labels -> eps (and variance) prediction.

    ``forward(x [N, C, H, W], t [N], y [N]) -> [N, out_channels, H, W]``. Built with the official
    initialisation; adaLN and the final linear start at zero, so a fresh model outputs zeros (see
    ``reinit_zero_layers``).
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = config.patch_size
        self.num_heads = config.num_heads
        self.learn_sigma = config.learn_sigma
        d = config.hidden_size

        self.x_embedder = PatchEmbed(config.input_size, config.patch_size, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        # Fixed table, saved in the state dict (official checkpoints include it) but never trained.
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, d), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(d, config.num_heads, mlp_ratio=config.mlp_ratio) for _ in range(config.depth)]
        )
        self.final_layer = FinalLayer(d, config.patch_size, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The official initialisation (xavier linears, N(0, .02) embeddings, zeroed adaLN and output)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        pos = get_2d_sincos_pos_embed(self.config.hidden_size, self.config.grid_size)  # float64 [T, D]
        self.pos_embed.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        # Patch embedding: xavier as if it were a linear over the flattened (C, p, p) input.
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in _zero_init_linears(self):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, p*p*out_channels] -> [N, out_channels, H, W]."""
        return unpatchify(x, self.patch_size, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        x = self.x_embedder(x) + self.pos_embed  # [N, T, D]
        t = self.t_embedder(t)  # [N, D]
        y = self.y_embedder(y, self.training)  # [N, D]
        c = t + y  # [N, D]
        for block in self.blocks:
            x = block(x, c)  # [N, T, D]
        x = self.final_layer(x, c)  # [N, T, p*p*out_channels]
        return self.unpatchify(x)  # [N, out_channels, H, W]

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, mode: str = "dit"
    ) -> torch.Tensor:
        """Classifier-free guided forward for a batch laid out as [cond half; uncond half].

        Only the first half of ``x`` is used (duplicated for both halves, as official DiT does); ``y`` holds
        the class labels in the first half and ``num_classes`` (the null class) in the second.
        ``eps_g = uncond + cfg_scale * (cond - uncond)`` is written to both halves of the guided channels;
        the other channels keep each half's own output (the first half's are the conditional values).

        mode "dit" (default, for exact reproducibility of official samples): guide channels 0..2 only, as
        official DiT does; for models with fewer than 3 input channels only the eps channels are guided.
        mode "all": guide all ``in_channels`` eps channels (the diffusers convention).
        Variance channels are never guided.
        """
        if mode == "dit":
            guided = min(3, self.in_channels)
        elif mode == "all":
            guided = self.in_channels
        else:
            raise ValueError(f"unknown cfg mode {mode!r}; use 'dit' or 'all'")
        if x.shape[0] % 2:
            raise ValueError("forward_with_cfg needs an even batch: [cond half; uncond half]")
        if not self.y_embedder.use_cfg_embedding:
            raise ValueError("model has no null-class embedding (class_dropout_prob == 0); CFG needs one")
        half = x[: x.shape[0] // 2]  # [N/2, C, H, W]
        combined = torch.cat([half, half], dim=0)  # [N, C, H, W]
        out = self.forward(combined, t, y)  # [N, out_channels, H, W]
        eps, rest = out[:, :guided], out[:, guided:]
        cond_eps, uncond_eps = eps.chunk(2, dim=0)  # each [N/2, guided, H, W]
        guided_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([guided_eps, guided_eps], dim=0)  # [N, guided, H, W]
        return torch.cat([eps, rest], dim=1)  # [N, out_channels, H, W]


def _zero_init_linears(model: DiT) -> list[nn.Linear]:
    """The linears the official initialisation zeroes: every adaLN projection and the final output."""
    layers = [block.adaLN_modulation[-1] for block in model.blocks]
    layers += [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    return layers


@torch.no_grad()
def reinit_zero_layers(model: DiT, std: float = 0.02, generator: torch.Generator | None = None) -> DiT:
    """Fill the zero-initialised layers (adaLN projections and the final linear, weights and biases) with
    N(0, std^2) values so that a randomly initialised model's outputs are not trivially zero.

    ``generator`` is a CPU generator; the values are drawn on the CPU and copied to the model's device,
    so a seed gives the same weights on every device. Returns the model.
    """
    for layer in _zero_init_linears(model):
        for p in (layer.weight, layer.bias):
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).mul_(std))
    return model

"""Mediator DiT/SiT: DiT's backbone with mediator attention in every block.

Written from the paper and its reference code (the mediator SiT of "Efficient Diffusion Transformer with Step-wise
Dynamic Attention Mediators"); parameter names match the reference code so its checkpoints load
unchanged. Sections: embedders, mediator attention, block, final layer, model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.config import ModelConfig
from ..ops import mediator_attention, mediator_block

BIAS_SIDE = 7  # an_bias / na_bias are stored on a 7x7 grid and resized to the token grid


# ---------------------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------------------
def sincos_pos_embed(dim: int, grid: int) -> np.ndarray:
    """The fixed 2-D sin-cos table (MAE recipe), (grid*grid, dim) float32; columns first, then rows."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def embed_1d(pos: np.ndarray) -> np.ndarray:
        out = np.outer(pos.reshape(-1), omega)  # (N, D/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (N, D/2)

    return np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1).astype(np.float32)  # (N, D)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, S, S) -> (B, N, D)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # (B, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim), cos first

    def forward(self, t: Tensor) -> Tensor:
        emb = self.timestep_embedding(t, self.frequency_embedding_size)  # (B, 256) float32
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (B, D)


class LabelEmbedder(nn.Module):
    """Class embedding with the extra null-class row used by classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: Tensor) -> Tensor:
        return self.embedding_table(y)  # (B, D); label dropout is a training-time matter


class TokenLinear(nn.Linear):
    """nn.Linear applied to (..., D) tokens as one 2-D matmul.

    Same numbers as nn.Linear (PyTorch flattens internally too), but the exported graph gets one ``Gemm``
    with a fused bias instead of a batched ``MatMul`` + ``Add``: about 20% faster in ONNX Runtime on CPU.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)


# ---------------------------------------------------------------------------------------------------------
# Mediator attention
# ---------------------------------------------------------------------------------------------------------
def pooling_matrix(grid: int, rows: int, cols: int) -> Tensor:
    """(rows*cols, grid*grid) matrix of adaptive average pooling from a grid x grid image to rows x cols.

    Windows follow PyTorch's adaptive pooling: output index i spans floor(i*G/out) .. ceil((i+1)*G/out).
    """

    def windows(out: int) -> Tensor:
        w = torch.zeros(out, grid, dtype=torch.float64)
        for i in range(out):
            lo, hi = (i * grid) // out, -((-(i + 1) * grid) // out)
            w[i, lo:hi] = 1.0 / (hi - lo)
        return w

    # P[(i, j), (r, c)] = row_w[i, r] * col_w[j, c]
    return torch.einsum("ir,jc->ijrc", windows(rows), windows(cols)).reshape(rows * cols, grid * grid).float()


class MediatorAttention(nn.Module):
    """Attention through n mediator tokens (pooled queries), with position biases and a depth-wise conv on v.

    The pooling matrix and the two bias tensors depend only on the weights and the token grid. They are
    computed once and kept as non-persistent buffers (constants of an exported graph), and recomputed only
    when a bias parameter changes (load_state_dict, an optimiser step, a move to another device).
    """

    def __init__(self, dim: int, num_heads: int, grid: int, mediators: int, mediator_grid: tuple[int, int]):
        super().__init__()
        self.num_heads, self.grid, self.mediators = num_heads, grid, mediators
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        n, H, G = mediators, num_heads, grid
        self.qkv = TokenLinear(dim, dim * 3, bias=True)
        self.proj = TokenLinear(dim, dim)
        self.dwc = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.an_bias = nn.Parameter(torch.zeros(H, n, BIAS_SIDE, BIAS_SIDE))
        self.na_bias = nn.Parameter(torch.zeros(H, n, BIAS_SIDE, BIAS_SIDE))
        self.ah_bias = nn.Parameter(torch.zeros(1, H, n, G, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, H, n, 1, G))
        self.ha_bias = nn.Parameter(torch.zeros(1, H, G, 1, n))
        self.wa_bias = nn.Parameter(torch.zeros(1, H, 1, G, n))
        for p in (self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias):
            nn.init.trunc_normal_(p, std=0.02)
        self.register_buffer("pool", pooling_matrix(G, *mediator_grid), persistent=False)  # (n, N)
        self.register_buffer("bias_mk", torch.empty(H, n, G * G), persistent=False)
        self.register_buffer("bias_qm", torch.empty(H, G * G, n), persistent=False)
        self._bias_key: tuple | None = None

    def _bias_params(self) -> tuple[Tensor, ...]:
        return (self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias)

    def position_biases(self) -> tuple[Tensor, Tensor]:
        """bias_mk (H, n, N) and bias_qm (H, N, n) from the bias parameters (spec, step 4)."""
        H, n, G = self.num_heads, self.mediators, self.grid
        an = F.interpolate(self.an_bias, size=(G, G), mode="bilinear", align_corners=False)  # (H, n, G, G)
        na = F.interpolate(self.na_bias, size=(G, G), mode="bilinear", align_corners=False)  # (H, n, G, G)
        bias_mk = an.reshape(H, n, G * G) + (self.ah_bias + self.aw_bias).reshape(H, n, G * G)
        bias_qm = na.reshape(H, n, G * G).transpose(1, 2) + (self.ha_bias + self.wa_bias).reshape(H, G * G, n)
        return bias_mk, bias_qm

    def refresh_constants(self, force: bool = False) -> None:
        """Recompute bias_mk / bias_qm if a bias parameter changed since the last computation."""
        key = tuple((p._version, p.data_ptr(), p.device, p.dtype) for p in self._bias_params())
        if force or key != self._bias_key:
            with torch.no_grad():
                bias_mk, bias_qm = self.position_biases()
                self.bias_mk = bias_mk.contiguous()
                self.bias_qm = bias_qm.contiguous()
            self.pool = self.pool.to(device=self.an_bias.device, dtype=self.an_bias.dtype)
            self._bias_key = tuple((p._version, p.data_ptr(), p.device, p.dtype) for p in self._bias_params())

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        H, d, G = self.num_heads, self.head_dim, self.grid
        if self.training and torch.is_grad_enabled():
            bias_mk, bias_qm = self.position_biases()  # training: keep the graph to the parameters
        else:
            if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
                self.refresh_constants()
            bias_mk, bias_qm = self.bias_mk, self.bias_qm
        qkv = self.qkv(x)  # (B, N, 3D): [q | k | v], each [head0 .. headH-1]
        if qkv.is_cuda and not (self.training or torch.compiler.is_exporting()):
            # One op for everything between the projections: on CUDA, Triton kernels that read qkv once and
            # write o once (the reference elsewhere, which is exactly the decomposed form below).
            o = mediator_block(
                qkv,
                self.pool,
                bias_mk.to(qkv.dtype),
                bias_qm.to(qkv.dtype),
                self.dwc.weight,
                self.dwc.bias,
                H,
                self.scale,
            )  # (B, N, D)
            return self.proj(o)
        # One permute splits q, k, v and the heads; the pooling and the dwc input work per head, so no other
        # layout change is needed.
        q, k, v = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) each
        m = self.pool.to(q.dtype) @ q  # (B, H, n, d): adaptive average pooling of q on the token grid
        o = mediator_attention(q, k, v, m, bias_mk.to(q.dtype), bias_qm.to(q.dtype), self.scale)  # (B, H, N, d)
        o = o.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        v_img = v.transpose(2, 3).reshape(B, D, G, G)  # (B, H, d, N) -> (B, D, G, G), channel h*d + j
        o = o + self.dwc(v_img).flatten(2).transpose(1, 2)  # (B, N, D)
        return self.proj(o)  # (B, N, D)


class FullAttention(nn.Module):
    """The vanilla DiT/SiT self-attention (timm's ``Attention`` with a qkv bias): the baseline a mediator
    model is measured against. Parameter names are timm's, so the public DiT and SiT checkpoints load."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = TokenLinear(dim, dim * 3, bias=True)
        self.proj = TokenLinear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d), scale d^-0.5 as timm's
        return self.proj(o.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


def make_attention(cfg: ModelConfig) -> nn.Module:
    if cfg.is_full:
        return FullAttention(cfg.hidden_size, cfg.num_heads)
    return MediatorAttention(cfg.hidden_size, cfg.num_heads, cfg.grid_size, cfg.mediators, cfg.mediator_grid)


# ---------------------------------------------------------------------------------------------------------
# Block and final layer (adaLN-Zero)
# ---------------------------------------------------------------------------------------------------------
def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = TokenLinear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = TokenLinear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MediatorBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.hidden_size
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = make_attention(cfg)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(D, int(D * cfg.mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, N, D)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, N, D)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = TokenLinear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C_out)


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------
class MediatorDiT(nn.Module):
    """DiT/SiT with mediator attention. ``model(x, t, y)`` predicts (B, C_in, S, S) as the reference does.

    With ``config.attention == "full"`` it is the vanilla DiT/SiT of the same size (its baseline)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        D, p = config.hidden_size, config.patch_size
        self.x_embedder = PatchEmbed(p, config.in_channels, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(config.num_classes, D)
        # Fixed, stored in checkpoints, never trained (as in the reference).
        self.pos_embed = nn.Parameter(
            torch.from_numpy(sincos_pos_embed(D, config.grid_size))[None], requires_grad=False
        )  # (1, N, D)
        self.blocks = nn.ModuleList(MediatorBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(D, p, config.out_channels)
        self.initialize_weights()

    def initialize_weights(self, *, zero_init: bool = True) -> None:
        """The reference's initialisation; ``zero_init=False`` keeps adaLN and the output layer random.

        With the reference's zero-initialised adaLN and output layers the network outputs zeros, which is
        useless for benchmarks and numerical tests; those use ``zero_init=False``.
        """

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(basic_init)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        adaln = [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1]]
        for layer in adaln + [self.final_layer.linear]:
            if zero_init:
                nn.init.constant_(layer.weight, 0)
                nn.init.constant_(layer.bias, 0)
            else:
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.normal_(layer.bias, std=0.02)

    def cast(self, dtype: torch.dtype, device: str | torch.device | None = None) -> MediatorDiT:
        """This model if it already has ``dtype`` (and ``device``), else a copy converted to them: the
        caller's model is never changed in place."""
        p = next(self.parameters())
        device = p.device if device is None else torch.device(device)
        if device.type == "cuda":  # the op's Triton kernel, where triton imports
            from ..ops.kernels import register_cuda_kernel

            register_cuda_kernel()
        if p.dtype == dtype and p.device == device:
            return self
        import copy

        return copy.deepcopy(self).to(device=device, dtype=dtype)

    def refresh_constants(self) -> None:
        """Recompute the per-block position-bias constants now (they are otherwise refreshed lazily)."""
        for block in self.blocks:
            if isinstance(block.attn, MediatorAttention):
                block.attn.refresh_constants(force=True)

    def unpatchify(self, x: Tensor) -> Tensor:
        c, p, G = self.config.out_channels, self.config.patch_size, self.config.grid_size
        x = x.reshape(x.shape[0], G, G, p, p, c)  # (B, G, G, p, p, C_out)
        x = x.permute(0, 5, 1, 3, 2, 4)  # the reference's einsum "nhwpqc->nchpwq": (B, C_out, G, p, G, p)
        return x.reshape(x.shape[0], c, G * p, G * p)  # (B, C_out, S, S)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        for block in self.blocks:
            x = block(x, c)  # (B, N, D)
        x = self.unpatchify(self.final_layer(x, c))  # (B, C_out, S, S)
        if self.config.learn_sigma:
            x, _ = x.chunk(2, dim=1)  # (B, C_in, S, S)
        return x

    def forward_with_cfg(self, x: Tensor, t: Tensor, y: Tensor, cfg_scale: float, channels: int | None = 3) -> Tensor:
        """Classifier-free guidance as the reference does it: x = [cond half; uncond half], y = [y; null].

        Only the first half of ``x`` is used (it is duplicated). Guidance applies to the first ``channels``
        output channels (3 in the reference, kept "for exact reproducibility"); ``channels=None`` guides all.
        """
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)  # (B, C, S, S)
        return guide(self.forward(combined, t, y), cfg_scale, channels)


def guide(out: Tensor, cfg_scale: float, channels: int | None = 3) -> Tensor:
    """Classifier-free guidance of a [cond; uncond] output (2B, C, S, S), as the reference combines it.

    The first ``channels`` channels (3 in the reference, kept "for exact reproducibility"; None: all) become
    uncond + s * (cond - uncond), in both halves; the other channels keep the model's output.
    """
    k = out.shape[1] if channels is None else channels
    eps, rest = out[:, :k], out[:, k:]
    cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond + cfg_scale * (cond - uncond)
    return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)

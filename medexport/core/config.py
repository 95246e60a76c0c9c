"""What a mediator DiT/SiT is: one frozen dataclass, the named sizes, and the mediator grid rule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..errors import ConfigError

# (depth, hidden size, heads) of the named sizes; DiT and SiT share the architecture.
SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCHES = (2, 4, 8)
FAMILIES = ("SiT", "DiT")
#: Every named config, e.g. "SiT-XL/2"; the CLI's --model choices.
MODEL_NAMES: tuple[str, ...] = tuple(f"{family}-{size}/{p}" for family in FAMILIES for size in SIZES for p in PATCHES)
VAE_DOWNSAMPLE = 8  # sd-vae latents are 1/8 of the image side, 4 channels
#: The image side of named configs when none is given (the paper's ImageNet 256x256).
DEFAULT_IMAGE_SIZE = 256
#: The attention of a model: the paper's mediator attention, or the full self-attention of vanilla DiT/SiT (the
#: baseline a mediator model is measured against; its "count" is 0, FULL).
ATTENTIONS = ("mediator", "full")
FULL = 0


def count_name(n: int) -> str:
    """How people read a bundle's count: "16", or "full" for the full-attention model of a vanilla twin."""
    return "full" if n == FULL else str(n)


def count_stem(n: int) -> str:
    """The stem of a count's files in a bundle: ``mediators-16``, or ``full-attention``."""
    return "full-attention" if n == FULL else f"mediators-{n}"


def mediator_grid(n: int) -> tuple[int, int]:
    """The (rows, cols) grid of ``n`` mediators: rows <= cols, as close to square as possible.

    16 -> (4, 4), 32 -> (4, 8), 8 -> (2, 4), 7 -> (1, 7).
    """
    if n < 1:
        raise ConfigError(f"mediator count must be >= 1, got {n}")
    rows = math.isqrt(n)
    while n % rows:
        rows -= 1
    return rows, n // rows


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a mediator DiT/SiT; everything here can be read off a checkpoint.

    Attributes:
        depth: number of transformer blocks.
        hidden_size: token width D.
        num_heads: attention heads H (D must divide by H).
        patch_size: patch side p of the patch embedding.
        input_size: latent side S (image side / 8 for sd-vae latents).
        mediators: mediator count n, 1 <= n <= N, whose grid (see :func:`mediator_grid`) fits the token grid;
            0 (:data:`FULL`) with ``attention="full"``.
        in_channels: latent channels C_in.
        num_classes: class labels; label ``num_classes`` is the null class used for guidance.
        learn_sigma: the network outputs 2*C_in channels and the forward returns the first C_in.
        mlp_ratio: MLP hidden width / D.
        attention: "mediator", or "full": the vanilla DiT/SiT (timm's self-attention, no mediators, no
            depth-wise conv), whose checkpoints are the public DiT/SiT ones.
    """

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    input_size: int
    mediators: int
    in_channels: int = 4
    num_classes: int = 1000
    learn_sigma: bool = True
    mlp_ratio: float = 4.0
    attention: str = "mediator"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        for name in ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ConfigError(f"hidden_size {self.hidden_size} must be a multiple of 4 (sin-cos embedding)")
        if self.input_size % self.patch_size:
            raise ConfigError(
                f"latent size {self.input_size} is not a multiple of the patch size {self.patch_size}: "
                f"use an image size that is a multiple of {VAE_DOWNSAMPLE * self.patch_size}"
            )
        n, N, G = self.mediators, self.num_tokens, self.grid_size
        if self.attention == "full":
            if n != FULL:
                raise ConfigError(
                    f"a full-attention model has no mediators (count {FULL}), got {n!r}: a "
                    f"vanilla DiT/SiT is built with --attention full and no --mediators"
                )
            return
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"mediator count must be a positive integer, got {n!r}")
        if n > N:
            raise ConfigError(f"{n} mediators exceed the {N} tokens of a {G}x{G} token grid: use at most {N}")
        rows, cols = mediator_grid(n)
        if cols > G:
            raise ConfigError(
                f"{n} mediators form a {rows}x{cols} grid, which does not fit the {G}x{G} token grid: "
                f"pick a count whose near-square factorisation has both sides <= {G} (e.g. a square number)"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        """Token grid side G = S / p."""
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """N = G * G."""
        return self.grid_size**2

    @property
    def is_full(self) -> bool:
        return self.attention == "full"

    @property
    def mediator_grid(self) -> tuple[int, int]:
        return (0, 0) if self.is_full else mediator_grid(self.mediators)

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def image_size(self) -> int:
        return self.input_size * VAE_DOWNSAMPLE

    def with_mediators(self, n: int) -> ModelConfig:
        """This architecture with ``n`` mediators (``FULL``: its full-attention twin)."""
        return replace(self, mediators=n, attention="full" if n == FULL else "mediator")

    def to_dict(self) -> dict:
        """JSON-ready description, including the derived grid values (for manifests and reports). ``attention``
        is written only for full attention: a manifest without it describes a mediator model, as before."""
        d = asdict(self)
        if not self.is_full:
            d.pop("attention")
        d.update(
            head_dim=self.head_dim,
            grid_size=self.grid_size,
            num_tokens=self.num_tokens,
            mediator_grid=list(self.mediator_grid),
            out_channels=self.out_channels,
        )
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        fields = cls.__dataclass_fields__
        try:
            return cls(**{k: v for k, v in d.items() if k in fields})
        except TypeError as e:
            raise ConfigError(f"incomplete model config {d!r}: {e}") from None


def config_from_name(
    name: str,
    *,
    mediators: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    **overrides,
) -> ModelConfig:
    """The config of a named model ("SiT-XL/2", "DiT-S/4", ...) at an image size; ``mediators=FULL`` (0) gives
    the vanilla model (full attention).

    ``overrides`` replace any :class:`ModelConfig` field (depth, hidden_size, ...) for custom sizes.
    """
    try:
        family, rest = name.split("-", 1)
        size, patch = rest.split("/")
        depth, hidden, heads = SIZES[size]
        patch_size = int(patch)
        if family not in FAMILIES or patch_size not in PATCHES:
            raise KeyError(name)
    except (ValueError, KeyError):
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}") from None
    step = VAE_DOWNSAMPLE * patch_size
    if not isinstance(image_size, int) or image_size < 1 or image_size % step:
        nearest = max(step, round(image_size / step) * step) if isinstance(image_size, int) else 256
        raise ConfigError(
            f"image size {image_size} is not a multiple of {step} (8 x patch size {patch_size}): use e.g. {nearest}"
        )
    unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown model config fields {sorted(unknown)}")
    fields = dict(
        depth=depth,
        hidden_size=hidden,
        num_heads=heads,
        patch_size=patch_size,
        input_size=image_size // VAE_DOWNSAMPLE,
        mediators=mediators,
        num_classes=num_classes,
        learn_sigma=learn_sigma,
        attention="full" if mediators == FULL else "mediator",
    )
    fields.update(overrides)
    return ModelConfig(**fields)

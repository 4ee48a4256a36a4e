"""The Depth Pro network: multi-scale ViT encoder, multi-resolution decoder, depth head, FOV head.

Module and parameter names follow Apple's released `depth_pro.pt`, so that
checkpoint loads with `strict=True` into `build_depth_pro(DepthProConfig.preset("depth_pro_l"))`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dp_train.model.config import DepthProConfig
from dp_train.model.vit import create_vit, load_dinov2_weights, tokens_to_map

FULL_RES_OVERLAP = 0.25
"""Overlap of neighbouring windows at full resolution (5x5 windows at the default size)."""
HALF_RES_OVERLAP = 0.5
"""Overlap of neighbouring windows at half resolution (3x3 windows at the default size)."""
WINDOW_LEVELS = ((1.0, FULL_RES_OVERLAP), (0.5, HALF_RES_OVERLAP))
"""(pyramid scale, window overlap) of the levels `MultiScaleEncoder` tiles into windows (the quarter-resolution
level is one window: no seam)."""


def downscale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear rescale by `factor` (no corner alignment), as the reference pyramid does."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def split_windows(x: torch.Tensor, window: int, overlap: float) -> torch.Tensor:
    """Cut (B, C, S, S) into overlapping (window x window) crops, stacked window-major on dim 0.

    Windows are ordered row by row (top-left first); crop k of image b lands at
    index `k * B + b`, which is the layout `merge_windows` expects.
    """
    stride = int(window * (1 - overlap))
    if (x.shape[-1] - window) % stride or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"a {tuple(x.shape[-2:])} image cannot be tiled by {window} px windows at stride {stride}")
    crops = x.unfold(2, window, stride).unfold(3, window, stride)  # B, C, rows, cols, window, window
    batch, channels, rows, cols = crops.shape[:4]
    return crops.permute(2, 3, 0, 1, 4, 5).reshape(rows * cols * batch, channels, window, window)


def merge_windows(features: torch.Tensor, batch_size: int, trim: int) -> torch.Tensor:
    """Stitch window features back into one map, trimming `trim` tokens at every inner seam.

    Each window loses `trim` tokens on every side it shares with a neighbour,
    i.e. half of the overlap, so each output token comes from the window whose
    centre it is closer to.
    """
    per_side = math.isqrt(features.shape[0] // batch_size)
    grid = features.reshape(per_side, per_side, batch_size, *features.shape[1:])
    size = features.shape[-1]
    lo = [0] + [trim] * (per_side - 1)
    hi = [size - trim] * (per_side - 1) + [size]
    rows = [
        torch.cat([grid[r, c][..., lo[r] : hi[r], lo[c] : hi[c]] for c in range(per_side)], dim=-1)
        for r in range(per_side)
    ]
    return torch.cat(rows, dim=-2)


def window_trim(grid_size: int, overlap: float) -> int:
    """Tokens `merge_windows` trims per inner seam: half of the window overlap, in tokens."""
    return int(grid_size * overlap) // 2


def seam_positions(cfg: DepthProConfig) -> tuple[int, ...]:
    """Where the merged window features switch from one window to the next, as pixel edges of the network's
    S x S output (S = `cfg.img_size`; edge p lies between pixels p - 1 and p), over every tiled level, ascending;
    the same for rows and columns (the windows tile a square).

    A level of scale s is s * S pixels wide, cut into windows of `vit_img_size` pixels (g tokens a side) at
    `split_windows`' stride; `merge_windows` keeps g - t tokens of the first window and g - 2t of each inner
    one (t = `window_trim`), so the k-th switch (k >= 1) follows (g - t) + (k - 1)(g - 2t) tokens, a token
    being `patch_size / s` output pixels (the decoder upsamples every level back to S). `depth_pro_l`:
    336, 624, 912, 1200 (5x5 windows at 1536) and 576, 960 (3x3 at 768)."""
    window, grid = cfg.vit_img_size, cfg.grid_size
    edges: set[int] = set()
    for scale, overlap in WINDOW_LEVELS:
        count = (round(cfg.img_size * scale) - window) // int(window * (1 - overlap)) + 1
        trim = window_trim(grid, overlap)
        edges |= {round((grid - trim + k * (grid - 2 * trim)) * cfg.patch_size / scale) for k in range(count - 1)}
    return tuple(sorted(edges))


def project_upsample(dim_in: int, dim_out: int, upsamplings: int, dim_mid: int | None = None) -> nn.Sequential:
    """1x1 projection followed by `upsamplings` stride-2 transposed convolutions (no biases)."""
    dim_mid = dim_mid or dim_out
    layers: list[nn.Module] = [nn.Conv2d(dim_in, dim_mid, kernel_size=1, bias=False)]
    layers += [
        nn.ConvTranspose2d(dim_mid if i == 0 else dim_out, dim_out, kernel_size=2, stride=2, bias=False)
        for i in range(upsamplings)
    ]
    return nn.Sequential(*layers)


class MultiScaleEncoder(nn.Module):
    """Encodes a 3-level image pyramid with one patch ViT over all windows plus a global image ViT.

    Outputs five maps, highest resolution first: two from intermediate blocks of
    the full-resolution windows, then full-, half- and quarter-resolution
    features (the last fused with the global image encoding).
    """

    def __init__(self, cfg: DepthProConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_encoder = create_vit(cfg)
        self.image_encoder = create_vit(cfg)
        dim, dims = cfg.embed_dim, cfg.encoder_feature_dims
        self.upsample_latent0 = project_upsample(dim, cfg.decoder_features, 3, dim_mid=dims[0])
        self.upsample_latent1 = project_upsample(dim, dims[0], 2)
        self.upsample0 = project_upsample(dim, dims[1], 1)
        self.upsample1 = project_upsample(dim, dims[2], 1)
        self.upsample2 = project_upsample(dim, dims[3], 1)
        self.upsample_lowres = nn.ConvTranspose2d(dim, dims[3], kernel_size=2, stride=2, bias=True)
        self.fuse_lowres = nn.Conv2d(2 * dims[3], dims[3], kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode a (B, 3, 4v, 4v) image into the five decoder inputs."""
        batch = x.shape[0]
        window = self.cfg.vit_img_size
        quarter = downscale(x, 0.25)
        full_windows = split_windows(x, window, FULL_RES_OVERLAP)
        half_windows = split_windows(downscale(x, 0.5), window, HALF_RES_OVERLAP)
        all_windows = torch.cat([full_windows, half_windows, quarter])

        final, hooks = self.patch_encoder.forward_intermediates(
            all_windows, indices=list(self.cfg.hook_blocks), output_fmt="NCHW"
        )
        final = tokens_to_map(final, self.patch_encoder)
        n_full = full_windows.shape[0]
        full_trim = window_trim(self.cfg.grid_size, FULL_RES_OVERLAP)
        latent0 = merge_windows(hooks[0][:n_full], batch, full_trim)
        latent1 = merge_windows(hooks[1][:n_full], batch, full_trim)
        full, half, lowres = final.split([n_full, half_windows.shape[0], batch])
        full = merge_windows(full, batch, full_trim)
        half = merge_windows(half, batch, window_trim(self.cfg.grid_size, HALF_RES_OVERLAP))

        global_features = tokens_to_map(self.image_encoder.forward_features(quarter), self.image_encoder)
        global_features = self.upsample_lowres(global_features)
        lowres = self.fuse_lowres(torch.cat([self.upsample2(lowres), global_features], dim=1))
        return [
            self.upsample_latent0(latent0),
            self.upsample_latent1(latent1),
            self.upsample0(full),
            self.upsample1(half),
            lowres,
        ]


class ResidualConvUnit(nn.Module):
    """x + conv3x3(relu(conv3x3(relu(x)))), the DPT residual unit (pre-activation)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(features, features, kernel_size=3, padding=1),
            nn.ReLU(inplace=False),
            nn.Conv2d(features, features, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual unit."""
        return x + self.residual(x)


class FusionBlock(nn.Module):
    """DPT feature fusion: add the refined skip input, refine, optionally upsample x2, project."""

    def __init__(self, features: int, upsample: bool) -> None:
        super().__init__()
        self.resnet1 = ResidualConvUnit(features)
        self.resnet2 = ResidualConvUnit(features)
        self.deconv = (
            nn.ConvTranspose2d(features, features, kernel_size=2, stride=2, bias=False) if upsample else None
        )
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse the coarser path `x` with the same-resolution `skip` features."""
        if skip is not None:
            x = x + self.resnet1(skip)
        x = self.resnet2(x)
        if self.deconv is not None:
            x = self.deconv(x)
        return self.out_conv(x)


class MultiResolutionDecoder(nn.Module):
    """Projects every encoder level to `decoder_features` and fuses them coarse to fine."""

    def __init__(self, level_dims: list[int], features: int) -> None:
        super().__init__()
        first = nn.Conv2d(level_dims[0], features, 1, bias=False) if level_dims[0] != features else nn.Identity()
        self.convs = nn.ModuleList(
            [first] + [nn.Conv2d(d, features, kernel_size=3, padding=1, bias=False) for d in level_dims[1:]]
        )
        self.fusions = nn.ModuleList([FusionBlock(features, upsample=i != 0) for i in range(len(level_dims))])
        # The coarsest fusion has no skip input: its resnet1 exists for the reference checkpoint layout only.
        # Frozen, DDP does not wait for gradients it never gets.
        self.fusions[-1].resnet1.requires_grad_(False)

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the fused full-detail features and the projected lowest-resolution features."""
        lowres = self.convs[-1](levels[-1])
        x = self.fusions[-1](lowres)
        for i in range(len(levels) - 2, -1, -1):
            x = self.fusions[i](x, self.convs[i](levels[i]))
        return x, lowres


def depth_head(features: int) -> nn.Sequential:
    """Convolutions from decoder features to non-negative canonical inverse depth at 2x resolution."""
    head = nn.Sequential(
        nn.Conv2d(features, features // 2, kernel_size=3, padding=1),
        nn.ConvTranspose2d(features // 2, features // 2, kernel_size=2, stride=2, bias=True),
        nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 1, kernel_size=1),
        nn.ReLU(),
    )
    return head


def start_alive(head: nn.Sequential) -> None:
    """Zero the last bias (as the reference) and make the last weights non-negative.

    The last convolution's input is a ReLU output, so non-negative weights make
    the final ReLU start alive on every pixel; with signed random weights a fresh
    head can output 0 everywhere and never receive a gradient.
    """
    with torch.no_grad():
        head[4].bias.zero_()
        head[4].weight.abs_()


INITIAL_FOV_DEG = 60.0
"""Bias of the FOV head's last layer at initialisation: a plausible horizontal FOV (see `start_plausible`)."""


def start_plausible(fov_head: FOVHead) -> None:
    """Start the FOV head near a plausible FOV: its last bias is `INITIAL_FOV_DEG` (the reference leaves it at
    PyTorch's default). From an output near 0 degrees, the FOV objective's clamp to [1, 179] degrees passes
    no gradient and the head never learns."""
    with torch.no_grad():
        fov_head.head[-1].bias.fill_(INITIAL_FOV_DEG)


class FOVHead(nn.Module):
    """Predicts the horizontal field of view (degrees) from its own ViT plus the decoder's lowres features."""

    def __init__(self, cfg: DepthProConfig) -> None:
        super().__init__()
        features = cfg.decoder_features
        self.encoder = nn.Sequential(create_vit(cfg), nn.Linear(cfg.embed_dim, features // 2))
        self.downsample = nn.Sequential(
            nn.Conv2d(features, features // 2, kernel_size=3, stride=2, padding=1), nn.ReLU(inplace=True)
        )
        self.head = nn.Sequential(
            nn.Conv2d(features // 2, features // 4, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(features // 4, features // 8, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(features // 8, 1, kernel_size=math.ceil(cfg.grid_size / 4)),
        )

    def forward(self, x: torch.Tensor, lowres_features: torch.Tensor) -> torch.Tensor:
        """Return the FOV in degrees, shape (B,), for the image `x` at network resolution."""
        vit, project = self.encoder
        tokens = project(vit.forward_features(downscale(x, 0.25)))
        fused = tokens_to_map(tokens, vit) + self.downsample(lowres_features)
        return self.head(fused).flatten()


class DepthPro(nn.Module):
    """Depth Pro: canonical inverse depth and (optionally) horizontal FOV from one image."""

    def __init__(self, cfg: DepthProConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = MultiScaleEncoder(cfg)
        self.decoder = MultiResolutionDecoder([cfg.decoder_features, *cfg.encoder_feature_dims], cfg.decoder_features)
        self.head = depth_head(cfg.decoder_features)
        self.fov = FOVHead(cfg) if cfg.fov_head else None
        init_convolutions(self, skip=self.vits())
        start_alive(self.head)
        if self.fov is not None:
            start_plausible(self.fov)

    @property
    def img_size(self) -> int:
        """Side of the square input the network runs at."""
        return self.config.img_size

    def vits(self) -> list[nn.Module]:
        """The pretrained-initialisable ViT encoders (patch, image and, if present, FOV)."""
        vits = [self.encoder.patch_encoder, self.encoder.image_encoder]
        return vits + ([self.fov.encoder[0]] if self.fov is not None else [])

    def forward(self, x: torch.Tensor, with_fov: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Map a (B, 3, S, S) image in [-1, 1] to canonical inverse depth (B, 1, S, S) and FOV (B,) or None
        (no FOV head, or `with_fov` False: depth training skips the FOV ViT's cost).

        The FOV head sees the decoder's features detached, so training it never
        changes the depth network.
        """
        size = self.img_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (size, size):
            raise ValueError(f"expected a (B, 3, {size}, {size}) image batch, got {tuple(x.shape)}; use infer()")
        features, lowres = self.decoder(self.encoder(x))
        canonical_inverse_depth = self.head(features)
        fov_deg = self.fov(x, lowres.detach()) if self.fov is not None and with_fov else None
        return canonical_inverse_depth, fov_deg

    @torch.no_grad()
    def infer(self, image: torch.Tensor, f_px: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Metric depth (metres) and focal length (pixels) for images of any size.

        `image` is (3, H, W) or (B, 3, H, W) in [-1, 1]. It is resized to the
        network size and the inverse depth resized back, as the reference does.
        The focal length is `f_px` when given, else derived from the FOV head.
        Returns `depth` (B, H, W) or (H, W) and `focallength_px` (B,) or ().
        """
        single = image.ndim == 3
        x = image.unsqueeze(0) if single else image
        height, width = x.shape[-2:]
        x = x.to(next(self.parameters()).dtype)
        if (height, width) != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        canonical_inverse_depth, fov_deg = self.forward(x)
        focal = self._focal_px(f_px, fov_deg, width, x.shape[0], x.device)
        depth = metric_depth(canonical_inverse_depth, focal, height, width)
        return {"depth": depth[0] if single else depth, "focallength_px": focal[0] if single else focal}

    @staticmethod
    def _focal_px(
        f_px: float | torch.Tensor | None, fov_deg: torch.Tensor | None, width: int, batch: int, device: torch.device
    ) -> torch.Tensor:
        """Focal length per image: the given one, else `0.5 W / tan(fov / 2)` from the FOV head."""
        if f_px is not None:
            return torch.as_tensor(f_px, dtype=torch.float32, device=device).reshape(-1).expand(batch)
        if fov_deg is None:
            raise ValueError("no focal length given and the network has no FOV head (fov_head=False)")
        return 0.5 * width / torch.tan(0.5 * torch.deg2rad(fov_deg.float()))


def metric_depth(canonical_inverse_depth: torch.Tensor, focal_px: torch.Tensor, height: int, width: int
                 ) -> torch.Tensor:
    """(B, H, W) float32 metric depth (metres) of images `width` x `height` from the network's (B, 1, S, S)
    canonical inverse depth and their focal lengths in pixels ((B,)): inverse depth `C W / f`, resized bilinearly
    (half-pixel centres) to the image as the reference does, clamped to [1e-4, 1e4] and inverted. `infer` and
    `predict`'s batched runner share it, so their outputs agree."""
    inverse_depth = canonical_inverse_depth.float() * (width / focal_px).view(-1, 1, 1, 1)
    if inverse_depth.shape[-2:] != (height, width):
        inverse_depth = F.interpolate(inverse_depth, size=(height, width), mode="bilinear", align_corners=False)
    return (1.0 / inverse_depth.clamp(min=1e-4, max=1e4))[:, 0]


def init_convolutions(module: nn.Module, skip: list[nn.Module]) -> None:
    """Variance-preserving init of the (de)convolutions outside the ViTs, biases zero.

    PyTorch's default init shrinks the signal about 12x per stride-2 transposed
    convolution, so after `upsample_latent0`'s three of them the encoder's
    contribution is drowned by the decoder's biases and a network trained from
    scratch barely sees its input. Weights are drawn with std 1/sqrt(fan_in),
    fan_in being the inputs that actually reach one output pixel. (Released
    checkpoints overwrite all of this.) Modules inside `skip` (the ViTs) keep timm's init.
    """
    skipped = {id(m) for part in skip for m in part.modules()}
    for layer in module.modules():
        if id(layer) in skipped:
            continue
        if isinstance(layer, nn.ConvTranspose2d):
            overlap = math.prod(math.ceil(k / s) for k, s in zip(layer.kernel_size, layer.stride))
            fan_in = layer.in_channels * overlap
        elif isinstance(layer, nn.Conv2d):
            fan_in = layer.in_channels * math.prod(layer.kernel_size)
        else:
            continue
        nn.init.normal_(layer.weight, std=fan_in**-0.5)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def build_depth_pro(cfg: DepthProConfig) -> DepthPro:
    """Build a Depth Pro network; ViTs start from `cfg.dinov2_weights` when set, else random."""
    model = DepthPro(cfg)
    if cfg.dinov2_weights:
        for vit in model.vits():
            load_dinov2_weights(vit, cfg.dinov2_weights)
    return model

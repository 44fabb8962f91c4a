"""`model.pretrained_file`: backbone weights from a local or s3:// file (safetensors or a torch state dict) instead
of the hub, strict on the backbone's keys, with errors that say what does not fit."""

from __future__ import annotations

import dataclasses

import pytest
import safetensors.torch
import timm
import torch

from geosurge import storage
from geosurge.config import ModelConfig
from geosurge.models import HierarchySpec, create_model
from geosurge.models.backbone import Backbone
from tests.models.model_helpers import TINY_VIT, small_hierarchy

# A CLIP-style tiny ViT (pre-norm, no patch-embedding bias), the layout of the paper's backbone.
CLIP_NAME = "vit_base_patch16_clip_224"
CLIP_KW = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}


@pytest.fixture(scope="module")
def hierarchy() -> HierarchySpec:
    return HierarchySpec.from_hierarchy(small_hierarchy())


def _source(name: str = CLIP_NAME, seed: int = 0, num_classes: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **(kw or CLIP_KW)).eval()


def _save(state: dict[str, torch.Tensor], uri: str, s3=None) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if uri.endswith(".safetensors"):
        data = safetensors.torch.save(state)
    else:
        import io

        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    storage.write_bytes(uri, data, s3)


def _config(uri: str, name: str = CLIP_NAME, kw: dict | None = None) -> ModelConfig:
    return ModelConfig(name="geosurge", backbone=name, backbone_kwargs=dict(kw or CLIP_KW), pretrained=True,
                       pretrained_file=uri, embed_dim=16, fusion_blocks=1, fusion_heads=2)


def _expected_tokens(source: torch.nn.Module, backbone: Backbone, image: torch.Tensor) -> torch.Tensor:
    features = source.forward_features(backbone.pixels(image))
    return torch.cat([features[:, :1], features[:, source.num_prefix_tokens:]], dim=1)


@pytest.fixture
def no_hub(monkeypatch):
    """Fails the test if anything asks timm for hub weights."""
    create = timm.create_model

    def guarded(*args, **kwargs):
        assert not kwargs.get("pretrained"), "hub weights were requested"
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", guarded)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_saved_state_dict_loads_through_the_config_and_computes_what_the_source_computes(
    where, suffix, request, tmp_path, hierarchy, no_hub
):
    s3 = request.getfixturevalue("s3") if where == "s3" else None
    source = _source()
    uri = f"s3://weights/{where}/clip{suffix}" if s3 else str(tmp_path / f"clip{suffix}")
    _save(source.state_dict(), uri, s3)

    model = create_model(_config(uri), hierarchy, s3=s3).eval()
    image = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(image), _expected_tokens(source, model.backbone, image), rtol=0, atol=1e-6)
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.model.state_dict()[key], value), key


def test_a_file_with_the_hub_classifier_head_loads_into_the_headless_backbone(tmp_path, hierarchy, no_hub):
    # timm.create_model("vit_large_patch14_clip_336.openai", pretrained=True) has a 768-way head (CLIP's projection)
    source = _source(num_classes=24)
    uri = str(tmp_path / "with_head.safetensors")
    _save(source.state_dict(), uri)
    backbone = Backbone(CLIP_NAME, CLIP_KW, pretrained=True, pretrained_file=uri).eval()
    image = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(backbone(image), _expected_tokens(source, backbone, image), rtol=0, atol=1e-6)


def _openai_layout(source: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`source`'s weights in the OpenAI CLIP / open_clip layout (`visual.*`, as in the hub's
    open_clip_pytorch_model.bin), with a text-tower tensor beside them."""
    renames = [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
               ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
    out = {}
    for key, value in source.state_dict().items():
        if key == "cls_token":
            out["visual.class_embedding"] = value[0, 0]
        elif key == "pos_embed":
            out["visual.positional_embedding"] = value[0]
        elif key.startswith("norm."):
            out["visual.ln_post." + key.removeprefix("norm.")] = value
        elif key == "head.weight":
            out["visual.proj"] = value.t()
        elif key != "head.bias":
            for a, b in renames:
                key = key.replace(a, b)
            out["visual." + key] = value
    out["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3, 1)  # the text tower: ignored
    out["logit_scale"] = torch.tensor(4.6)
    return out


def test_an_openai_clip_layout_file_loads_through_timms_checkpoint_filter(tmp_path, hierarchy, no_hub):
    source = _source(num_classes=24)
    uri = str(tmp_path / "open_clip_pytorch_model.bin")
    _save(_openai_layout(source), uri)
    backbone = Backbone(CLIP_NAME, CLIP_KW, pretrained=True, pretrained_file=uri).eval()
    image = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(backbone(image), _expected_tokens(source, backbone, image), rtol=0, atol=1e-6)


def test_a_wrong_architecture_names_missing_unexpected_and_misshapen_keys(tmp_path, hierarchy):
    deeper = str(tmp_path / "deeper.safetensors")
    _save(_source(**{**CLIP_KW, "depth": 3}).state_dict(), deeper)
    with pytest.raises(ValueError, match=r"does not fit backbone .*unexpected \(e\.g\. blocks\.2\.") as err:
        create_model(_config(deeper), hierarchy)
    assert deeper in str(err.value) and "0 missing" in str(err.value)

    wider = str(tmp_path / "wider.pt")
    _save(_source(**{**CLIP_KW, "embed_dim": 64}).state_dict(), wider)
    with pytest.raises(ValueError, match=r"shape mismatches \(e\.g\. .*file \(.*64.*\) vs model \(.*48"):
        create_model(_config(wider), hierarchy)

    other_family = str(tmp_path / "tiny_vit.safetensors")  # a plain ViT has a patch-embedding bias, no norm_pre
    _save(_source("vit_tiny_patch16_224", **TINY_VIT).state_dict(), other_family)
    with pytest.raises(ValueError, match=r"missing \(e\.g\. .*norm_pre"):
        Backbone(CLIP_NAME, CLIP_KW, pretrained=True, pretrained_file=other_family)


def test_missing_files_and_other_formats_fail_clearly(tmp_path, hierarchy, s3):
    for uri, s3_config in ((str(tmp_path / "nowhere.safetensors"), None), ("s3://weights/nowhere.pt", s3)):
        with pytest.raises(FileNotFoundError, match="pretrained_file .*nowhere.* does not exist"):
            create_model(_config(uri), hierarchy, s3=s3_config)
    with pytest.raises(ValueError, match="expected a file ending in"):
        create_model(_config(str(tmp_path / "weights.onnx")), hierarchy)
    not_weights = str(tmp_path / "list.pt")
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(ValueError, match="holds no state dict"):
        create_model(_config(not_weights), hierarchy)


def test_the_file_is_read_only_when_pretrained_and_never_when_the_caller_says_not_to(tmp_path, hierarchy, no_hub):
    missing = str(tmp_path / "missing.safetensors")
    # trained weights are loaded next: pretrained=False reads nothing, not even a file that is not there
    model = create_model(_config(missing), hierarchy, pretrained=False)
    assert isinstance(model.backbone, Backbone)
    with pytest.warns(UserWarning, match="ignored: pretrained is false"):
        create_model(dataclasses.replace(_config(missing), pretrained=False), hierarchy)


def test_a_training_checkpoint_wrapping_the_weights_loads(tmp_path, no_hub):
    source = _source()
    uri = str(tmp_path / "checkpoint.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, uri)
    backbone = Backbone(CLIP_NAME, CLIP_KW, pretrained=True, pretrained_file=uri)
    assert all(torch.equal(backbone.model.state_dict()[k], v) for k, v in source.state_dict().items())

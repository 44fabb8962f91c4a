"""Segmenter families (SegFormer, OneFormer, Mask2Former, MaskFormer) on tiny random models: label maps, save →
reload by family, the query → pixel class scores, OneFormer's task inputs and normalisation against transformers'
own processor, and a checkpoint folder loaded from a real S3 server through the local cache. CPU, no network."""

import dataclasses
import math
import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from geosurge import storage
from geosurge.segmentation import (
    RANDOM_MASK2FORMER,
    RANDOM_ONEFORMER,
    RANDOM_SEGMENTER,
    RANDOM_SPECS,
    Segmenter,
    is_random_spec,
)
from geosurge.segmentation.ade20k import NUM_ADE20K_CLASSES
from geosurge.segmentation.cache import cache_folder
from geosurge.segmentation.families import (
    SEMANTIC_TASK_TOKENS,
    Mask2FormerFamily,
    MaskFormerFamily,
    OneFormerFamily,
    queries_to_class_scores,
    semantic_task_inputs,
)
from geosurge.segmentation.segmenter import load_segmenter

GRID = 4
MODEL_CLASS = {RANDOM_SEGMENTER: "SegformerForSemanticSegmentation",
               RANDOM_ONEFORMER: "OneFormerForUniversalSegmentation",
               RANDOM_MASK2FORMER: "Mask2FormerForUniversalSegmentation"}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def segmenters() -> dict[str, Segmenter]:
    return {spec: Segmenter(spec, GRID, device="cpu") for spec in RANDOM_SPECS}


def scores(segmenter: Segmenter, images: np.ndarray) -> torch.Tensor:
    """The family's per-pixel class scores for `images`, normalised as label_maps does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(segmenter._divisor)
    with torch.inference_mode():
        return segmenter.family.class_scores((x - segmenter._mean) / segmenter._std)


def test_random_specs():
    assert RANDOM_SPECS == (RANDOM_SEGMENTER, RANDOM_ONEFORMER, RANDOM_MASK2FORMER)
    assert all(is_random_spec(spec) for spec in RANDOM_SPECS)
    assert not any(is_random_spec(spec) for spec in ("geoworld", "none", "ground_truth", "shi-labs/x", "s3://b/f"))
    model, is_random = load_segmenter(RANDOM_ONEFORMER)
    assert is_random and not model.training and type(model).__name__ == MODEL_CLASS[RANDOM_ONEFORMER]


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_random_segmenters_make_ade20k_label_maps(spec, segmenters, images):
    segmenter = segmenters[spec]
    assert segmenter.is_random and type(segmenter.model).__name__ == MODEL_CLASS[spec]
    assert segmenter.model.config.num_labels == NUM_ADE20K_CLASSES
    maps = segmenter.label_maps(images)
    assert maps.shape == (3, GRID, GRID) and maps.dtype == np.uint8 and maps.max() < NUM_ADE20K_CLASSES
    assert scores(segmenter, images).shape[:2] == (3, NUM_ADE20K_CLASSES)
    assert np.array_equal(segmenter.label_maps(images), maps)  # eval mode: no dropout


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_saved_random_segmenter_reloads_as_its_family(spec, segmenters, images, tmp_path):
    segmenter = segmenters[spec]
    segmenter.model.save_pretrained(tmp_path / "ckpt")
    loaded = Segmenter(str(tmp_path / "ckpt"), GRID, device="cpu")
    # the family comes from the saved config.json's model_type
    assert type(loaded.model) is type(segmenter.model) and not loaded.is_random
    assert np.array_equal(loaded.label_maps(images), segmenter.label_maps(images))
    assert torch.equal(scores(loaded, images), scores(segmenter, images))


def test_maskformer_checkpoint_loads_as_maskformer(images, tmp_path):
    MaskFormerFamily.random().model.save_pretrained(tmp_path / "maskformer")
    segmenter = Segmenter(str(tmp_path / "maskformer"), GRID, device="cpu")
    assert type(segmenter.model).__name__ == "MaskFormerForInstanceSegmentation"
    maps = segmenter.label_maps(images)
    assert maps.shape == (3, GRID, GRID) and maps.max() < NUM_ADE20K_CLASSES


def test_query_class_scores_by_hand():
    # 2 queries over 2 classes (+ "no object"), 1×2 pixels. Query 0: class 0 (p .7), mask on pixel 0 (.9);
    # query 1: class 1 (p .8), mask on pixel 1 (.9) and half on pixel 0 (.5).
    class_logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]]))

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    mask_logits = torch.tensor([[[[logit(0.9), logit(0.1)]], [[logit(0.5), logit(0.9)]]]])
    got = queries_to_class_scores(class_logits, mask_logits)
    # pixel 0: class 0 = .7*.9 + .1*.5 = .68, class 1 = .2*.9 + .8*.5 = .58; pixel 1: .7*.1 + .1*.9 = .16, .2*.1 + .8*.9 = .74
    expected = torch.tensor([[[[0.68, 0.16]], [[0.58, 0.74]]]])
    assert got.shape == (1, 2, 1, 2) and torch.allclose(got, expected, atol=1e-6)
    assert got.argmax(dim=1).tolist() == [[[0, 1]]]
    # a query sure of "no object" adds (almost) nothing, however large its mask
    sure_nothing = torch.tensor([[[-10.0, -10.0, 10.0]]])
    more = queries_to_class_scores(torch.cat([class_logits, sure_nothing], 1),
                                   torch.cat([mask_logits, torch.full((1, 1, 1, 2), 10.0)], 1))
    assert torch.allclose(more, expected, atol=1e-7 + 3e-9 * 2)


def test_query_class_scores_match_transformers_post_processing():
    from transformers.models.oneformer.image_processing_oneformer import OneFormerImageProcessor

    g = torch.Generator().manual_seed(0)
    outputs = SimpleNamespace(class_queries_logits=torch.randn(2, 5, 8, generator=g),
                              masks_queries_logits=torch.randn(2, 5, 6, 7, generator=g))
    reference = OneFormerImageProcessor().post_process_semantic_segmentation(outputs, return_segmentation_scores=True)
    got = queries_to_class_scores(outputs.class_queries_logits, outputs.masks_queries_logits)
    for i, item in enumerate(reference):
        assert torch.allclose(got[i], item.segmentation_scores, atol=1e-6)
        assert torch.equal(got[i].argmax(dim=0), item.segmentation)


def test_builtin_task_tokens_pad_with_zeros():
    inputs = semantic_task_inputs(77)
    assert inputs.shape == (1, 77) and inputs.dtype == torch.float32
    assert inputs[0, :7].tolist() == list(SEMANTIC_TASK_TOKENS) and not inputs[0, 7:].any()


def tiny_clip_tokenizer():
    """A CLIP tokenizer over single letters (no merges): real CLIP's vocabulary cannot be had offline."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase)]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def test_oneformer_folder_with_processor_uses_its_tokenizer_and_statistics(images, tmp_path):
    from transformers import OneFormerProcessor
    from transformers.models.oneformer.image_processing_oneformer import OneFormerImageProcessor

    folder = tmp_path / "oneformer"
    OneFormerFamily.random(seed=1).model.save_pretrained(folder)
    # statistics in 0-255 scale without rescaling: another way processors are configured
    processor = OneFormerProcessor(tokenizer=tiny_clip_tokenizer(), image_processor=OneFormerImageProcessor(
        image_mean=[123.675, 116.28, 103.53], image_std=[58.395, 57.12, 57.375], do_rescale=False, do_resize=False))
    processor.save_pretrained(folder)
    segmenter = Segmenter(str(folder), GRID, device="cpu")
    reference = processor(images=list(images), task_inputs=["semantic"] * len(images), return_tensors="pt")
    assert torch.equal(segmenter.family.task_inputs[0], reference["task_inputs"][0].float())
    assert segmenter.family.task_inputs[0, :7].tolist() != list(SEMANTIC_TASK_TOKENS)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(segmenter._divisor)
    assert torch.allclose((x - segmenter._mean) / segmenter._std, reference["pixel_values"], atol=1e-5)
    assert segmenter.label_maps(images).shape == (3, GRID, GRID)


def upload_folder(folder, uri: str, s3) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{uri}/{path.relative_to(folder).as_posix()}", path.read_bytes(), s3)


def test_segmenter_from_an_s3_folder_is_copied_once_and_matches_the_local_one(s3, images, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSURGE_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "m2f"
    Mask2FormerFamily.random(seed=3).model.save_pretrained(local)
    uri = "s3://segmenters/tiny-mask2former"
    upload_folder(local, uri, s3)

    remote = Segmenter(uri, GRID, device="cpu", s3=s3)
    expected = Segmenter(str(local), GRID, device="cpu")
    assert type(remote.model).__name__ == "Mask2FormerForUniversalSegmentation" and not remote.is_random
    assert np.array_equal(remote.label_maps(images), expected.label_maps(images))
    assert torch.equal(scores(remote, images), scores(expected, images))

    cached = cache_folder(uri)
    assert cached.parent == tmp_path / "cache" and cache_folder(uri + "/") == cached
    assert sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in local.iterdir())
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cached.name]  # no temporary folder left behind
    # the second load takes the cached copy and never asks the bucket: these credentials would be refused
    refused = dataclasses.replace(s3, secret_access_key="not-the-secret")
    again = Segmenter(uri, GRID, device="cpu", s3=refused)
    assert np.array_equal(again.label_maps(images), expected.label_maps(images))
    with pytest.raises(OSError):  # (the refusal is real: a new URI must go to the bucket)
        Segmenter("s3://segmenters/other", GRID, device="cpu", s3=refused)


def test_missing_s3_folder_fails_and_caches_nothing(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSURGE_CACHE", str(tmp_path / "cache"))
    storage.write_bytes("s3://segmenters/readme.txt", b"a bucket that exists", s3)
    with pytest.raises(FileNotFoundError):
        Segmenter("s3://segmenters/no-such-folder", GRID, device="cpu", s3=s3)
    assert not cache_folder("s3://segmenters/no-such-folder").exists()

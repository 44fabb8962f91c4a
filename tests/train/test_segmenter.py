"""Offline segmenter: mIoU on hand-made arrays, and a real train → save → reload → segment round trip."""

import json

import numpy as np
import pytest

from geosurge.config import GeoWorldConfig
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.images import ImageSpec
from geosurge.segmentation.ade20k import NUM_ADE20K_CLASSES
from geosurge.segmentation.segmenter import Segmenter, load_segmenter, random_segformer
from geosurge.train.segmenter import (
    METRICS_FILE,
    SegmenterTrainConfig,
    confusion_matrix,
    decoder_grid_labels,
    evaluate_segmenter,
    iou_scores,
    load_split,
    train_geoworld_segmenter,
)


def test_miou_and_pixel_accuracy_on_hand_made_arrays():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])  # 255: ignored
    pred = np.array([[0, 1, 1, 1], [2, 3, 0, 4]])
    miou, accuracy, iou = iou_scores(confusion_matrix(pred, target, num_classes=6))
    # class 0: TP 1, FN 1 → 1/2; class 1: TP 2, FP 1 → 2/3; class 2: TP 1, FN 1 → 1/2;
    # class 3: only predicted → 0; classes 4 (predicted on an ignored pixel) and 5: absent → not scored
    assert iou[:4] == pytest.approx([1 / 2, 2 / 3, 1 / 2, 0.0])
    assert np.isnan(iou[4]) and np.isnan(iou[5])
    assert miou == pytest.approx((1 / 2 + 2 / 3 + 1 / 2 + 0) / 4)
    assert accuracy == pytest.approx(4 / 6)
    perfect, perfect_accuracy, _ = iou_scores(confusion_matrix(target, target, num_classes=6))
    assert perfect == 1.0 and perfect_accuracy == 1.0
    with pytest.raises(ValueError):
        confusion_matrix(pred[:, :3], target, num_classes=6)


SMALL = {"hidden_sizes": (16, 32, 80, 128), "depths": (1, 1, 1, 1), "decoder_hidden_size": 128}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("segworld")
    return generate_geoworld(GeoWorldConfig(num_images=200, image_size=96, seed=5), str(root / "gw"), progress=False)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("segmenter") / "ckpt"
    # one torch thread: on a shared machine, multi-threaded torch collapses under oversubscription
    config = SegmenterTrainConfig(**SMALL, epochs=8, batch_size=16, lr=3e-3, num_threads=1, progress=False)
    return train_geoworld_segmenter(world, str(folder), config), folder


@pytest.mark.slow  # ~30 s on 2 idle cores: trains a small SegFormer
def test_trained_segmenter_saves_reloads_and_beats_random_init(world, trained):
    result, folder = trained
    assert result.train_images == 160 and result.val_images == 20 and result.skipped_images == 0

    # A complete transformers checkpoint: the pipeline's loader and AutoModel both take the folder.
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    model, is_random = load_segmenter(str(folder))
    assert not is_random and model.config.num_labels == NUM_ADE20K_CLASSES and model.config.id2label[2] == "sky"
    assert type(AutoModelForSemanticSegmentation.from_pretrained(folder)).__name__ == "SegformerForSemanticSegmentation"
    assert AutoImageProcessor.from_pretrained(folder).size == {"height": 64, "width": 64}
    saved = json.loads((folder / METRICS_FILE).read_text())
    assert saved["val"]["miou"] == pytest.approx(result.val.miou)

    val = load_split(world, "val", ImageSpec(size=64), grid=8)
    reloaded = evaluate_segmenter(model, val, grid=8)
    assert reloaded.miou == pytest.approx(result.val.miou) and reloaded.grid_accuracy == pytest.approx(
        result.val.grid_accuracy)
    random_init = evaluate_segmenter(random_segformer(), val, grid=8)
    assert result.val.miou > random_init.miou + 0.1
    assert result.val.miou > result.majority_baseline.miou
    assert result.val.pixel_accuracy > result.majority_baseline.pixel_accuracy

    # Through the pipeline's own Segmenter (its own normalisation): label maps on the patch grid.
    maps = Segmenter(str(folder), 8, device="cpu").label_maps(val.images)
    assert maps.shape == (len(val), 8, 8) and maps.dtype == np.uint8 and maps.max() < NUM_ADE20K_CLASSES
    random_maps = Segmenter("random", 8, device="cpu").label_maps(val.images)
    assert (maps == val.grid_labels).mean() == pytest.approx(result.val.grid_accuracy)
    assert (maps == val.grid_labels).mean() > (random_maps == val.grid_labels).mean() + 0.2


@pytest.mark.slow
def test_cli_trains_a_segmenter(world, tmp_path, capsys):
    from geosurge.cli import main

    out = tmp_path / "cli_ckpt"
    assert main(["train-segmenter", world, str(out), "--epochs", "1", "--max-train-images", "64", "--quiet"]) == 0
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["train_images"] == 64 and metrics["epochs"] == 1 and (out / "config.json").exists()
    assert f"ingest.segmenter={out}" in capsys.readouterr().out


def test_decoder_grid_labels_are_the_majority_of_each_4x4_block():
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, :4, :4] = 7  # a whole block
    labels[0, :2, 4:] = 9  # 8 of the top-right block's 16 pixels: a tie with 0 goes to the lower id
    labels[1, 4:, 4:7] = 3  # 12 of 16: the majority
    grid = decoder_grid_labels(labels)
    assert grid.shape == (2, 2, 2)
    np.testing.assert_array_equal(grid[0], [[7, 0], [0, 0]])
    np.testing.assert_array_equal(grid[1], [[0, 0], [0, 3]])


def test_an_unknown_loss_resolution_or_a_size_the_decoder_grid_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="loss_resolution"):
        SegmenterTrainConfig(loss_resolution="full")
    with pytest.raises(ValueError, match="divisible by 4"):
        SegmenterTrainConfig(image_size=66)
    assert SegmenterTrainConfig(image_size=66, loss_resolution="pixels").image_size == 66

"""Train a small SegFormer offline on GeoWorld's ground-truth label maps: a segmenter with meaning, no hub.

No scene-segmentation weights reach our machines, so until now the ingest stage ran a random-init SegFormer.
GeoWorld saves an exact ADE20K label map beside every image (`label_uri`), which is enough to train a small
SegFormer (by default a MiT-b0 at half its widths, one block per stage) on the CPU in a few minutes. The result is saved as a complete transformers
checkpoint (`save_pretrained` of the model and a `SegformerImageProcessor`), so
`geosurge.segmentation.segmenter.load_segmenter(folder)` and `ingest.segmenter=<folder>` load it exactly as they would
load a hub checkpoint.

Images are decoded exactly as the ingest stage decodes them (`decode_image` at `image_size`), label maps with
the same fit (`decode_label_map`), and normalised with the processor's ImageNet statistics, which are the ones
`Segmenter` applies, so what the model learns is what the pipeline feeds it. The loss is taken at the decoder's
own grid (a quarter of the image side) against majority-pooled labels (`loss_resolution="decoder"`); transformers'
own loss on logits upsampled to every pixel (`"pixels"`) costs 3.3× the step at 64 px for the same use.

Evaluation on the validation split (`split == "val"`), written to `<folder>/geosurge_metrics.json`:
- `miou`, `pixel_accuracy`: per pixel at `image_size` (logits upsampled bilinearly, then argmax). mIoU is the
  mean IoU over the classes present in the ground truth or the prediction;
- `grid_accuracy`, `grid_miou`: the label map the pipeline keeps, pooled to the `label_grid` patch grid (mean
  logit per patch, as `Segmenter` does) against the ground truth pooled as `ingest.segmenter=ground_truth`
  pools it (majority class per patch);
- the same figures for a majority-class baseline (every pixel = the most frequent training class).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.fs as pafs
import torch
import torch.nn.functional as F

from geosurge import storage
from geosurge.config import SEGFORMER_OUTPUT_STRIDE, SegmenterTrainConfig
from geosurge.data.images import (
    ImageRejected,
    ImageSpec,
    decode_image,
    decode_label_map,
    majority_pool,
)
from geosurge.data.manifest import read_manifest
from geosurge.segmentation.ade20k import ADE20K_CLASSES, NUM_ADE20K_CLASSES, id2label
from geosurge.segmentation.segmenter import pool_logits_to_grid

METRICS_FILE = "geosurge_metrics.json"
IGNORE_INDEX = 255  # SegFormer's `semantic_loss_ignore_index`; ids >= num_labels are not scored either




@dataclass
class SegmentationScores:
    """Scores of one segmenter on one split; see the module docstring for the definitions."""

    miou: float
    pixel_accuracy: float
    grid_accuracy: float
    grid_miou: float
    classes_scored: int  # classes present in ground truth or prediction (the mIoU's denominator)
    per_class_iou: dict[str, float] = field(default_factory=dict)


@dataclass
class SegmenterTrainResult:
    output_dir: str
    train_images: int
    val_images: int
    skipped_images: int  # rows whose image or label map could not be read/decoded
    parameters: int
    epochs: int
    final_train_loss: float
    train_seconds: float
    seconds: float  # everything: reading data, training, evaluating, saving
    val: SegmentationScores
    majority_class: str  # the most frequent class in the training labels
    majority_baseline: SegmentationScores
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        v, b = self.val, self.majority_baseline
        return (
            f"val mIoU {v.miou:.3f}, pixel accuracy {v.pixel_accuracy:.3f}, grid accuracy "
            f"{v.grid_accuracy:.3f} ({self.val_images} images; majority class '{self.majority_class}': mIoU "
            f"{b.miou:.3f}, pixel accuracy {b.pixel_accuracy:.3f}, grid accuracy {b.grid_accuracy:.3f}); "
            f"trained on {self.train_images} images in {self.train_seconds:.0f} s → {self.output_dir}"
        )


# ----------------------------------------------------------------------------------------------------------
# Metrics


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] int64 counts, rows = ground truth, columns = prediction. Pixels whose
    ground truth is outside [0, num_classes) (e.g. the ignore id 255) are not counted."""
    pred = np.asarray(pred).astype(np.int64).ravel()
    target = np.asarray(target).astype(np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target differ in size: {pred.shape} vs {target.shape}")
    keep = (target >= 0) & (target < num_classes)
    pred, target = pred[keep], target[keep]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted ids outside [0, {num_classes})")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_scores(confusion: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(mIoU, pixel accuracy, per-class IoU with NaN for absent classes) from a confusion matrix.

    A class counts towards the mean when it occurs in the ground truth or in the prediction
    (TP + FP + FN > 0), the standard definition; a class that is in neither is left out."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = confusion.sum()
    accuracy = float(tp.sum() / total) if total else float("nan")
    miou = float(np.nanmean(iou)) if np.any(union > 0) else float("nan")
    return miou, accuracy, iou


def _scores(pixel_confusion: np.ndarray, grid_confusion: np.ndarray) -> SegmentationScores:
    miou, accuracy, iou = iou_scores(pixel_confusion)
    grid_miou, grid_accuracy, _ = iou_scores(grid_confusion)
    names = ADE20K_CLASSES if len(iou) == NUM_ADE20K_CLASSES else [str(i) for i in range(len(iou))]
    return SegmentationScores(
        miou=miou, pixel_accuracy=accuracy, grid_accuracy=grid_accuracy, grid_miou=grid_miou,
        classes_scored=int(np.sum(~np.isnan(iou))),
        per_class_iou={names[i]: round(float(iou[i]), 4) for i in np.flatnonzero(~np.isnan(iou))},
    )


# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass
class LabelledImages:
    """Decoded images and their label maps, all at one size, in memory (a few thousand 64 px images ≈ 50 MB)."""

    images: np.ndarray  # uint8 [N, S, S, 3], exactly as the ingest stage decodes them
    labels: np.ndarray  # uint8 [N, S, S] ADE20K ids, the same fit as the image
    grid_labels: np.ndarray  # uint8 [N, G, G], majority class per patch (as ingest.segmenter=ground_truth)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.images)


def load_labelled_images(
    uris: list[str], label_uris: list[str], spec: ImageSpec, grid: int,
    s3: storage.S3Config | None = None, threads: int = 16,
) -> LabelledImages:
    """Read, decode and fit images and their ground-truth label maps; unreadable pairs are skipped (counted)."""

    def one(pair: tuple[str, str]) -> tuple[np.ndarray, np.ndarray] | None:
        uri, label_uri = pair
        try:
            image = decode_image(storage.read_bytes(uri, s3), spec)
            # grid == size: one pixel per patch, i.e. the label map at full size with decode_image's fit
            labels = decode_label_map(storage.read_bytes(label_uri, s3), spec, spec.size)
        except (ImageRejected, OSError):
            return None
        return image, labels

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pairs = [p for p in pool.map(one, zip(uris, label_uris)) if p is not None]
    s = spec.size
    images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, s, s, 3), np.uint8)
    labels = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, s, s), np.uint8)
    grid_labels = (np.stack([majority_pool(lab, grid) for lab in labels]) if pairs
                   else np.zeros((0, grid, grid), np.uint8))
    return LabelledImages(images, labels, grid_labels, skipped=len(uris) - len(pairs))


def load_split(
    manifest_uri: str, split: str, spec: ImageSpec, grid: int, s3: storage.S3Config | None = None,
    limit: int | None = None, threads: int = 16,
) -> LabelledImages:
    """The rows of one split of a manifest with ground-truth label maps (`label_uri`, as GeoWorld writes)."""
    manifest, _, _ = read_manifest(manifest_uri, s3=s3)
    if "label_uri" not in manifest.column_names:
        raise ValueError(f"{manifest_uri} has no label_uri column: training a segmenter needs ground-truth label maps")
    rows = manifest.filter(pc.fill_null(pc.equal(manifest.column("split"), split), False))
    if limit is not None:
        rows = rows.slice(0, limit)
    return load_labelled_images(rows.column("uri").to_pylist(), rows.column("label_uri").to_pylist(), spec,
                                grid, s3, threads)


def image_processor(image_size: int) -> Any:
    """The processor saved beside the model: resize to `image_size`, ImageNet normalisation (what `Segmenter`
    applies), label ids as they are (no `reduce_labels`: our ids are already 0-based ADE20K)."""
    from transformers import SegformerImageProcessor

    return SegformerImageProcessor(size={"height": image_size, "width": image_size}, do_reduce_labels=False)


class _Normalise:
    def __init__(self, processor: Any):
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] → float [B, 3, H, W]."""
        x = images.permute(0, 3, 1, 2).float().div_(255)
        return (x - self.mean) / self.std


# ----------------------------------------------------------------------------------------------------------
# Model, evaluation, training


def build_segformer(config: SegmenterTrainConfig) -> torch.nn.Module:
    """A SegFormer over the 150 ADE20K classes with the configured encoder size, random weights."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    labels = id2label()
    seg_config = SegformerConfig(
        num_labels=NUM_ADE20K_CLASSES,
        id2label=labels,
        label2id={name: i for i, name in labels.items()},
        hidden_sizes=list(config.hidden_sizes),
        depths=list(config.depths),
        num_attention_heads=list(config.num_attention_heads),
        decoder_hidden_size=config.decoder_hidden_size,
        semantic_loss_ignore_index=IGNORE_INDEX,
    )
    torch.manual_seed(config.seed)
    return SegformerForSemanticSegmentation(seg_config)


@torch.inference_mode()
def evaluate_segmenter(
    model: torch.nn.Module, data: LabelledImages, grid: int, batch_size: int = 64, processor: Any = None,
) -> SegmentationScores:
    """Score a transformers segmentation model (logits [B, C, h, w]) on `data`; see the module docstring."""
    normalise = _Normalise(processor or image_processor(data.images.shape[1]))
    was_training = model.training
    model.eval()
    num_classes = model.config.num_labels
    pixel_conf = np.zeros((num_classes, num_classes), np.int64)
    grid_conf = np.zeros((num_classes, num_classes), np.int64)
    size = data.labels.shape[1:]
    for i in range(0, len(data), batch_size):
        logits = model(pixel_values=normalise(torch.from_numpy(data.images[i:i + batch_size]))).logits
        full = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(dim=1)
        pixel_conf += confusion_matrix(full.numpy(), data.labels[i:i + batch_size], num_classes)
        grid_conf += confusion_matrix(pool_logits_to_grid(logits, grid), data.grid_labels[i:i + batch_size],
                                      num_classes)
    model.train(was_training)
    return _scores(pixel_conf, grid_conf)


def majority_class_scores(train: LabelledImages, val: LabelledImages,
                          num_classes: int = NUM_ADE20K_CLASSES) -> tuple[int, SegmentationScores]:
    """The baseline that predicts the most frequent training class everywhere: (class id, its val scores)."""
    counts = np.bincount(train.labels.ravel(), minlength=num_classes)[:num_classes]
    majority = int(counts.argmax())
    pixel = confusion_matrix(np.full(val.labels.shape, majority), val.labels, num_classes)
    grid = confusion_matrix(np.full(val.grid_labels.shape, majority), val.grid_labels, num_classes)
    return majority, _scores(pixel, grid)


def decoder_grid_labels(labels: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S] → [N, S/4, S/4]: the majority class of each 4×4 block, at the grid SegFormer's decoder
    predicts (its first stage embeds 4×4-pixel patches)."""
    side = labels.shape[1] // SEGFORMER_OUTPUT_STRIDE
    return np.stack([majority_pool(lab, side) for lab in labels]) if len(labels) else labels[:, :side, :side]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_geoworld_segmenter(
    manifest_uri: str, output_dir: str, config: SegmenterTrainConfig | None = None,
    s3: storage.S3Config | None = None,
) -> SegmenterTrainResult:
    """Train a SegFormer on the manifest's train split against its ground-truth label maps, evaluate it on the
    val split, and save a transformers checkpoint (+ image processor + `geosurge_metrics.json`) in
    `output_dir`, a local folder or an s3:// prefix (what `load_segmenter` and `ingest.segmenter=` take; on s3://
    every node's segmentation actors copy it to their own cache)."""
    config = config or SegmenterTrainConfig()
    start = time.perf_counter()

    def say(message: str) -> None:
        if config.progress:
            print(f"segmenter: {message}", flush=True)

    spec = ImageSpec(size=config.image_size)
    train = load_split(manifest_uri, "train", spec, config.label_grid, s3, config.max_train_images,
                       config.fetch_threads)
    val = load_split(manifest_uri, "val", spec, config.label_grid, s3, config.max_val_images, config.fetch_threads)
    if not len(train) or not len(val):
        raise ValueError(f"{manifest_uri}: need train and val rows with readable images and label maps "
                         f"(got {len(train)} train, {len(val)} val)")
    say(f"{len(train)} train / {len(val)} val images at {config.image_size} px read in "
        f"{time.perf_counter() - start:.1f} s ({train.skipped + val.skipped} skipped)")

    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        model = build_segformer(config)
        processor = image_processor(config.image_size)
        normalise = _Normalise(processor)
        parameters = sum(p.numel() for p in model.parameters())
        say(f"SegFormer {list(config.hidden_sizes)} depths {list(config.depths)}: {parameters / 1e6:.2f} M parameters")

        images = torch.from_numpy(train.images)
        labels = torch.from_numpy(decoder_grid_labels(train.labels) if config.loss_resolution == "decoder"
                                  else train.labels).long()
        labels[labels >= NUM_ADE20K_CLASSES] = IGNORE_INDEX
        generator = torch.Generator().manual_seed(config.seed)
        steps_per_epoch = math.ceil(len(train) / config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        warmup = max(1, int(config.warmup_fraction * total_steps))
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total_steps, warmup))

        model.train()
        train_start = time.perf_counter()
        step, seen, running, final_loss = 0, 0, [], float("nan")
        for epoch in range(config.epochs):
            order = torch.randperm(len(train), generator=generator)
            epoch_losses = []
            for b in range(steps_per_epoch):
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                x, y = normalise(images[idx]), labels[idx]
                if config.hflip:
                    flip = torch.rand(len(idx), generator=generator) < 0.5
                    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
                if config.loss_resolution == "decoder":
                    loss = F.cross_entropy(model(pixel_values=x).logits, y, ignore_index=IGNORE_INDEX)
                else:
                    loss = model(pixel_values=x, labels=y).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                seen += len(idx)
                running.append(loss.item())
                epoch_losses.append(running[-1])
                if step % config.log_every == 0:
                    elapsed = time.perf_counter() - train_start
                    say(f"epoch {epoch + 1}/{config.epochs} step {step}/{total_steps} loss "
                        f"{np.mean(running):.3f} lr {scheduler.get_last_lr()[0]:.2e} "
                        f"{seen / elapsed:.0f} images/s, {elapsed:.0f} s")
                    running = []
            final_loss = float(np.mean(epoch_losses))
            scores = evaluate_segmenter(model, val, config.label_grid, config.eval_batch_size, processor)
            say(f"epoch {epoch + 1}/{config.epochs} done: train loss {final_loss:.3f}, val mIoU {scores.miou:.3f}, "
                f"pixel accuracy {scores.pixel_accuracy:.3f}, grid accuracy {scores.grid_accuracy:.3f}")
        train_seconds = time.perf_counter() - train_start

        val_scores = evaluate_segmenter(model, val, config.label_grid, config.eval_batch_size, processor)
        majority, baseline = majority_class_scores(train, val)
        # transformers saves to a local folder only: an s3:// output is written here first, then uploaded
        local_dir = tempfile.mkdtemp(prefix="segmenter-") if storage.is_s3(output_dir) else output_dir
        os.makedirs(local_dir, exist_ok=True)
        model.eval().save_pretrained(local_dir)
        processor.save_pretrained(local_dir)
    finally:
        torch.set_num_threads(previous_threads)

    result = SegmenterTrainResult(
        output_dir=output_dir if storage.is_s3(output_dir) else os.path.abspath(output_dir),
        train_images=len(train),
        val_images=len(val),
        skipped_images=train.skipped + val.skipped,
        parameters=parameters,
        epochs=config.epochs,
        final_train_loss=final_loss,
        train_seconds=train_seconds,
        seconds=time.perf_counter() - start,
        val=val_scores,
        majority_class=ADE20K_CLASSES[majority],
        majority_baseline=baseline,
        config={**asdict(config), "manifest_uri": manifest_uri},
    )
    with open(os.path.join(local_dir, METRICS_FILE), "w") as f:
        json.dump(result.to_dict(), f, indent=2)
    if local_dir != output_dir:
        fs, path = storage.resolve(output_dir.rstrip("/"), s3)
        try:
            pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
    say(result.summary())
    return result

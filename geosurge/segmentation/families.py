"""Segmenter families: how each kind of `transformers` checkpoint is loaded and turned into per-pixel class scores.

- `SemanticFamily`: `AutoModelForSemanticSegmentation` (SegFormer, UperNet, BEiT, DPT…); scores are `.logits`.
- `Mask2FormerFamily` (`model_type` "mask2former") and `MaskFormerFamily` ("maskformer"): universal segmentation.
  The model predicts N queries, each a class distribution (C classes + "no object") and a mask; semantic scores
  are what transformers' `post_process_semantic_segmentation` computes before its argmax:
  `einsum("bqc,bqhw->bchw", softmax(class_logits)[..., :-1], sigmoid(mask_logits))` (`queries_to_class_scores`).
- `OneFormerFamily` ("oneformer"): the same scores, but its forward also takes `task_inputs`, the tokenized text
  "the task is semantic" (see `semantic_task_inputs`).

Each family also builds a tiny randomly initialised model with ADE20K's 150 labels (`random`), for tests and
laptops: no weights are downloaded (transformers 5 builds backbones from their config, always randomly).
"""

from __future__ import annotations

import logging
import os

import torch

from geosurge.segmentation.ade20k import NUM_ADE20K_CLASSES, id2label

log = logging.getLogger(__name__)

# CLIP BPE ids of "the task is semantic" (<|startoftext|> the task is seman·tic <|endoftext|>): what
# OneFormerProcessor makes with the CLIP tokenizer the OneFormer checkpoints ship, checked against it. Used when a
# checkpoint folder has no tokenizer (e.g. one saved with `model.save_pretrained` alone, or a random model).
SEMANTIC_TASK_TOKENS = (49406, 518, 10549, 533, 29119, 1550, 49407)


def _ade20k_labels() -> dict:
    labels = id2label()
    return {"num_labels": NUM_ADE20K_CLASSES, "id2label": labels, "label2id": {v: k for k, v in labels.items()}}


def _tiny_swin():
    """A 4-stage Swin with 16-d embeddings and one block per stage (the real checkpoints use Swin-L)."""
    from transformers import SwinConfig

    return SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7, drop_path_rate=0.0,
                      out_features=["stage1", "stage2", "stage3", "stage4"])


def queries_to_class_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Query predictions → per-pixel class scores [B, C, h, w]: each query's class probabilities (less the
    trailing "no object" column) weighted by its mask probability, summed over queries. In fp32: under bf16
    autocast the models may hand back bf16 logits, and the sum over queries is where precision goes."""
    classes = class_logits.float().softmax(dim=-1)[..., :-1]
    masks = mask_logits.float().sigmoid()
    return torch.einsum("bqc,bqhw->bchw", classes, masks)


class SemanticFamily:
    """Per-pixel-logit models: anything `AutoModelForSemanticSegmentation` loads."""

    model_types: tuple[str, ...] = ()  # the fallback: every model_type no other family claims

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @classmethod
    def from_pretrained(cls, spec: str) -> SemanticFamily:
        from transformers import AutoModelForSemanticSegmentation

        return cls(AutoModelForSemanticSegmentation.from_pretrained(spec))

    @classmethod
    def random(cls, seed: int = 0) -> SemanticFamily:
        return cls(random_segformer(seed))

    def class_scores(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class Mask2FormerFamily:
    model_types = ("mask2former",)

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @classmethod
    def from_pretrained(cls, spec: str) -> Mask2FormerFamily:
        from transformers import Mask2FormerForUniversalSegmentation

        return cls(Mask2FormerForUniversalSegmentation.from_pretrained(spec))

    @classmethod
    def random(cls, seed: int = 0) -> Mask2FormerFamily:
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

        torch.manual_seed(seed)
        config = Mask2FormerConfig(
            backbone_config=_tiny_swin(), num_queries=16, feature_size=32, mask_feature_size=32, hidden_dim=32,
            encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
            dim_feedforward=64, **_ade20k_labels())
        return cls(Mask2FormerForUniversalSegmentation(config))

    def class_scores(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        return queries_to_class_scores(out.class_queries_logits, out.masks_queries_logits)


class MaskFormerFamily(Mask2FormerFamily):
    model_types = ("maskformer",)

    @classmethod
    def from_pretrained(cls, spec: str) -> MaskFormerFamily:
        from transformers import MaskFormerForInstanceSegmentation

        return cls(MaskFormerForInstanceSegmentation.from_pretrained(spec))

    @classmethod
    def random(cls, seed: int = 0) -> MaskFormerFamily:
        from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation

        torch.manual_seed(seed)
        decoder = {"model_type": "detr", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
                   "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
                   "decoder_ffn_dim": 64, "num_queries": 16}
        config = MaskFormerConfig(backbone_config=_tiny_swin(), decoder_config=decoder, num_queries=16,
                                  fpn_feature_size=32, mask_feature_size=32, **_ade20k_labels())
        return cls(MaskFormerForInstanceSegmentation(config))


class OneFormerFamily(Mask2FormerFamily):
    model_types = ("oneformer",)

    def __init__(self, model: torch.nn.Module, task_inputs: torch.Tensor):
        super().__init__(model)
        self.task_inputs = task_inputs  # [1, task_seq_len], float as the model takes it

    @classmethod
    def from_pretrained(cls, spec: str) -> OneFormerFamily:
        from transformers import OneFormerForUniversalSegmentation

        # is_training=False: inference needs no text queries (training would require `text_inputs`)
        model = OneFormerForUniversalSegmentation.from_pretrained(spec, is_training=False)
        return cls(model, semantic_task_inputs(model.config.task_seq_len, spec))

    @classmethod
    def random(cls, seed: int = 0) -> OneFormerFamily:
        from transformers import OneFormerConfig, OneFormerForUniversalSegmentation

        torch.manual_seed(seed)
        config = OneFormerConfig(
            backbone_config=_tiny_swin(), num_queries=16, conv_dim=32, mask_dim=32, hidden_dim=32,
            encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
            dim_feedforward=64, query_dec_layers=1, text_encoder_width=32, text_encoder_num_layers=1,
            text_encoder_n_ctx=2, dropout=0.0, is_training=False, **_ade20k_labels())
        model = OneFormerForUniversalSegmentation(config)
        return cls(model, semantic_task_inputs(config.task_seq_len))

    def class_scores(self, pixel_values: torch.Tensor) -> torch.Tensor:
        task = self.task_inputs.to(pixel_values.device).expand(pixel_values.shape[0], -1)
        out = self.model(pixel_values=pixel_values, task_inputs=task)
        return queries_to_class_scores(out.class_queries_logits, out.masks_queries_logits)


FAMILIES = (OneFormerFamily, Mask2FormerFamily, MaskFormerFamily)


def family_for(model_type: str) -> type:
    """The family class for a checkpoint's `config.model_type`; SemanticFamily for any other."""
    return next((f for f in FAMILIES if model_type in f.model_types), SemanticFamily)


def random_segformer(seed: int = 0) -> torch.nn.Module:
    """A small SegFormer (MiT-b0-like, fewer channels) over the 150 ADE20K classes, random weights."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(hidden_sizes=[16, 32, 80, 128], decoder_hidden_size=128, depths=[1, 1, 1, 1],
                             **_ade20k_labels())
    return SegformerForSemanticSegmentation(config)


# ------------------------------------------------------------------------------------ inputs from the processor


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, name)) for name in ("tokenizer.json", "vocab.json"))


def semantic_task_inputs(seq_len: int, spec: str | None = None) -> torch.Tensor:
    """OneFormer's `task_inputs` for semantic segmentation, [1, seq_len] float: token ids of "the task is
    semantic", zero past the text, exactly as OneFormerProcessor makes them. The checkpoint's own tokenizer when
    it has one (a hub id, or a folder saved with its processor); else the CLIP ids above."""
    ids = None
    if spec is not None and (not os.path.isdir(spec) or _has_tokenizer(spec)):
        try:
            from transformers import AutoTokenizer

            tokens = AutoTokenizer.from_pretrained(spec)(
                ["the task is semantic"], padding="max_length", max_length=seq_len, truncation=True)
            ids = [i * m for i, m in zip(tokens["input_ids"][0], tokens["attention_mask"][0])]
        except (OSError, ValueError) as error:  # a hub repo without a tokenizer, or none reachable
            log.warning("%s: no tokenizer (%s); using the built-in CLIP ids of 'the task is semantic'", spec, error)
    if ids is None:
        ids = list(SEMANTIC_TASK_TOKENS[:seq_len]) + [0] * max(0, seq_len - len(SEMANTIC_TASK_TOKENS))
    return torch.tensor(ids, dtype=torch.float32).unsqueeze(0)


def pixel_statistics(spec: str | None) -> tuple[float, list[float], list[float]] | None:
    """(divisor, mean, std) of the checkpoint's image processor: normalised = (pixel / divisor - mean) / std for
    uint8 pixels, the processor's own rescale → normalise order (so stats given in 0-255 scale with
    do_rescale=False work too). Read from its saved config without building the processor (OneFormer's would
    fetch class metadata from the hub). None when the checkpoint has no processor config."""
    if spec is None:
        return None
    from transformers import ImageProcessingMixin

    try:
        config, _ = ImageProcessingMixin.get_image_processor_dict(spec)
    except (OSError, ValueError):
        return None
    mean, std = config.get("image_mean"), config.get("image_std")
    if config.get("do_normalize", True) is False:
        mean, std = [0.0] * 3, [1.0] * 3
    if mean is None or std is None:
        return None
    divisor = 1 / config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0
    as_list = (lambda v: [float(v)] * 3 if isinstance(v, (int, float)) else [float(x) for x in v])
    return divisor, as_list(mean), as_list(std)

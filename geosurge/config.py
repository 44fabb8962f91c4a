"""Typed run configuration: one dataclass per component, one `PipelineConfig` per run, logged whole.

A run's config comes from (in order) the embedded defaults, an optional YAML file, and `--set a.b=value`
overrides on the command line. Values in overrides are parsed as YAML, so `--set train.epochs=3`,
`--set geocells.tau_max=[200,50]` and `--set tracking.tracking_uri=http://host:5000` all do what they say.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geosurge.config_parsing import apply_override, deep_update, from_dict
from geosurge.redaction import redact_uri

MAX_H3_RESOLUTION = 15  # H3's finest resolution


@dataclass
class S3Config:
    """Where S3 lives. Empty fields fall back to the standard AWS chain (env vars, ~/.aws, instance role)."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:8333 for SeaweedFS/MinIO; None for AWS
    region: str | None = None
    access_key_id: str | None = None  # prefer the AWS chain; kept here for local test servers
    secret_access_key: str | None = None

    def __repr__(self) -> str:  # keep secrets out of logs and MLflow params
        return f"S3Config(endpoint_url={self.endpoint_url!r}, region={self.region!r}, credentials=<hidden>)"

    def without_secrets(self) -> S3Config:
        return S3Config(endpoint_url=self.endpoint_url, region=self.region)

    # pickled (any Ray task argument; copy.copy/deepcopy too) without keys: the receiver uses its own AWS chain
    def __getstate__(self) -> dict[str, Any]:
        return dataclasses.asdict(self.without_secrets())


@dataclass
class GeoWorldConfig:
    """What to generate (geosurge.data.geoworld). The same config always yields byte-identical output."""

    num_images: int = 2000
    image_size: int = 128
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test
    landmark_share: float = 0.15
    num_landmarks: int = 200
    jpeg_quality: int = 90
    id_prefix: str = "gw"  # image ids are <prefix>_<index>: give a later batch of new imagery its own


@dataclass(frozen=True)
class GeocellConfig:
    """Geocell build parameters (geosurge.geo.geocells): one level per `tau_max` entry (strictly decreasing),
    drop below `tau_min`."""

    tau_max: tuple[int, ...]
    tau_min: int
    max_resolution: int = 12

    def __post_init__(self) -> None:
        tau_max = tuple(int(t) for t in self.tau_max)
        object.__setattr__(self, "tau_max", tau_max)
        if not tau_max:
            raise ValueError("tau_max needs at least one entry (one per level)")
        if min(tau_max) < 1:
            raise ValueError(f"tau_max entries must be positive, got {tau_max}")
        if any(b >= a for a, b in zip(tau_max, tau_max[1:])):
            raise ValueError(f"tau_max must be strictly decreasing (coarsest level first), got {tau_max}")
        if int(self.tau_min) < 0:
            raise ValueError(f"tau_min must be >= 0, got {self.tau_min}")
        if int(self.tau_min) >= tau_max[-1]:
            raise ValueError(f"tau_min ({self.tau_min}) must be smaller than the smallest tau_max ({tau_max[-1]})")
        if not 0 <= int(self.max_resolution) <= MAX_H3_RESOLUTION:
            raise ValueError(f"max_resolution must be in [0, {MAX_H3_RESOLUTION}], got {self.max_resolution}")
        object.__setattr__(self, "tau_min", int(self.tau_min))
        object.__setattr__(self, "max_resolution", int(self.max_resolution))

    def to_dict(self) -> dict[str, Any]:
        return {"tau_max": list(self.tau_max), "tau_min": self.tau_min, "max_resolution": self.max_resolution}


@dataclass
class RayConfig:
    address: str | None = None  # None: join RAY_ADDRESS if set (a Ray job), else start a local Ray
    num_cpus: int | None = None  # only for a Ray started here


@dataclass
class IngestConfig:
    image_size: int = 64  # images are resized (short side) and centre-cropped to this square
    label_grid: int = 8  # label maps are pooled to this grid: the backbone's patch grid or a multiple of it
    # hub id or local transformers checkpoint folder (production: an ADE20K OneFormer/SegFormer);
    # "geoworld" (the pipeline's default): full_pipeline first trains a SegFormer on GeoWorld's label maps (see
    # PipelineConfig.segmenter) and ingests with that folder; "random": a random-init SegFormer (says so in every
    # run); "none": no label maps; "ground_truth": the manifest's own label maps (label_uri), an oracle for
    # benchmarks and ablations
    segmenter: str = "random"
    segment_batch_size: int = 32
    segment_actors: int = 1  # size of the segmentation actor pool
    gpus_per_segment_actor: float = 0.0
    max_image_pixels: int = 40_000_000  # decompression-bomb guard, read from the header (PIL's is ~89 M)
    max_image_bytes: int = 32 << 20  # no image read takes more: size checked first where known, else streamed
    large_decode_pixels: int = 12_000_000  # decodes above this run one at a time per process (memory)
    # manifest rows per chunk: the unit of work, of resume and of output files (one shard file per chunk)
    shard_rows: int = 1000
    # fetching image bytes (local, s3://, http(s)://): I/O bound, so threads inside each fetch task (the task's own
    # thread decodes what they fetched: one CPU per task)
    fetch_concurrency: int = 16
    # retries after the first attempt on throttling (S3 SlowDown/503, HTTP 429), 5xx, connection errors and
    # timeouts, with exponential backoff and full jitter: sleep U(0, min(max, backoff * 2**attempt)) seconds
    fetch_retries: int = 6
    fetch_backoff_s: float = 0.5
    fetch_max_backoff_s: float = 30.0
    fetch_timeout_s: float = 30.0  # connect and per-request timeout
    fetch_deadline_s: float = 120.0  # total for one image, retries included: a trickled body cannot stall it
    chunk_timeout_s: float = 1800.0  # one chunk's fetch + decode; rows still unread then are quarantined
    progress_interval_s: float = 10.0  # a progress line (rows done / total, images/s) at most this often
    # "auto" (from each file's header), "geosurge" (our columns), a public CSV as published: "mp16", "im2gps",
    # "im2gps3k", "yfcc4k", "yfcc26k", "gws15k" (IMG_ID, LAT, LON, S*_Label, ...), or "img2dataset" (url, lat, lon);
    # streamed like ours, never converted first
    manifest_format: str = "auto"
    # public formats: image uri = images_root/IMG_ID; None: the folder holding each manifest file
    images_root: str | None = None
    allowed_uri_prefixes: tuple[str, ...] = ()  # every uri must start with one (else bad_uri); empty: any uri


@dataclass
class ServingConfig:
    """What the served model takes from a caller: bytes; a `uri` only if allowed, under a prefix (uri_access.py)."""
    allow_uri_input: bool = False
    allowed_uri_prefixes: tuple[str, ...] = ()  # e.g. ("s3://photos/incoming/",); empty: no uri is read


SEGFORMER_OUTPUT_STRIDE = 4  # SegFormer predicts one logit map per 4×4 pixels


@dataclass
class SegmenterTrainConfig:
    """The offline segmenter `ingest.segmenter=geoworld` trains on GeoWorld's ground-truth label maps
    (geosurge.train.segmenter). What to train and how. Defaults: a small SegFormer (0.6 M parameters) at the ingest
    image size."""

    image_size: int = IngestConfig.image_size  # train and evaluate at the size the ingest stage segments
    label_grid: int = IngestConfig.label_grid  # the patch grid the pipeline pools label maps to
    # A SegFormer at half MiT-b0's widths with one block per stage (0.6 M parameters), 8 epochs with the loss at the
    # decoder's grid: on the demo's GeoWorld its 8×8 label maps are 86.6% right in 43 s of training (the same model
    # with transformers' per-pixel loss: 85.5% after 4 epochs in 68 s; MiT-b0, 3.7 M parameters: hidden_sizes
    # (32, 64, 160, 256), depths (2, 2, 2, 2), decoder_hidden_size 256: 88.0% after 6 epochs with the per-pixel loss).
    hidden_sizes: tuple[int, ...] = (16, 32, 80, 128)
    depths: tuple[int, ...] = (1, 1, 1, 1)
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)
    decoder_hidden_size: int = 128
    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05  # linear warm-up over this share of the steps, then cosine decay to 0
    hflip: bool = True  # random horizontal flips (GeoWorld scenes have no handedness)
    # "decoder": cross-entropy at the decoder's own grid (1/4 of the image side) against majority-pooled labels,
    # the grid the pipeline pools to anyway; "pixels": transformers' loss on logits upsampled to every pixel, which
    # at 64 px takes 3.3× the step time (150 class maps at full size)
    loss_resolution: str = "decoder"
    seed: int = 0
    max_train_images: int | None = None  # None: the whole train split
    max_val_images: int | None = None  # None: the whole val split
    eval_batch_size: int = 64
    num_threads: int | None = None  # torch intra-op threads while training; None: torch's default
    fetch_threads: int = 16  # parallel object reads (S3 latency), decoding follows in the same threads
    log_every: int = 25  # steps between progress lines
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss_resolution not in ("decoder", "pixels"):
            raise ValueError(f"segmenter.loss_resolution must be 'decoder' or 'pixels', got {self.loss_resolution!r}")
        if self.loss_resolution == "decoder" and self.image_size % SEGFORMER_OUTPUT_STRIDE:
            raise ValueError(f"segmenter.loss_resolution=decoder needs an image size divisible by "
                             f"{SEGFORMER_OUTPUT_STRIDE} (SegFormer's output grid), got {self.image_size}; "
                             "use loss_resolution=pixels")


@dataclass
class GeoClipConfig:
    """GeoCLIP (design.md §1.2): image head + random-Fourier-feature location encoder, GPS gallery retrieval."""

    embed_dim: int = 512
    rff_sigmas: tuple[float, ...] = (2.0**0, 2.0**4, 2.0**8)
    queue_size: int = 4096  # past GPS coordinates used as extra negatives
    gallery: str = "geoclip"  # "geoclip": the package's 100K GPS gallery; else a Parquet/CSV URI with lat, lon
    pretrained_location_encoder: bool = True  # the released weights that ship inside the geoclip package
    logit_scale_init: float = 2.6592  # log(1/0.07), as CLIP; the released model learned 3.681
    released_image_head: bool | None = None  # CLIP ViT-L/14: released image MLP + logit scale; None: as the line above


@dataclass
class GeoDecoderConfig:
    """GeoDecoder (design.md §1.3): one query per (hierarchy level × scene)."""

    num_scenes: int = 3  # indoor / natural / urban
    encoder_layers: int = 2
    decoder_layers: int = 2
    hierarchy_layers: int = 1
    heads: int = 4
    scene_loss_weight: float = 1.0  # the scene channel's cross-entropy (its logits pick the scene at inference)


@dataclass
class ModelConfig:
    name: str = "geosurge"  # see geosurge.models.list_models()
    backbone: str = "vit_tiny_patch16_224"
    # the laptop default: a 4-block ViT on 16-px patches (a 4×4 grid, so each patch's label histogram holds 2×2 cells
    # of the stored 8×8 label map); an epoch costs about a third of 8-px patches', and it learned GeoWorld better
    # (README, "The demo")
    backbone_kwargs: dict[str, Any] = field(default_factory=lambda: {"img_size": 64, "patch_size": 16, "depth": 4})
    pretrained: bool = False  # True: hub weights (needs internet); efficientnet_lite0 loads the weights its package ships
    # a backbone weights file (local or s3://; safetensors or a torch state dict) staged for clusters without
    # internet; loaded instead of the hub weights (see README, "Train on MP-16")
    pretrained_file: str | None = None
    trainable_blocks: int | None = None  # None: whole backbone trains; K: all but the last K blocks frozen
    embed_dim: int = 128
    fusion: bool = True
    fusion_blocks: int = 3
    fusion_heads: int = 4
    temperature_init: float = 0.07
    cell_init: str = "random"  # "geoclip": cell embeddings from GeoCLIP's location encoder at each cell's coordinate
    semantic_tokens: str = "histogram"  # per-patch class shares of the stored label map, or "majority" class only
    geoclip: GeoClipConfig = field(default_factory=GeoClipConfig)
    geodecoder: GeoDecoderConfig = field(default_factory=GeoDecoderConfig)


@dataclass
class AugmentConfig:
    """Training-split image augmentation (never applied to val/eval). No horizontal flip on purpose: a mirrored
    street swaps the side of the road traffic drives on and mirrors text, both real location cues."""

    enabled: bool = True
    # random shift of image and label map together by whole label-grid cells (edge-replicated), so the label
    # map stays aligned with the backbone's patch grid; 0 disables it
    max_shift_cells: int = 1
    # colour jitter factors drawn from [1 - x, 1 + x] per image. Kept mild, and no hue jitter: palettes
    # (vegetation, soil, building colours) carry climate and region information
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class TrainConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # Ray's placement of the workers: PACK (fewest nodes), SPREAD (across nodes, best effort), STRICT_PACK/_SPREAD
    placement_strategy: str = "PACK"
    zero_stage: int = 2
    zero3_param_persistence_threshold: int = 100_000  # ZeRO-3 keeps smaller parameters whole (DeepSpeed's default)
    bf16: bool = False
    epochs: int = 16
    batch_size: int = 32  # per worker, per micro-step
    gradient_accumulation_steps: int = 1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # lr multiplied by this after every epoch (paper: 0.5 over MP-16 epochs). The demo's 16 short epochs: 0.85 with
    # the warm-up below reached GeoScore 1,617 / 1,919 on GeoWorld seeds 0 / 1, against 1,292 / 1,760 with 0.75 and
    # none (README, "The demo")
    lr_decay: float = 0.85
    warmup_steps: int = 25  # optimizer steps over which the lr rises linearly to its value (0: none)
    seed: int = 0
    val_split: str | None = "val"  # val loss every epoch: early stopping, best checkpoint; None: no validation
    early_stopping_patience: int | None = 4  # stop after this many epochs without val gain (paper: 4); None: never
    early_stopping_min_delta: float = 0.0  # a gain is a val loss below the best by more than this
    checkpoints_to_keep: int = 1  # best checkpoints kept by val loss; the latest is always kept too (for resume)
    # Ray Train checkpoints (s3://… with our S3 settings). None: <data_root>/checkpoints when the data root is on S3
    # (every node sees them: no shared disk), else <output_dir>/ray_results
    storage_path: str | None = None
    max_failures: int = 2  # worker-group restarts from the latest checkpoint after a lost worker
    log_every_n_steps: int = 10  # per-step MLflow metrics every N optimizer steps (rank 0)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # MiB of decoded batches a worker keeps in memory per split: a split whose worker part fits is read from the
    # shards once, then served from memory every epoch (augmented afresh); 0: stream every split every epoch
    batch_cache_mb: int = 512
    # rows a worker mixes while it streams the train split (shards keep the manifest's order, which may follow place
    # or photographer); a split served from memory is reshuffled whole every epoch. 0: no shuffle buffer
    shuffle_buffer_rows: int = 2048
    # each worker gets the same rows on every run: Ray Data keeps the blocks' order into its streaming split (each
    # block goes to the worker with the fewest rows so far), so the same shards and config train the same model.
    # False: blocks go out as their read tasks finish, and on a cluster to a worker on the block's node (faster
    # streaming of large splits, at the price of runs that differ by which rows each worker saw)
    deterministic_split: bool = True
    # a torch state dict (local path or s3://) the model starts from instead of its initialisation: fine-tuning
    # (the retraining job points it at the champion's weights); a resumed run takes its checkpoint instead
    init_weights: str | None = None

    def __post_init__(self) -> None:
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(f"train.placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}, "
                             f"got {self.placement_strategy!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"train.zero_stage must be 0, 1, 2 or 3 (DeepSpeed ZeRO), got {self.zero_stage}")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be ≥ 0 (0: none), got {self.warmup_steps}")
        if self.shuffle_buffer_rows < 0:
            raise ValueError(f"train.shuffle_buffer_rows must be ≥ 0 (0: none), got {self.shuffle_buffer_rows}")
        if self.batch_cache_mb < 0:
            raise ValueError(f"train.batch_cache_mb must be ≥ 0 (0: no cache), got {self.batch_cache_mb}")


@dataclass
class TrackingConfig:
    tracking_uri: str | None = None  # None: sqlite file under the run's output folder
    # Where a new experiment keeps run artifacts. None: <output_dir>/mlartifacts for a local store (sqlite or
    # file), else the tracking server's own default (e.g. its S3 artifact root).
    artifact_location: str | None = None
    experiment: str = "geosurge"
    registered_model: str = "geosurge"
    alias: str = "challenger"


@dataclass
class BenchmarkConfig:
    """One benchmark set of the eval job: a manifest in any reader format, optionally one split of it."""

    name: str = "geoworld_test"
    manifest: str | None = None  # URI (local, file://, s3://); None: the pipeline's GeoWorld manifest
    # auto | geosurge | geoworld (our own columns) | im2gps | im2gps3k | yfcc4k | yfcc26k | gws15k | mp16 | img2dataset
    format: str = "auto"
    images_root: str | None = None  # public CSVs: the folder IMG_ID is relative to; None: the CSV's folder
    split: str | None = None  # keep only rows of this split (GeoWorld: train / val / test); None: every row


@dataclass
class EvalConfig:
    split: str = "test"  # the split full_pipeline evaluates from its shards
    top_k: int = 5
    batch_size: int = 64  # images per inference batch (full_pipeline and the eval job)
    ten_crop: bool = False  # ten-crop test-time augmentation (the paper's evaluation), for models that support it
    # -- the eval job (workflows/evaluate.py, geosurge.eval.job) ------------------------------------
    model_uri: str | None = None  # None: models:/<tracking.registered_model>@<tracking.alias> (the challenger)
    champion_alias: str = "champion"
    # The promotion metric: GeoScore by default, because it counts every image's error on a smooth scale,
    # where acc_2500km saturates and the fine accuracies move in coarse steps on small benchmarks.
    # Any key of geolocation_metrics works (acc_*km and geoscore: higher is better; *_km: lower is better).
    promotion_metric: str = "geoscore"
    min_improvement: float = 0.0  # the challenger must beat the champion by more than this
    decision_benchmark: str | None = None  # the benchmark the decision is made on; None: the first one
    promote: bool = True  # False: evaluate and record the decision, but leave the champion alias alone
    min_evaluated_fraction: float = 0.98  # of the decision benchmark's images both models read; fewer: keep champion
    benchmarks: list[BenchmarkConfig] = field(
        default_factory=lambda: [BenchmarkConfig(name="geoworld_test", format="geoworld", split="test")]
    )
    actors: int = 1  # inference actor pool size (each loads the model once)
    # Benchmarks (all of one evaluation together) of at most this many images, evaluated without GPUs on a one-node
    # Ray, run in the calling process instead of an actor pool, whose start-up costs more than their inference;
    # 0: always the pool
    in_driver_max_images: int = 512
    gpus_per_actor: float = 1.0  # used only when the Ray cluster has GPUs

    def __post_init__(self) -> None:
        # YAML and --set give benchmarks as mappings
        self.benchmarks = [b if isinstance(b, BenchmarkConfig) else from_dict(BenchmarkConfig, b)
                           for b in self.benchmarks]


@dataclass
class RetrainConfig:
    """The scheduled job (workflows/retrain.py): new imagery under `incoming`, fine-tuned from `@champion`."""

    incoming: str | None = None  # where new manifests land; None: <data_root>/incoming
    epochs: int = 2  # fine-tuning epochs on all shards (old + new), from the champion's weights
    lr: float = 5e-4
    lock_ttl_s: float = 6 * 3600  # a lock older than this is taken as left by a crashed run


@dataclass
class DataConfig:
    """The imagery a run trains on. With no manifest, the pipeline generates a GeoWorld (the laptop default)."""

    # one or more manifests: a file, a folder of them, or a list; local, s3:// or http(s)://; our columns, or
    # MP-16 / Im2GPS3k / YFCC4k CSVs as published, or an img2dataset-style table (url, lat/lon); read with
    # `ingest.manifest_format` and `ingest.images_root`
    manifest: str | list[str] | None = None
    # rows with no split of their own (MP-16, img2dataset tables) go to `val` when a hash of their image id
    # falls under this fraction, else `train`: deterministic, the same on every machine and every rerun
    val_fraction: float = 0.01

    @property
    def manifests(self) -> list[str]:
        if self.manifest is None:
            return []
        return [self.manifest] if isinstance(self.manifest, str) else list(self.manifest)


@dataclass
class PipelineConfig:
    run_name: str = "demo"
    output_dir: str = "runs/demo"  # local folder for Ray results, MLflow sqlite, logs
    data_root: str | None = None  # object storage root (local folder or s3://); None: <output_dir>/store
    s3: S3Config = field(default_factory=S3Config)
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    geoworld: GeoWorldConfig = field(default_factory=GeoWorldConfig)
    ingest: IngestConfig = field(default_factory=lambda: IngestConfig(segmenter="geoworld"))
    segmenter: SegmenterTrainConfig = field(default_factory=SegmenterTrainConfig)  # ingest.segmenter=geoworld
    # small-world defaults; the paper's MP-16 schedule is tau_max 25000 → 500 over 7 levels
    geocells: GeocellConfig = field(default_factory=lambda: GeocellConfig(tau_max=(300, 120, 40), tau_min=8))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)  # carried in the registered model

    # -- derived locations -------------------------------------------------------------------------
    @property
    def resolved_data_root(self) -> str:
        return self.data_root or str(Path(self.output_dir, "store").absolute())

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking.tracking_uri or f"sqlite:///{Path(self.output_dir, 'mlflow.db').absolute()}"

    @property
    def resolved_artifact_location(self) -> str | None:
        if self.tracking.artifact_location:
            return self.tracking.artifact_location
        if self.resolved_tracking_uri.startswith(("sqlite:", "file:")):
            # MLflow's own default for these stores is ./mlruns under whatever the current directory is
            return Path(self.output_dir, "mlartifacts").absolute().as_uri()
        return None

    # -- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self, redact_secrets: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if redact_secrets:
            for key in ("access_key_id", "secret_access_key"):
                if d["s3"].get(key):
                    d["s3"][key] = "<hidden>"
            d = _redact_uris(d)  # a presigned manifest URL, a tracking URI with user:pass@
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """A short hash of the whole config (secrets excluded), for naming what this config made."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        return from_dict(cls, d)


def _redact_uris(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_uris(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_uris(v) for v in value)
    return redact_uri(value) if isinstance(value, str) else value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and repeated `--set key.path=value`: how every workflow and command takes its config."""
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML file with any subset of the config; may be repeated (later files override earlier)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value (parsed as YAML), e.g. train.epochs=2; may be repeated")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The run's config from the arguments `add_config_arguments` declared."""
    return load_config(args.config, args.set)


def load_config(paths: str | list[str] | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Embedded defaults, then YAML files in order (a later file overrides an earlier one), then `key.path=value`
    overrides."""
    d = PipelineConfig().to_dict(redact_secrets=False)
    for path in [paths] if isinstance(paths, str) else paths or []:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {path} does not exist") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path}: expected a mapping of config sections, got {type(loaded).__name__}")
        deep_update(d, loaded, PipelineConfig)
    for assignment in overrides or []:
        apply_override(d, assignment)
    return PipelineConfig.from_dict(d)

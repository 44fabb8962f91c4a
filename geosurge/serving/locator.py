"""`GeoLocator`: a loaded model + segmenter that turns images into `Prediction`s, and the bundle folder it loads
from (fp32 weights, the geocell hierarchy, the run config, the segmenter). Used by the registered pyfunc, the eval
job and retraining; it knows nothing of MLflow."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from geosurge import storage
from geosurge.config import PipelineConfig
from geosurge.data.images import ImageRejected, ImageSpec, decode_image
from geosurge.device import device_for
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.layout import GEOCELLS_FILE
from geosurge.models import create_model
from geosurge.segmentation.segmenter import Segmenter
from geosurge.serving.prediction import (
    DEFAULT_TOP_K,
    Belief,
    ImageInput,
    Prediction,
    beliefs_from_arrays,
    predictions_from_arrays,
)

ALL_CANDIDATES = 2**31 - 1  # every model's predict caps k at its candidate count: this k returns them all
_REDACTED = "<hidden>"  # what PipelineConfig.to_dict writes in place of S3 credentials
INFERENCE_STATE_FILE = "inference_state.pt"  # a model's `inference_state()`, when it has one (GeoCLIP: its gallery)
log = logging.getLogger(__name__)


class GeoLocator:
    """A loaded model + segmenter that turns images into `Prediction`s. Used by the pyfunc and by eval."""

    def __init__(self, model: torch.nn.Module, segmenter: Segmenter, config: PipelineConfig, hierarchy: GeocellHierarchy):
        self.device = device_for()  # the GPU when there is one
        self.model = model.to(self.device).eval()
        self.segmenter = segmenter
        self.config = config
        self.hierarchy = hierarchy
        self.spec = ImageSpec(size=config.ingest.image_size, max_pixels=config.ingest.max_image_pixels,
                              large_decode_pixels=config.ingest.large_decode_pixels)
        i = config.ingest  # URI reads: ingest's limits, a few retries, and one total deadline per image
        self._policy = storage.RetryPolicy(retries=min(2, i.fetch_retries), backoff_s=i.fetch_backoff_s,
                                           timeout_s=i.fetch_timeout_s, deadline_s=i.fetch_deadline_s)
        self.finest_h3 = hierarchy.levels[-1]["h3"].to_numpy(np.uint64)  # the models' `cell` indexes these

    @classmethod
    def from_artifacts(cls, root: str | Path) -> GeoLocator:
        root = Path(root)
        config = PipelineConfig.from_dict(yaml.safe_load((root / "config.yaml").read_text()))
        # the logged config has its S3 credentials redacted: a consumer's come from the AWS credential chain
        if config.s3.access_key_id == _REDACTED:
            config.s3.access_key_id = None
        if config.s3.secret_access_key == _REDACTED:
            config.s3.secret_access_key = None
        hierarchy = GeocellHierarchy.load(str(root / GEOCELLS_FILE))
        model = create_model(config.model, hierarchy, pretrained=False)  # its trained weights follow
        model.load_state_dict(torch.load(root / "model.pt", map_location="cpu", weights_only=True))
        segmenter = Segmenter(str(root / "segmenter"), config.ingest.label_grid)
        # a saved random-init segmenter loads as an ordinary folder: keep what write_bundle recorded about it
        segmenter.is_random = json.loads((root / "segmenter" / "geosurge.json").read_text())["random_init"]
        locator = cls(model, segmenter, config, hierarchy)
        if (root / INFERENCE_STATE_FILE).exists():  # after the move to its device: the state is keyed to it
            locator.model.load_inference_state(torch.load(root / INFERENCE_STATE_FILE, map_location="cpu",
                                                          weights_only=True))
        return locator

    @torch.no_grad()
    def predict_arrays(self, images: np.ndarray, k: int = DEFAULT_TOP_K, ten_crop: bool = False) -> dict[str, np.ndarray]:
        """uint8 images [B,H,W,3] (already at the model's size) → top-k arrays; `ten_crop`: averaged over the 10
        test-time views (each model's `predict(..., ten_crop=True)`; the label map is cropped alongside)."""
        label_maps = self.segmenter.label_maps(images)
        out = self.model.predict({"image": torch.from_numpy(images).to(self.device),
                                  "label_map": torch.from_numpy(label_maps).to(self.device)}, k,
                                 ten_crop=ten_crop)
        return {key: value.cpu().numpy() for key, value in out.items()}

    def predict_bytes(self, images: list[bytes], k: int = DEFAULT_TOP_K) -> list[Prediction]:
        """Encoded images → their top-k places. Raises `ImageRejected` (its detail names the image's position)
        for an input that is not a usable image."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return [p for out in self._batch_outputs(images, k) for p in predictions_from_arrays(out, self.finest_h3)]

    def beliefs_bytes(self, images: list[bytes]) -> list[Belief]:
        """Encoded images → the model's probability of every candidate (finest cell, or gallery point), for
        belief maps. Raises `ImageRejected` like `predict_bytes`."""
        return [b for out in self._batch_outputs(images, ALL_CANDIDATES)
                for b in beliefs_from_arrays(out, self.finest_h3)]

    def _batch_outputs(self, images: list[bytes], k: int) -> list[dict[str, np.ndarray]]:
        """Every image decoded first (a bad one fails the call before any inference), then inference in batches
        of `eval.batch_size`: one output dict per batch."""
        arrays = self._decode_all(images)
        batch = max(1, self.config.eval.batch_size)
        return [self.predict_arrays(np.stack(arrays[start:start + batch]), k) for start in range(0, len(arrays), batch)]

    def _decode_all(self, images: list[bytes]) -> list[np.ndarray]:
        arrays = []
        for i, data in enumerate(images):
            try:
                arrays.append(decode_image(self._within_byte_limit(data), self.spec))
            except ImageRejected as e:
                raise ImageRejected(e.reason, f"image {i}: {e.detail}") from None
        return arrays

    def _within_byte_limit(self, data: bytes) -> bytes:
        limit = self.config.ingest.max_image_bytes
        if len(data) > limit:
            raise ImageRejected("too_large", f"{len(data)} bytes exceeds the {limit}-byte limit")
        return data

    def uri_access(self, trusted: bool) -> storage.UriAccess | None:
        """What a URI input may name: anything for the owner (`trusted`: the CLI, the Python API); for a served
        model's caller, nothing unless the model's `serving` config allows it, then only its prefixes, never a local
        path, a redirect or a private address (None: no URI at all)."""
        if trusted:
            return storage.UriAccess()
        serving = self.config.serving
        return storage.UriAccess.untrusted(serving.allowed_uri_prefixes) if serving.allow_uri_input else None

    def read_image(self, uri: str, access: storage.UriAccess | None) -> bytes:
        """The bytes behind a URI (local path, file://, s3:// with this model's S3 settings, http(s)://), within
        `ingest.max_image_bytes` and `ingest.fetch_deadline_s`; `access` says what it may name (None: no URI).
        A refused URI raises ImageRejected("bad_uri") with one message whatever the reason."""
        if access is None:
            log.warning("refused a uri input: this model takes no uri (serving.allow_uri_input is false)")
            raise ImageRejected(storage.BAD_URI, storage.UriRefused.MESSAGE)
        fetcher = storage.Fetcher(self.config.s3, self._policy, pool_size=1, max_bytes=self.config.ingest.max_image_bytes,
                                  access=access)
        try:
            return fetcher.read(uri)[0]
        except storage.FetchFailed as e:
            if e.reason == storage.BAD_URI:
                log.warning("refused a uri input: %s", getattr(e.__cause__, "why", e.detail))
                raise ImageRejected(e.reason, storage.UriRefused.MESSAGE) from None
            if access.trusted or e.reason == storage.TOO_LARGE:
                raise ImageRejected(e.reason, e.detail) from None
            log.warning("a uri input could not be read: %s", e.detail)
            raise ImageRejected(e.reason, "uri could not be read") from None  # no server-side detail to a caller

    def predict_inputs(self, inputs: list[ImageInput], k: int = DEFAULT_TOP_K, trusted: bool = False) -> list[Prediction]:
        """Validated inputs (bytes or URIs) → their top-k places. `trusted`: the caller is the model's owner (see
        `uri_access`); the served pyfunc never is."""
        images = []
        access = self.uri_access(trusted)
        for i, item in enumerate(inputs):
            if item.image is not None:
                images.append(item.image)
                continue
            try:
                images.append(self.read_image(item.uri, access))
            except ImageRejected as e:
                raise ImageRejected(e.reason, f"image {i}: {e.detail}") from None
        return self.predict_bytes(images, k)


def write_bundle(root: Path, state_dict: dict, config: PipelineConfig, hierarchy: GeocellHierarchy, segmenter: Segmenter,
                 model: torch.nn.Module | None = None) -> Path:
    """Everything a consumer needs, in one folder (logged as the pyfunc's artifact). `model`: the model holding
    `state_dict`, when the caller has it; what it derived from its weights for inference (`inference_state`) is
    saved too, so no consumer derives it again."""
    root.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, root / "model.pt")
    if model is not None and hasattr(model, "inference_state"):
        torch.save(model.inference_state(), root / INFERENCE_STATE_FILE)
    (root / "config.yaml").write_text(config.to_yaml())
    hierarchy.save(str(root / GEOCELLS_FILE))
    segmenter.model.save_pretrained(root / "segmenter")
    (root / "segmenter" / "geosurge.json").write_text(
        json.dumps({"spec": config.ingest.segmenter, "random_init": segmenter.is_random})
    )
    return root

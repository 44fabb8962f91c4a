"""`GeoLocator` and its bundle folder (`write_bundle`): what a registered model carries and loads back."""

import pytest
import torch

from geosurge.data.images import decode_image
from geosurge.models import create_model
from geosurge.segmentation.segmenter import Segmenter
from geosurge.serving import GeoLocator, write_bundle
from geosurge.serving.locator import INFERENCE_STATE_FILE
from tests.models.model_helpers import small_hierarchy
from tests.tracking.registry_helpers import photo_bytes, tiny_config


def test_a_geoclip_bundle_carries_its_gallery_embeddings_and_the_locator_predicts_as_the_model(tmp_path):
    """write_bundle saves what the model derived for inference (GeoCLIP: its gallery's embeddings, ~30 s of a 2-core
    CPU for the 100K gallery); the loaded locator predicts as the model did, without encoding the gallery."""
    gallery = tmp_path / "gallery.csv"
    gallery.write_text("lat,lon\n48.8,2.3\n40.7,-74.0\n35.7,139.7\n-33.9,151.2\n")
    config = tiny_config(tmp_path, "sqlite:///unused.db", ["model.name=geoclip", f"model.geoclip.gallery={gallery}",
                                                            "model.geoclip.pretrained_location_encoder=false"])
    hierarchy = small_hierarchy()
    torch.manual_seed(0)
    model = create_model(config.model, hierarchy).eval()
    segmenter = Segmenter("random", config.ingest.label_grid)
    bundle = write_bundle(tmp_path / "bundle", model.state_dict(), config, hierarchy, segmenter, model)
    assert (bundle / INFERENCE_STATE_FILE).exists()
    gallery.unlink()  # the bundle's copy of the gallery is the one used

    locator = GeoLocator.from_artifacts(bundle)
    locator.model.location_encoder.encode_locations = None  # any encoding of the gallery would fail
    photo = photo_bytes(3)
    (prediction,) = locator.predict_bytes([photo], k=2)
    image = decode_image(photo, locator.spec)[None].copy()
    expected = model.predict({"image": torch.from_numpy(image),
                              "label_map": torch.from_numpy(segmenter.label_maps(image))}, 2)
    assert prediction.lat == pytest.approx(expected["lat"][0].tolist())
    assert prediction.score == pytest.approx(expected["score"][0].tolist())

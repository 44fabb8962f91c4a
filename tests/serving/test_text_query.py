"""GeoCLIP text queries: an open_clip text tower (random weights of a small ViT-L-14-shaped model, no download)
into GeoCLIP's released image MLP, scored against the released location encoder over a small GPS gallery."""

import argparse

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from geosurge.eval.plots import world_map
from geosurge.geo.places import nearest_places
from geosurge.models.geoclip import LocationEncoder, geoclip_package_file, load_geoclip_location_weights
from geosurge.serving.text_query import TextLocator, add_locate_text_arguments, locate_text_command

# ViT-L-14 keeps its 768-d shared embedding; the towers are one narrow layer each so the test builds in a second
SMALL_TOWERS = {"text_cfg": {"layers": 1, "width": 64, "heads": 1},
                "vision_cfg": {"layers": 1, "width": 64, "head_width": 64, "patch_size": 14, "image_size": 28}}
GALLERY = [(48.8566, 2.3522), (40.7128, -74.0060), (35.6762, 139.6503), (-33.8688, 151.2093), (64.1466, -21.9426),
           (-22.9068, -43.1729), (55.7558, 37.6173), (1.3521, 103.8198)]


@pytest.fixture(scope="module")
def gallery_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("gallery") / "gallery.csv"
    pd.DataFrame(GALLERY, columns=["LAT", "LON"]).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def locator(gallery_csv):
    torch.manual_seed(0)
    return TextLocator("ViT-L-14", pretrained=None, gallery=gallery_csv, clip_kwargs=SMALL_TOWERS)


def _args(*argv):
    return add_locate_text_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_text_goes_through_clip_text_tower_and_the_released_image_mlp(locator):
    texts = ["a snowy harbour town", "a desert at noon"]
    released = torch.load(geoclip_package_file("model", "weights", "image_encoder_mlp_weights.pth"), weights_only=True)
    with torch.no_grad():
        clip = locator.clip.encode_text(locator.tokenizer(texts))
        assert clip.shape == (2, 768)
        hidden = F.relu(clip @ released["0.weight"].t() + released["0.bias"])
        expected = F.normalize(hidden @ released["2.weight"].t() + released["2.bias"], dim=-1)
    torch.testing.assert_close(locator.text_embeddings(texts), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(expected[0], expected[1])  # the text matters


def test_locate_ranks_the_gallery_with_the_released_encoder_and_scale(locator):
    texts = ["a snowy harbour town", "a crowded night market"]
    predictions = locator.locate(texts, k=3)
    assert len(predictions) == 2 and all(len(p.top_k) == 3 for p in predictions)
    encoder = load_geoclip_location_weights(LocationEncoder()).eval()
    gallery = torch.tensor(GALLERY, dtype=torch.float32)
    with torch.no_grad():
        g = encoder.encode_locations(gallery[:, 0], gallery[:, 1])
    scale = float(torch.load(geoclip_package_file("model", "weights", "logit_scale_weights.pth"), weights_only=True))
    probs = F.softmax(np.exp(scale) * locator.text_embeddings(texts) @ g.t(), dim=-1)
    for i, prediction in enumerate(predictions):
        top = probs[i].topk(3)
        assert prediction.lat == pytest.approx([GALLERY[j][0] for j in top.indices.tolist()], abs=1e-4)
        assert prediction.score == pytest.approx(top.values.tolist(), rel=1e-4)
        assert [c.place for c in prediction.top_k] == nearest_places(prediction.lat, prediction.lon)


def test_locate_text_command_prints_the_places_and_draws_the_map(locator, capsys, tmp_path):
    png = tmp_path / "where.png"
    assert locate_text_command(_args("a snowy harbour town", "--k", "2", "--map", str(png)), draw_map=world_map,
                               locator=locator) == 0
    out = capsys.readouterr().out
    assert "'a snowy harbour town'" in out and "km away" in out and f"map: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_locate_text_command_refuses_bad_input_clearly(locator, capsys):
    assert locate_text_command(_args("  "), locator=locator) == 2
    assert "empty" in capsys.readouterr().err
    assert locate_text_command(_args("a town", "--k", "0"), locator=locator) == 2
    assert "--k" in capsys.readouterr().err
    assert locate_text_command(_args("a town", "--map", "x.png"), locator=locator) == 2  # no drawer passed
    assert "map drawer" in capsys.readouterr().err


def test_a_text_tower_of_another_width_is_a_clear_error(gallery_csv):
    with pytest.raises(ValueError, match="768"):
        TextLocator("ViT-B-32", pretrained=None, gallery=gallery_csv,
                    clip_kwargs={"text_cfg": {"layers": 1, "width": 64, "heads": 1},
                                 "vision_cfg": {"layers": 1, "width": 64, "patch_size": 16, "image_size": 32}})

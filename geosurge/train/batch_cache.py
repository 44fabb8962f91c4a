"""A training worker's split, streamed from the shards on the first epoch and served from its memory after that,
when the worker's part of the split fits a byte budget.

Why: each epoch of a streamed split is a fresh Ray Data execution (read, JPEG decode, cell assignment), and on a
split of a few thousand small images that start-up, not the model, dominates the epoch: a py-spy profile of a
rank-0 worker on the demo found it waiting for val batches 29 % of its time and for train batches 24 %. A cached
split gives the same batches in the same order, so losses are unchanged; training augmentation is applied here,
afresh on every epoch, to the cached un-augmented batches.

Ray Data's streaming split needs every rank to read its part in every epoch, so ranks agree (`agree`) on whether
every one of them holds its whole part before any of them stops streaming.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

Batch = dict[str, np.ndarray]


class EpochBatches:
    """Iterate once per epoch: `for batch in batches` yields dicts of tensors on `device`.

    `transform` (training augmentation) runs on every batch of every epoch, after the cache; `budget_bytes` bounds
    the decoded arrays kept (0: never cache, stream every epoch)."""

    def __init__(self, shard, batch_size: int, *, drop_last: bool, budget_bytes: int, device: torch.device,
                 transform: Callable[[Batch], Batch] | None = None):
        self.shard, self.batch_size, self.drop_last = shard, batch_size, drop_last
        self.budget_bytes, self.device, self.transform = budget_bytes, device, transform
        self.cached: list[Batch] | None = None  # set once every rank holds its whole part
        self.cached_bytes = 0
        self._candidate: list[Batch] | None = None  # this rank's whole part after its first pass, before `agree`
        # "first pass" → "pending" (the pass is over, or the budget ran out) → "settled" (`agree` was called)
        self._state = "first pass" if budget_bytes > 0 else "settled"

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        filling: list[Batch] | None = None
        if self.cached is not None:
            batches: Iterator[Batch] = iter(self.cached)
        else:
            batches = self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy",
                                              drop_last=self.drop_last)
            if self._state == "first pass":
                filling = []
        size = 0
        for batch in batches:
            if filling is not None:
                batch = {k: _writable(v) for k, v in batch.items()}
                size += sum(v.nbytes for v in batch.values())
                if size <= self.budget_bytes:
                    filling.append(batch)
                else:  # over budget: this rank streams, so every rank will (see `agree`)
                    filling, self._state = None, "pending"
            if self.transform is not None:
                batch = self.transform(batch)
            yield {k: torch.from_numpy(_writable(v)).to(self.device, non_blocking=True) for k, v in batch.items()}
        if filling is not None:
            self._candidate, self.cached_bytes, self._state = filling, size, "pending"

    @property
    def pending(self) -> bool:
        """The first pass is over (or ran out of budget) and the ranks have not agreed yet."""
        return self._state == "pending"

    @property
    def holds_whole_part(self) -> bool:
        return self._candidate is not None

    def agree(self, every_rank_holds_its_part: bool) -> None:
        """Serve from memory from now on only if every rank can; otherwise free the cache and keep streaming."""
        self.cached = self._candidate if every_rank_holds_its_part else None
        self._candidate, self._state = None, "settled"
        if self.cached is None:
            self.cached_bytes = 0


def _writable(array: np.ndarray) -> np.ndarray:
    """Ray hands out read-only views of its object store; torch wants to own writable memory."""
    return array if array.flags.writeable else array.copy()


def split_fits(rows: int, workers: int, bytes_per_row: int, budget_bytes: int) -> bool:
    """Whether one worker's part of a split of `rows` rows (Ray splits it evenly) fits `budget_bytes` decoded."""
    return budget_bytes > 0 and -(-rows // max(workers, 1)) * bytes_per_row <= budget_bytes


def decoded_bytes_per_row(image_size: int, label_grid: int, levels: int) -> int:
    """Bytes of one decoded model-batch row: uint8 image and label map, float64 lat/lon, int64 cells and scene."""
    return image_size * image_size * 3 + label_grid * label_grid + 8 * (2 + levels + 1)

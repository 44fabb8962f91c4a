"""A training worker's split, streamed from the shards on the first epoch and served from its memory after that,
when the worker's part of the split fits a byte budget.

Why: each epoch of a streamed split is a fresh Ray Data execution (read, JPEG decode, cell assignment), and on a
split of a few thousand small images that start-up, not the model, dominates the epoch: a py-spy profile of a
rank-0 worker on the demo found it waiting for val batches 29 % of its time and for train batches 24 %. The val
split comes back from memory exactly as it was read (the same losses); the train split is dealt into new batches
every epoch (a streamed one only mixes rows within Ray Data's local shuffle buffer), and training augmentation is
applied here, afresh on every epoch, to the cached un-augmented rows.

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
    the decoded arrays kept (0: never cache, stream every epoch). With `shuffle_seed`, each epoch served from memory
    deals the part's rows into batches in a new random order (same batch count and sizes, so every rank still
    runs the same number of steps); without it, the batches of the first pass come back as they were.
    `shuffle_buffer_rows` mixes the rows of streamed epochs (the first pass included) in a buffer of that many, in an
    order drawn from `shuffle_seed` too. (Which rows reach which rank is Ray Data's streaming split's choice.)"""

    def __init__(self, shard, batch_size: int, *, drop_last: bool, budget_bytes: int, device: torch.device,
                 transform: Callable[[Batch], Batch] | None = None, shuffle_seed: int | list[int] | None = None,
                 shuffle_buffer_rows: int = 0):
        self.shard, self.batch_size, self.drop_last = shard, batch_size, drop_last
        self.shuffle_buffer_rows = shuffle_buffer_rows  # streamed epochs: Ray Data's local shuffle buffer (0: none)
        self.budget_bytes, self.device, self.transform = budget_bytes, device, transform
        self.shuffle = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        self.cached_bytes = 0
        self._rows: Batch | None = None  # the part's rows, once every rank holds its whole part (see `agree`)
        self._sizes: list[int] = []  # the first pass's batch sizes
        self._candidate: list[Batch] | None = None  # this rank's whole part after its first pass, before `agree`
        # "first pass" → "pending" (the pass is over, or the budget ran out) → "settled" (`agree` was called)
        self._state = "first pass" if budget_bytes > 0 else "settled"

    @property
    def in_memory(self) -> bool:
        """Epochs are served from memory (every rank agreed)."""
        return self._rows is not None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        filling: list[Batch] | None = None
        if self._rows is not None:
            batches: Iterator[Batch] = self._from_memory()
        else:
            shuffling = self.shuffle_buffer_rows > 0
            seed = int(self.shuffle.integers(2**31)) if shuffling and self.shuffle is not None else None
            batches = self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy",
                                              drop_last=self.drop_last,
                                              local_shuffle_buffer_size=self.shuffle_buffer_rows if shuffling else None,
                                              local_shuffle_seed=seed)
            if self._state == "first pass":
                filling = []
        size = 0
        for batch in batches:
            if filling is not None:  # owned copies: a view would keep its whole Ray block alive, uncounted
                batch = {k: np.array(v, copy=True) for k, v in batch.items()}
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

    def _from_memory(self) -> Iterator[Batch]:
        rows = self._rows
        total = sum(self._sizes)
        order = self.shuffle.permutation(total) if self.shuffle is not None else None
        start = 0
        for size in self._sizes:
            if order is None:
                yield {k: v[start:start + size] for k, v in rows.items()}
            else:
                picked = np.sort(order[start:start + size])  # sorted: gathers read memory in order
                yield {k: v[picked] for k, v in rows.items()}
            start += size

    @property
    def pending(self) -> bool:
        """The first pass is over (or ran out of budget) and the ranks have not agreed yet."""
        return self._state == "pending"

    @property
    def holds_whole_part(self) -> bool:
        return self._candidate is not None

    def agree(self, every_rank_holds_its_part: bool) -> None:
        """Serve from memory from now on only if every rank can; otherwise free the cache and keep streaming."""
        batches, self._candidate, self._state = self._candidate, None, "settled"
        if every_rank_holds_its_part:  # an empty part too: every rank must stop reading the shard together
            self._sizes = [len(next(iter(b.values()))) for b in batches]
            self._rows = _concatenated(batches)
        else:
            self.cached_bytes = 0


def _concatenated(batches: list[Batch]) -> Batch:
    """The batches' rows as one array per key, each batch freed once copied: the peak stays near the part's size
    plus one batch, not twice the part."""
    if not batches:
        return {}
    total = sum(len(next(iter(b.values()))) for b in batches)
    rows = {k: np.empty((total, *v.shape[1:]), v.dtype) for k, v in batches[0].items()}
    start = 0
    for i, batch in enumerate(batches):
        size = len(next(iter(batch.values())))
        for k, v in batch.items():
            rows[k][start:start + size] = v
        start += size
        batches[i] = {}  # this batch's arrays are free now
    return rows


def _writable(array: np.ndarray) -> np.ndarray:
    """Ray hands out read-only views of its object store; torch wants to own writable memory."""
    return array if array.flags.writeable else array.copy()


def split_fits(rows: int, workers: int, bytes_per_row: int, budget_bytes: int) -> bool:
    """Whether one worker's part of a split of `rows` rows (Ray splits it evenly) fits `budget_bytes` decoded."""
    return budget_bytes > 0 and -(-rows // max(workers, 1)) * bytes_per_row <= budget_bytes

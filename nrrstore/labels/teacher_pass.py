"""The teacher's pass over every view of a store: one forward per batch of views, every requested label
(DBR distances, soft labels, codec fields) from the same logits, one copy back to the host per epoch.

Kept apart from :mod:`nrrstore.labels.relabel`, which owns the job around it (checks, resume, install).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nrrstore.devices import autocast
from nrrstore.errors import NrrError
from nrrstore.format import quant
from nrrstore.format.codecs import PRIOR_LAM, Codec, create_codec_arrays, encode_views, rank_classes, save_prior_chunk
from nrrstore.format.distances import DistanceFile
from nrrstore.format.layout import distance_file_name
from nrrstore.format.reader import Store
from nrrstore.format.softlabels import WORK_NAME as SOFTLABELS_WORK_NAME
from nrrstore.format.softlabels import create_softlabels
from nrrstore.models.checkpoint import Teacher
from nrrstore.progress import Progress
from nrrstore.replay.recipe import AugRecipe, epoch_columns
from nrrstore.replay.stream import BatchAssembler, ViewStream, assemble, pin_default
from nrrstore.replay.workers import ItemSource, worker_items
from nrrstore.train.losses import distances


def teacher_distances(teacher: Teacher, images: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor,
                      lam: torch.Tensor, amp: torch.dtype | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d_org, d_aug, logits)`` of a batch of rendered views: exactly what relabel stores per view.

    ``images`` are in the teacher's input space (normalized) and, with the label columns, on the
    teacher's device; ``amp`` is the autocast dtype (None: float32). One function for relabel and
    for the replay check (`nrrstore.labels.replay_check`), so a check recomputes distances the way they
    were made.
    """
    with autocast(images.device, amp):
        logits = teacher.model(images)
    logits = logits.float()
    d_org, d_aug = distances(logits, y, y_partner, lam)
    return d_org, d_aug, logits


WRITES_AHEAD = 2
"""Epochs of labels that may wait for the writer thread (each is N views' labels on the host)."""
PRIOR = "class prior"
"""The key of an epoch's class-prior sums among its codec fields (see `nrrstore.format.codecs.write_prior`)."""
Epoch = tuple[int, np.ndarray, np.ndarray, "np.ndarray | None", dict[str, dict[str, np.ndarray]]]
"""One epoch's labels on the host: ``(epoch, d_org, d_aug, soft or None, {codec: {field: [N, K]}})``."""


class TeacherPass:
    def __init__(self, st: Store, teacher: Teacher, recipe: AugRecipe, epochs: int, precision: str, mode: str,
                 soft: bool, batch_size: int, device: torch.device, amp: torch.dtype | None, workers: int, work: Path,
                 cache_mb: int, progress: Progress | None, codecs: list[Codec] | None = None) -> None:
        self.st, self.teacher, self.recipe, self.epochs = st, teacher, recipe, epochs
        self.precision, self.mode, self.soft = precision, mode, soft
        self.batch_size, self.work, self.progress = batch_size, work, progress
        self.device, self.amp, self.workers, self.cache_mb = device, amp, workers, cache_mb
        self.codecs = list(codecs or [])
        self.n = st.num_images
        g = recipe.group_size
        self.block_of_softlabels = min(g * max(1, batch_size // g), self.n)
        self.clipped = 0
        self.total_views = epochs * self.n
        self.done_views = 0
        self._epoch0: Epoch | None = None
        teacher.model.to(device).eval()

    def softlabels(self) -> Any:
        return create_softlabels(self.work / SOFTLABELS_WORK_NAME, self.epochs, self.n, self.st.manifest.num_classes,
                                 self.block_of_softlabels)

    def codec_arrays(self) -> dict[str, dict[str, Any]]:
        c = self.st.manifest.num_classes
        return {k.name: create_codec_arrays(self.work, k, self.epochs, self.n, c, self.block_of_softlabels)
                for k in self.codecs}

    def _buffers(self) -> dict[str, Any]:
        """One epoch's device buffers: the distances, the soft labels when asked and every codec's fields."""
        dev, n, c = self.device, self.n, self.st.manifest.num_classes
        out: dict[str, Any] = {"d_org": torch.empty(n, dtype=torch.float32, device=dev),
                               "d_aug": torch.empty(n, dtype=torch.float32, device=dev),
                               "soft": torch.empty((n, c), dtype=torch.float16, device=dev) if self.soft else None}
        for k in self.codecs:
            out[k.name] = {"ids": torch.empty((n, k.k), dtype=torch.int64, device=dev),
                           "values": torch.empty((n, k.k), dtype=torch.float32, device=dev)}
        if self.codecs:
            out[PRIOR] = {"sums": torch.zeros((c, c), dtype=torch.float64, device=dev)}
        return out

    def epochs_of(self, first: int, last: int) -> Iterator[Epoch]:
        """Every epoch of ``first..last`` on the host, in order (see `Epoch`)."""
        todo = list(range(first, last + 1))
        if self._epoch0 is not None and todo and todo[0] == 0:
            yield self._epoch0
            self._epoch0 = None
            todo = todo[1:]
        if not todo:
            return
        stream = ViewStream(self.st, self.recipe, self.batch_size, todo, todo, cache_mb=self.cache_mb)
        teacher = self.teacher
        mean, std = [float(v) for v in teacher.mean], [float(v) for v in teacher.std]
        assembler = BatchAssembler(self.recipe, self.st.manifest.image.channels, self.device, mean, std)
        if self.workers:
            items: Any = worker_items(ItemSource(stream), self.workers, pin_default(self.device), 4)
        else:
            items = stream.items()
        n = self.n
        current = None
        seen, k = 0, -1
        buffers: dict[str, Any] | None = None
        with torch.inference_mode():
            for batch in assemble(items, assembler):
                if batch["epoch"] != current:
                    if buffers is not None:
                        yield self._host(current, buffers, seen, n)
                    current, seen, k = batch["epoch"], 0, k + 1
                    if current != todo[k]:
                        raise NrrError(None, f"relabel: epoch {todo[k]}'s views never came (a decoding worker ended "
                                             "early); nothing of it was written")
                    buffers = self._buffers()
                assert buffers is not None
                self._label_batch(batch, buffers)
                seen += len(batch["index"])
                self.done_views += len(batch["index"])
                if self.progress:
                    self.progress("relabel views", self.done_views, self.total_views)
            if buffers is not None:
                yield self._host(current, buffers, seen, n)
        if todo and current != todo[-1]:
            raise NrrError(None, f"relabel: the views stopped after epoch {current} of {todo[-1]} (a decoding "
                                 "worker ended early); nothing of the unfinished epochs was written")

    def _label_batch(self, batch: dict[str, Any], buffers: dict[str, Any]) -> None:
        """Run the teacher on one batch of views and scatter every requested label into the epoch's buffers:
        all codecs come from the same logits of each view."""
        a, b, logits = teacher_distances(self.teacher, batch["images"], batch["y"], batch["y_partner"],
                                         batch["lam"], self.amp)
        index = batch["index"]
        buffers["d_org"][index] = a
        buffers["d_aug"][index] = b
        if buffers["soft"] is None and not self.codecs:
            return
        probs = torch.softmax(logits, dim=1)
        if buffers["soft"] is not None:
            buffers["soft"][index] = probs.to(torch.float16)
        ranked = rank_classes(probs) if self.codecs else None
        for k in self.codecs:
            for field, v in encode_views(k, probs, batch["y"], ranked).items():
                buffers[k.name][field][index] = v
        if self.codecs:  # views mostly of one class add to that class's row of the prior
            lam, p64 = batch["lam"].to(torch.float64), probs.to(torch.float64)
            sums = buffers[PRIOR]["sums"]
            sums.index_add_(0, batch["y"].long(), p64 * (lam >= PRIOR_LAM).to(torch.float64).unsqueeze(1))
            sums.index_add_(0, batch["y_partner"].long(), p64 * (lam <= 1 - PRIOR_LAM).to(torch.float64).unsqueeze(1))

    def _host(self, epoch: Any, buffers: dict[str, Any], seen: int, n: int) -> Epoch:
        """One epoch's results on the host (the only wait for the device, once per epoch), refused when views
        are missing or the teacher's distances are not finite: such labels would train students on garbage."""
        if seen != n:
            raise NrrError(None, f"relabel: epoch {epoch} got {seen} of {n} views (a decoding worker ended early); "
                                 "nothing of it was written")
        soft = buffers["soft"]
        d_org, d_aug = buffers["d_org"].cpu().numpy(), buffers["d_aug"].cpu().numpy()
        if not (np.isfinite(d_org).all() and np.isfinite(d_aug).all()):
            raise NrrError(self.teacher.spec, "the teacher's cross-entropies are not finite (NaN or infinite "
                                              f"weights or outputs?) in epoch {epoch}; no labels were written")
        codecs = {k.name: {f: v.cpu().numpy() for f, v in buffers[k.name].items()} for k in self.codecs}
        if self.codecs:
            codecs[PRIOR] = {"sums": buffers[PRIOR]["sums"].cpu().numpy()}
        return int(epoch), d_org, d_aug, None if soft is None else soft.cpu().numpy(), codecs

    def choose_quant_max(self) -> float:
        """int8 scale from epoch 0's distances (kept, so the chunk holding epoch 0 does not redo it)."""
        self._epoch0 = next(self.epochs_of(0, 0))
        self.done_views = 0
        return quant.choose_max(np.concatenate([self._epoch0[1], self._epoch0[2]]))

    def compute_chunk(self, first: int, last: int, quant_max: float | None) -> None:
        """Label epochs ``first..last`` into the work folder. One writer thread stores each epoch while the
        teacher runs the next (Parquet, zarr and their compressors release the GIL), in epoch order, so the
        bytes are those of writing in line; at most `WRITES_AHEAD` epochs wait for it (bounded memory)."""
        soft_out = self.softlabels() if self.soft else None
        codec_out = self.codec_arrays()
        m = self.st.manifest
        c = m.num_classes
        prior = np.zeros((c, c), np.float64)

        failed: list[bool] = []

        def store(e: int, d_org: np.ndarray, d_aug: np.ndarray, soft: np.ndarray | None,
                  codecs: dict[str, dict[str, np.ndarray]]) -> None:
            if failed:  # an earlier epoch's write failed: the chunk is abandoned, write nothing more
                return
            try:
                write(e, d_org, d_aug, soft, codecs)
            except BaseException:
                failed.append(True)
                raise

        def write(e: int, d_org: np.ndarray, d_aug: np.ndarray, soft: np.ndarray | None,
                  codecs: dict[str, dict[str, np.ndarray]]) -> None:
            nonlocal prior
            if soft_out is not None:
                soft_out[e] = soft
            if PRIOR in codecs:
                prior += codecs.pop(PRIOR)["sums"]
            for k in self.codecs:
                for field, values in k.store_values(codecs[k.name]["ids"], codecs[k.name]["values"]).items():
                    arr = codec_out[k.name][field]
                    arr[e] = values.astype(arr.dtype)
            views = epoch_columns(self.recipe, e, self.n, m.image.height, m.image.width) \
                if self.mode == "explicit" else None
            table.write_epoch(e, d_org, d_aug, views)

        with DistanceFile(self.work / distance_file_name(first, last), self.n, self.precision,
                          explicit=self.mode == "explicit", quant_max=quant_max) as table, \
                ThreadPoolExecutor(1, thread_name_prefix="nrrstore-relabel-writer") as writer:
            pending: deque[Future[None]] = deque()
            if first == 0 and self._epoch0 is not None:  # kept by `choose_quant_max`: written here, before the
                store(*self._epoch0)  # loader's workers fork (never fork while the writer thread writes)
                self._epoch0, first_todo = None, 1
            else:
                first_todo = first
            try:
                for epoch in self.epochs_of(first_todo, last):
                    while pending and (len(pending) >= WRITES_AHEAD or pending[0].done()):
                        pending[0].result()  # a failed write stops the job here, in one line
                        pending.popleft()  # (only once done: the finally below waits for what is running)
                    pending.append(writer.submit(store, *epoch))
                while pending:
                    pending[0].result()
                    pending.popleft()
            finally:  # stopped or failed: no write may run on while the table and arrays are closed
                for f in pending:
                    f.cancel()
                wait(pending)
            if self.codecs:  # before the table is complete: a finished chunk always has its prior sums
                save_prior_chunk(self.work, first, last, prior)
        self.clipped += table.clipped

"""Refinement batches: how many items refine together, and what happens when they do not fit.

The pipeline (:mod:`anonymixer.protect`) hands :meth:`RefinementScheduler.refine` every item of
a call at once; the scheduler cuts them into batches of whole groups, at most :meth:`limit`
items each (on the CPU a measured constant; on CUDA what ``memory_fraction`` of the free memory
holds, from one step's memory measured once), and refines each batch with
:func:`anonymixer.refine.refine_latents`. A batch that runs out of memory (the device's, or
``memory_budget_mib``) is split in halves, whole groups, and retried down to one group; a group
that does not fit even alone is reported for its items, and the other batches go on. Batch
composition changes no result: items' losses are independent except within a group. Once
``on_step`` stops a batch, the batches not yet run are left, and their items reported as such.
:meth:`RefinementScheduler.run_batches` is that loop for any batched optimisation: the inversion
by optimisation runs its batches through it too (each face alone), so it splits alike.

With ``compile`` on, :meth:`warm_up` runs the step for every batch bucket a batch can be padded
to, on inert items, before the first request: the compiled synthesis it shares with the inversion
(:mod:`anonymixer.synthesis`) then has its graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

import torch

from anonymixer.bundle import Bundle
from anonymixer.config import ProtectConfig
from anonymixer.losses import ALIGNED_SIZE, AttributeLoss
from anonymixer.mixing import Mix, mix_latents
from anonymixer.refine import RefineResult, StepCallback, padded_size, refine_latents

# Measured (benchmarks/refine_bench.py, tiny, 2-core CPU): 22 ms per item and step at 24 items,
# 30 ms at 48 — larger batches fall out of cache. On CUDA the device's memory sets the limit.
CPU_REFINE_BATCH = 24
MEMORY_ERRORS = (MemoryError, torch.cuda.OutOfMemoryError)


def memory_chunk_limit(free_bytes: int, per_item_bytes: int, fixed_bytes: int, fraction: float) -> int:
    """Items per refinement batch that fit in ``fraction`` of ``free_bytes`` when a batch of n
    items needs ``fixed_bytes + n · per_item_bytes``; at least 1 (a group alone is always tried)."""
    return max(1, int((free_bytes * fraction - fixed_bytes) // max(per_item_bytes, 1)))


T = TypeVar("T")


@dataclass
class Batches(Generic[T]):
    """What :meth:`RefinementScheduler.run_batches` did with each item (an index into its groups)."""

    done: list[tuple[torch.Tensor, T]] = field(default_factory=list)  # (items, their batch's result), as run
    failed: dict[int, str] = field(default_factory=dict)  # item → the memory error of its group alone
    stopped: list[int] = field(default_factory=list)  # items never run: a batch before theirs said stop
    splits: list[str] = field(default_factory=list)  # one line per batch split for memory (sizes only)


@dataclass(frozen=True)
class MemoryFailure:
    """A batch that ran out of memory: the error's message (sizes only)."""

    message: str


@dataclass
class Refined:
    """Every item of one :meth:`RefinementScheduler.refine`, in the order given."""

    trainable: torch.Tensor  # [B, k, d]: the refined rows (a failed or stopped item keeps its starting rows)
    traces: list[list[float]]  # per item: its anonymity + attribute loss per step ([] if it never ran)
    steps: list[int]  # per item: the steps its batch ran (fewer than asked in the batch on_step stopped)
    failed: dict[int, str] = field(default_factory=dict)  # item → the memory error of its group alone
    stopped: list[int] = field(default_factory=list)  # items never refined: on_step stopped an earlier batch
    splits: list[str] = field(default_factory=list)  # one line per batch split for memory (sizes only)


class RefinementScheduler:
    """Batches of whole groups within a limit, the out-of-memory split, memory probing and the
    compile warm-up, for one bundle and config on the bundle's device."""

    def __init__(self, model: Bundle, config: ProtectConfig, attribute_loss: AttributeLoss) -> None:
        self.model, self.config, self.attribute_loss = model, config, attribute_loss
        self.device = model.w_avg.device
        self._limit: int | None = None  # limit(), derived at its first call

    def refine(
        self, mix: Mix, x: torch.Tensor, groups: torch.Tensor, steps: int, on_step: StepCallback | None = None
    ) -> Refined:
        """Refine every item of ``mix`` for the aligned originals ``x``, ``groups`` [B] marking one
        person under one key. Once ``on_step`` returns False the batch stops, and the batches not
        yet run never start: their items are ``stopped``, not refined."""
        batches = self.run_batches(
            "a refinement batch",
            groups,
            lambda chunk: self._refine(mix.take(chunk), x[chunk], groups[chunk], steps, self.config, on_step),
            stop=lambda result: result.cancelled,
        )
        b = x.shape[0]
        out = Refined(
            mix.trainable.clone(), [[] for _ in range(b)], [0] * b, batches.failed, batches.stopped, batches.splits
        )
        for chunk, result in batches.done:
            out.trainable[chunk] = result.trainable
            for i, trace in zip(chunk.tolist(), result.loss_trace.T.cpu().tolist(), strict=True):
                out.traces[i], out.steps[i] = trace, result.steps_run
        return out

    def run_batches(
        self,
        batch: str,
        groups: torch.Tensor,
        run: Callable[[torch.Tensor], T],
        stop: Callable[[T], bool] = lambda result: False,
    ) -> Batches[T]:
        """``run`` on the items of ``groups`` [B] (their indices), batch by batch as :meth:`chunks`
        cuts them. A batch out of memory is split in halves, whole groups, and retried down to one
        group; a group that does not fit even alone has its items ``failed``, and the other batches
        go on. Once ``stop`` says so of a batch's result, the batches not yet run are left: their
        items are ``stopped``. ``batch`` names a batch in ``splits`` ("a refinement batch")."""
        out: Batches[T] = Batches()
        pending = self.chunks(groups)
        while pending:
            chunk = pending.pop(0)
            result = self._attempt(run, chunk)
            if isinstance(result, MemoryFailure):
                parts = halves(chunk, groups)
                if parts:
                    out.splits.append(
                        f"{batch} of {len(chunk)} items ran out of memory; retrying it as "
                        f"{len(parts[0])} + {len(parts[1])} items: {result.message}"
                    )
                    pending[:0] = parts
                else:
                    out.failed.update(dict.fromkeys(chunk.tolist(), result.message))
                continue
            out.done.append((chunk, result))
            if stop(result):
                out.stopped = sorted(i for left in pending for i in left.tolist())
                break
        return out

    def _attempt(self, run: Callable[[torch.Tensor], T], chunk: torch.Tensor) -> T | MemoryFailure:
        """One batch, or the memory error it ran into."""
        try:
            return run(chunk)
        except MEMORY_ERRORS as exc:
            failure = MemoryFailure(str(exc))
        # Only now are the failed step's frames, and the tensors they held, released.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return failure

    def chunks(self, groups: torch.Tensor) -> list[torch.Tensor]:
        """Item indices per refinement batch: whole groups, at most :meth:`limit` items each."""
        limit = self.limit()
        members: dict[int, list[int]] = {}
        for i, g in enumerate(groups.tolist()):
            members.setdefault(g, []).append(i)
        chunks: list[list[int]] = [[]]
        for items in members.values():
            if limit and chunks[-1] and len(chunks[-1]) + len(items) > limit:
                chunks.append([])
            chunks[-1] += items
        return [torch.tensor(c, device=groups.device) for c in chunks]

    def limit(self) -> int:
        """Items per refinement batch, whole groups (0: no limit), derived once: ``refine_batch``,
        else on the CPU :data:`CPU_REFINE_BATCH` and on CUDA what ``memory_fraction`` of the free
        memory holds (:meth:`step_memory`). A compiled step pads each batch to its bucket, so a
        limit below the last bucket is rounded down to a bucket: padding never takes a batch past it."""
        if self._limit is None:
            limit = self.config.refine_batch
            if not limit and self.device.type == "cpu":
                limit = CPU_REFINE_BATCH
            elif not limit and self.device.type == "cuda":
                limit = self._memory_limit()
            buckets = self.config.batch_buckets
            if limit and self.config.compile != "off" and buckets and limit < buckets[-1]:
                limit = max((b for b in buckets if b <= limit), default=limit)
            self._limit = limit
        return self._limit

    def _memory_limit(self) -> int:
        try:
            per_item, fixed = self.step_memory()
        except MEMORY_ERRORS:
            return 1  # not even two items fit: one group at a time, split further on failure
        free = torch.cuda.mem_get_info(self.device)[0]
        # what torch's allocator holds but does not use is this process's to reuse
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return memory_chunk_limit(free, per_item, fixed, self.config.memory_fraction)

    def step_memory(self) -> tuple[int, int]:
        """(bytes per item, fixed bytes) of one refinement step on CUDA: the peak memory above what
        was allocated before, at 1 and at 2 inert items. Eager, to compile nothing here; a compiled
        step usually saves less for backward, and the out-of-memory split covers a short estimate."""
        eager = replace(self.config, compile="off", memory_budget_mib=0.0)
        peaks = []
        for size in (1, 2):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self._refine_inert(size, steps=1, config=eager)
            torch.cuda.synchronize(self.device)
            peaks.append(torch.cuda.max_memory_allocated(self.device) - before)
        torch.cuda.empty_cache()
        per_item = max(peaks[1] - peaks[0], 1)
        return per_item, max(peaks[0] - per_item, 0)

    def warm_up(self, max_items: int | None = None, steps: int = 3) -> list[int]:
        """Ready the refinement before the first request: derive :meth:`limit` (on CUDA this
        measures a step's memory) and, with ``compile`` on, compile the step for every batch
        bucket a refinement batch of at most ``max_items`` items (default: any) can be padded to,
        on inert items, so that no request pays a compile. Returns the buckets compiled. A bucket
        out of memory ends the warm-up and lowers the limit below it. ``steps`` 3: CUDA-graph
        trees record a graph at its second call and replay it from the third."""
        limit = self.limit()
        buckets = self.config.batch_buckets
        if self.config.compile == "off" or not buckets:
            return []
        largest = min([n for n in (max_items, limit) if n] or [buckets[-1]])
        compiled: list[int] = []
        for size in (b for b in buckets if b <= padded_size(largest, buckets)):
            try:
                self._refine_inert(size, steps)
            except MEMORY_ERRORS:
                self._limit = compiled[-1] if compiled else 1
                break
            compiled.append(size)
        if self.device.type == "cuda":  # a failed bucket's tensors are released only now
            torch.cuda.empty_cache()
        return compiled

    def _refine_inert(self, size: int, steps: int, config: ProtectConfig | None = None) -> RefineResult:
        """Refine ``size`` inert items (mid-grey originals, every latent row at latent_avg or w_avg,
        one group each): shaped as the pipeline shapes a real batch, to measure or compile."""
        model = self.model
        x = torch.zeros(size, 3, ALIGNED_SIZE, ALIGNED_SIZE, device=self.device)
        w_real = model.latent_avg[None].repeat(size, 1, 1)
        # every mix mode gives the trained rows the same shape; "paper" needs nothing but the key's latent
        mix = mix_latents(w_real, model.w_avg[None].repeat(size, 1), "paper", self.config.identity_layers)
        return self._refine(mix, x, torch.arange(size, device=self.device), steps, config or self.config)

    def _refine(
        self,
        mix: Mix,
        x: torch.Tensor,
        groups: torch.Tensor,
        steps: int,
        config: ProtectConfig,
        on_step: StepCallback | None = None,
    ) -> RefineResult:
        return refine_latents(
            mix,
            x,
            groups,
            generator=self.model.generator,
            face_embedder=self.model.face_embedder,
            attribute_loss=self.attribute_loss,
            config=config,
            steps=steps,
            on_step=on_step,
        )


def halves(chunk: torch.Tensor, groups: torch.Tensor) -> list[torch.Tensor]:
    """``chunk``'s items as two batches of whole groups (the first half of its groups, in order,
    and the rest); none when the chunk is a single group."""
    members = groups[chunk].tolist()
    order = list(dict.fromkeys(members))
    if len(order) < 2:
        return []
    first = set(order[: (len(order) + 1) // 2])
    in_first = torch.tensor([g in first for g in members], device=chunk.device)
    return [chunk[in_first], chunk[~in_first]]

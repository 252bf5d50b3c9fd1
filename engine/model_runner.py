"""The one place where the scheduler's lists become tensors: owns the KV cache and runs one step.

KV cache: one tensor (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim) in the model
dtype on the model's device; [layer, 0] holds K and [layer, 1] holds V; slot = block * block_size + offset.

A step packs the new tokens of every scheduled sequence along one axis (no padding), runs the model,
computes logits only for the last token of each sequence that samples this step, and samples. On
CUDA a step of at most 16 new tokens (a decode step, or a keystroke's few tokens after a cached
prefix, as one-token rows) replays the per-bucket graphs of engine/cuda_graph.py, its integers
written straight into the graphs' buffers in one copy; any other step runs the model eagerly.

launch() queues a step and returns at once; its tokens() reads the samples (the step's one device ->
host sync). A step scheduled ahead (ScheduledSequence.input_pending) takes its input tokens from the
launched step before it on the device, so the host can queue it before reading that step's tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine.attention_metadata import AttentionMetadata
from engine.block_manager import BlockManager
from engine.config import ModelConfig
from engine.host_to_device import tensor_on
from engine.sampler import sample
from engine.scheduler import ScheduledSequence

log = logging.getLogger(__name__)

CPU_DEFAULT_CACHE_BYTES = 512 * 2**20  # a laptop's default KV-cache budget
GPU_CACHE_FRACTION = 0.8  # of the memory free after loading the model; the rest is for activations


def kv_bytes_per_block(config: ModelConfig, dtype: torch.dtype, block_size: int) -> int:
    element_bytes = torch.empty((), dtype=dtype).element_size()
    return config.num_layers * 2 * block_size * config.num_kv_heads * config.head_dim * element_bytes


def default_num_cache_blocks(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, block_size: int, max_batch_size: int
) -> int:
    """Blocks for the KV cache when the caller names no size: most of the free memory on a GPU; on a
    CPU enough for max_batch_size full contexts, capped at CPU_DEFAULT_CACHE_BYTES."""
    per_block = kv_bytes_per_block(config, dtype, block_size)
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free_bytes * GPU_CACHE_FRACTION) // per_block)
    wanted = max_batch_size * -(-config.max_position_embeddings // block_size)
    return max(1, min(wanted, CPU_DEFAULT_CACHE_BYTES // per_block))


def mark_layer(num_layers: int) -> int:
    """The layer after which a decode graph records its progress event (DecodeGraphs.mark_layer): the
    engine decides whether to queue the next step ahead only then, so a request arriving during most
    of a step is not kept waiting behind a step queued for others. The rest of the step (an eighth
    of the layers and the head: ~0.5 ms of a 2.4 ms Llama-3-8B step on an H100) must cover the
    host's work for the next step (~0.15 ms)."""
    return max(0, num_layers - 1 - num_layers // 8)


class ModelRunner:
    def __init__(self, model: torch.nn.Module, *, num_cache_blocks: int, block_size: int) -> None:
        self.model = model
        self.config: ModelConfig = model.config
        self.device: torch.device = model.device
        self.dtype: torch.dtype = model.dtype
        self.block_size = block_size
        c = self.config
        self.kv_cache = self._allocate_cache(num_cache_blocks)
        self.num_cache_blocks = num_cache_blocks = self.kv_cache.shape[2]
        rotary = getattr(model, "rotary", None)
        if rotary is not None:  # no position reaches past what the cache holds
            rotary.limit_positions(num_cache_blocks * block_size)
        # Widest block table a sequence can need: a captured decode graph can size its buffers by it.
        self.max_blocks_per_seq = min(num_cache_blocks, -(-c.max_position_embeddings // block_size))
        self._generators: dict[int, torch.Generator] = {}  # request_id -> its seeded random stream
        # The intra-op thread count is per thread for OpenMP and MKL: a thread that never sets it runs
        # its GEMMs on every core, whatever torch.set_num_threads said elsewhere. The engine thread
        # adopts the count of the thread that built the runner (see adopt_thread).
        self.num_threads = torch.get_num_threads()

    def _allocate_cache(self, num_blocks: int) -> torch.Tensor:
        """The KV cache of `num_blocks` blocks, or of as many as the device's memory holds (each try
        three quarters of the last) with a warning naming both sizes: a cache asked too large for the
        card must not stop the engine from starting."""
        c = self.config
        wanted = num_blocks
        while True:
            shape = (c.num_layers, 2, num_blocks, self.block_size, c.num_kv_heads, c.head_dim)
            try:
                cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
                break
            except torch.OutOfMemoryError:
                if num_blocks == 1:
                    raise
                num_blocks = max(1, num_blocks * 3 // 4)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        if num_blocks < wanted:
            log.warning(
                "a KV cache of %d tokens does not fit in %s memory: using %d tokens (%.2f GB) instead",
                wanted * self.block_size, self.device, num_blocks * self.block_size,
                cache.numel() * cache.element_size() / 1e9,
            )  # fmt: skip
        return cache

    def warm_prefill_attention(self, chunk_tokens: int) -> int:
        """On a GPU whose prefill attention runs on cuDNN, has it plan the shapes of this engine's whole
        prefill chunks now, at load, rather than on the first long prompt (engine/ops/
        cuda_prefill_attention.py warm_cudnn_plans). Returns the shapes planned (0: nothing to do)."""
        from engine import ops

        if self.device.type != "cuda" or ops.backend_report()["paged_attention"] != "cuda":
            return 0
        from engine.ops.cuda_prefill_attention import warm_cudnn_plans

        c = self.config
        max_tokens = min(self.num_cache_blocks * self.block_size, c.max_position_embeddings)
        start = time.perf_counter()
        warmed = warm_cudnn_plans(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            self.dtype,
            chunk_tokens,
            max_tokens,
        )
        if warmed:
            log.info("cuDNN planned %d prefill chunk shapes in %.2f s", warmed, time.perf_counter() - start)
        return warmed

    def adopt_thread(self) -> None:
        """Call first on the thread that will run launch(): gives it the builder thread's torch
        thread count (measured: a fresh thread's MKL GEMMs ran on 2 cores under --threads 1)."""
        torch.set_num_threads(self.num_threads)

    @torch.inference_mode()
    def launch(
        self,
        scheduled: Sequence[ScheduledSequence],
        block_manager: BlockManager,
        after: LaunchedStep | None = None,
    ) -> LaunchedStep:
        """Queue one step on the device. Entries with input_pending take their input token from
        `after`, the step launched just before (which sampled for the same request)."""
        step = StepInputs.gather(scheduled, block_manager, after)
        graphs = self._decode_graphs()
        ran = self._run_graphs(graphs, step, after) if graphs is not None else None
        # mark: the replayed graph's progress event (None for eager steps)
        out, is_logits, last_t, mark = ran if ran is not None else (*self._run_eager(step, after), None)

        rows = step.sampling_entries
        seqs = [scheduled[i].seq for i in rows]
        if not rows:
            return LaunchedStep(len(scheduled), rows, seqs, None, mark)
        if is_logits and len(rows) == out.shape[0]:  # a decode graph's head: every row samples
            logits = out  # (R, V) float32, valid until the next replay
        else:
            logits = out[last_t] if is_logits else self.model.compute_logits(out[last_t])  # (R, V) float32
        params = [s.params for s in seqs]
        needs_history = any(p.repetition_penalty != 1.0 for p in params)
        sampled = sample(
            logits,
            params,
            [self._generator(s.request_id, s.params.seed) for s in seqs],
            [s.token_ids for s in seqs] if needs_history else None,
        )
        return LaunchedStep(len(scheduled), rows, seqs, sampled, mark)

    def _run_graphs(
        self, graphs, step: StepInputs, after: LaunchedStep | None
    ) -> tuple[torch.Tensor, bool, torch.Tensor, torch.cuda.Event | None] | None:
        """The step through the decode graphs, one row per new token (a decode step's rows, or a short
        prefill's tokens as one-token sequences: engine/cuda_graph.py), its inputs in one copy
        straight into the graphs' buffers. None where the graphs cannot serve it.
        Returns (out, is_logits, rows of out that sample, the graph's progress event)."""
        num_rows = len(step.input_ids)
        if not graphs.can_run_rows(num_rows, max(step.seq_lens), step.width):
            return None
        prompt_tokens = step.max_query_len > 1
        row_lens = [p + 1 for p in step.positions]  # a token sees the context up to itself
        row_tables = [t for t, k in zip(step.block_tables, step.num_tokens, strict=True) for _ in range(k)]
        pending = len(step.pending_dst)
        try:
            extra = graphs.load_rows(
                step.input_ids, step.positions, step.slot_mapping, row_lens, row_tables,
                step.pending_dst + step.pending_src + step.last_token_index,
            )  # fmt: skip
            if pending:
                graphs.input_ids.index_copy_(
                    0, extra[:pending], after.sampled.index_select(0, extra[pending : 2 * pending])
                )
            out = graphs.replay(num_rows, prompt_tokens)
        except RuntimeError as exc:  # capture failed: eager steps from now on
            graphs.disabled_reason = str(exc)
            log.warning("CUDA graph decode disabled: %s", exc)
            return None
        return out, graphs.head is not None and not prompt_tokens, extra[2 * pending :], graphs.last_mark

    def _run_eager(
        self, step: StepInputs, after: LaunchedStep | None
    ) -> tuple[torch.Tensor, bool, torch.Tensor]:
        """The step through model.forward_paged; returns (hidden (T, H), False, rows that sample)."""
        width, tables = step.width, step.block_tables
        # One host -> device copy for all of the step's integers, queued behind any step ahead of it
        # (engine/host_to_device.py), then views:
        # [input_ids T | positions T | slot_mapping T | query_start_loc S+1 | seq_lens S |
        #  block_tables S*width (padded with 0) | last_token_index R | pending dst P | pending src P]
        packed = step.input_ids + step.positions + step.slot_mapping + step.query_start_loc + step.seq_lens
        for t in tables:
            packed += t
            packed += [0] * (width - len(t))
        packed += step.last_token_index + step.pending_dst + step.pending_src
        ids_t, pos_t, slots_t, qsl_t, lens_t, tables_t, last_t, dst_t, src_t = tensor_on(
            packed, torch.int64, self.device
        ).split(
            [len(step.input_ids)] * 3
            + [len(step.query_start_loc), len(step.seq_lens), len(tables) * width, len(step.last_token_index)]
            + [len(step.pending_dst)] * 2
        )
        if step.pending_dst:
            ids_t.index_copy_(0, dst_t, after.sampled.index_select(0, src_t))
        attn = AttentionMetadata(
            query_start_loc=qsl_t.to(torch.int32),
            seq_lens=lens_t.to(torch.int32),
            block_tables=tables_t.to(torch.int32).view(len(tables), width),
            slot_mapping=slots_t,
            max_query_len=step.max_query_len,
            max_seq_len=max(step.seq_lens),
            block_size=self.block_size,
        )
        return self.model.forward_paged(ids_t, pos_t, attn, self.kv_cache), False, last_t

    def _decode_graphs(self):
        """engine/cuda_graph.py's per-bucket decode graphs, made on the first CUDA decode (None on CPU)."""
        if self.device.type != "cuda":
            return None
        if not hasattr(self, "_graphs"):
            from engine.cuda_graph import DecodeGraphs, graphs_supported

            self._graphs = None
            if graphs_supported(self.config):
                cache_tokens = self.num_cache_blocks * self.block_size
                max_seq_len = min(self.config.max_position_embeddings, cache_tokens)
                self._graphs = DecodeGraphs(
                    lambda ids, pos, attn, mark=None: self.model.forward_paged(
                        ids, pos, attn, self.kv_cache, mark
                    ),
                    device=self.device,
                    block_size=self.block_size,
                    max_seq_len=max_seq_len,
                    head=self.model.compute_logits,
                    mark_layer=mark_layer(self.config.num_layers),
                )
        return self._graphs

    def release(self, request_id: int) -> None:
        """Forget a finished request's random stream."""
        self._generators.pop(request_id, None)

    def _generator(self, request_id: int, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        gen = self._generators.get(request_id)
        if gen is None:
            gen = torch.Generator(device=self.device).manual_seed(seed)
            self._generators[request_id] = gen
        return gen


class LaunchedStep:
    """A step queued on the device: its sampled tokens, on their way to the host."""

    def __init__(
        self,
        num_scheduled: int,
        rows: list[int],
        seqs: list,
        sampled: torch.Tensor | None,
        mark: torch.cuda.Event | None = None,
    ) -> None:
        self._num_scheduled = num_scheduled
        self._mark = mark  # recorded when most of the step is done (mark_layer)
        self._rows = rows  # the scheduled entries that sample, in the order of `sampled`
        self._row_of = {seq.request_id: r for r, seq in enumerate(seqs)}
        self.sampled = sampled  # (R,) int64 on the device
        self._ready: torch.cuda.Event | None = None
        self._host = sampled
        if sampled is not None and sampled.is_cuda:
            # Copied into pinned memory behind the step and read once it lands: a blocking copy would
            # also wait for any step queued after this one.
            self._host = torch.empty(sampled.shape, dtype=sampled.dtype, pin_memory=True)
            self._host.copy_(sampled, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()

    def wait_mostly_done(self) -> None:
        """Wait until most of the step has run (its graph's progress event), or return at once where
        there is none (eager steps, the CPU)."""
        if self._mark is not None:
            self._mark.synchronize()

    def row_of(self, request_id: int) -> int:
        """Where this step's sample for the request sits in `sampled`."""
        return self._row_of[request_id]

    def tokens(self) -> list[int | None]:
        """The sampled token of each scheduled entry that samples, None for the others; waits for the
        step."""
        out: list[int | None] = [None] * self._num_scheduled
        if self._host is None:
            return out
        if self._ready is not None:
            self._ready.synchronize()
        for i, token in zip(self._rows, self._host.tolist(), strict=True):
            out[i] = token
        return out


@dataclass
class StepInputs:
    """A step's integers on the host, entry by entry of the schedule."""

    input_ids: list[int] = field(default_factory=list)  # every new token of every entry (0 where pending)
    positions: list[int] = field(default_factory=list)
    slot_mapping: list[int] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)  # per entry
    query_start_loc: list[int] = field(default_factory=lambda: [0])  # [0, cumulative num_tokens...]
    seq_lens: list[int] = field(default_factory=list)  # per entry: its context after this step
    block_tables: list[list[int]] = field(default_factory=list)  # per entry (the block manager's lists)
    sampling_entries: list[int] = field(default_factory=list)  # entries that sample
    last_token_index: list[int] = field(default_factory=list)  # their last token's index in input_ids
    pending_dst: list[int] = field(default_factory=list)  # indices of input_ids the step before fills ...
    pending_src: list[int] = field(default_factory=list)  # ... from these rows of its samples

    @property
    def width(self) -> int:
        return max(len(t) for t in self.block_tables)

    @property
    def max_query_len(self) -> int:
        return max(self.num_tokens)

    @classmethod
    def gather(
        cls, scheduled: Sequence[ScheduledSequence], block_manager: BlockManager, after: LaunchedStep | None
    ) -> StepInputs:
        s = cls()
        for i, item in enumerate(scheduled):
            seq, rid = item.seq, item.seq.request_id
            if item.input_pending:
                assert after is not None and item.num_tokens == 1, rid
                s.pending_dst.append(len(s.input_ids))
                s.pending_src.append(after.row_of(rid))
                s.input_ids.append(0)
            else:
                s.input_ids += seq.token_ids[item.start : item.end]
            s.positions += range(item.start, item.end)
            s.slot_mapping += block_manager.slot_mapping(rid, item.start, item.end)
            s.num_tokens.append(item.num_tokens)
            s.query_start_loc.append(s.query_start_loc[-1] + item.num_tokens)
            s.seq_lens.append(item.end)
            s.block_tables.append(block_manager.block_table(rid))
            if item.samples:
                s.sampling_entries.append(i)
                s.last_token_index.append(s.query_start_loc[-1] - 1)
        return s

"""The decode step captured as CUDA graphs, one per batch-size bucket (1, 2, 4, 8, 16).

A decode step launches a few hundred small kernels; replaying a graph turns them into one launch,
so the CPU no longer paces the GPU. Graphs read their inputs from static buffers, views of one device
buffer: the engine writes a step's ids, positions, slots, sequence lengths and block tables there from
host lists in one copy (load_rows), then replays the graph of the smallest bucket that fits; rows past
the batch are padding (sequence length 0, slot -1: the kernels read and write nothing for them).
run() does the same from device tensors (the benchmarks' path).

With a `head` (the model's compute_logits), a decode graph ends with it: every row of a decode step
samples, and the head's GEMV then starts early (PDL) and needs no eager launch of its own. The
prompt-token graphs below return hidden states: only their last rows sample, and the caller runs
the head on those alone (the head on all 16 rows of a keystroke would cost the 8-bit GEMV more).

The attention metadata captured in a graph carries the longest context the graph will see
(`max_seq_len`), so the decode attention kernel's partition grid covers it; partitions past a
sequence's real length exit at once.

A short prefill (a few new tokens after a cached prefix: the keystroke case) runs through the same
graphs: `token_level_metadata` turns T new tokens of any sequences into T one-token "sequences",
each attending to its own causal prefix (its K/V and its predecessors' are written in the same
layer before attention), which is exactly causal prefill attention. Such steps replay graphs of
their own (captured with `prompt_tokens_as_sequences`), whose attention reads each K/V chunk once
for all the new tokens of a prompt; decode steps keep the per-sequence kernel.

Requires the CUDA ops (engine/ops/cuda.py): the reference ops synchronize with the host and cannot
be captured. Capture happens lazily, the first time a bucket is needed.
"""

from __future__ import annotations

import ctypes
import logging
from array import array
from collections.abc import Callable

import torch

from engine.attention_metadata import AttentionMetadata

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16)

# step(input_ids (B,), positions (B,), attn[, mark=(layer, fn)]) -> any tensor whose first axis is the
# batch; with mark_layer, the step takes `mark` and calls fn() once that layer is queued
StepFn = Callable[..., torch.Tensor]
HeadFn = Callable[[torch.Tensor], torch.Tensor]


def bucket_for(num_seqs: int, buckets: tuple[int, ...] = BUCKETS) -> int | None:
    """Smallest bucket holding num_seqs rows, or None when the batch is larger than every bucket."""
    return next((b for b in buckets if b >= num_seqs), None)


class DecodeGraphs:
    def __init__(
        self,
        step: StepFn,
        *,
        device: torch.device,
        block_size: int,
        max_seq_len: int,
        buckets: tuple[int, ...] = BUCKETS,
        head: HeadFn | None = None,
        mark_layer: int | None = None,
    ) -> None:
        self.step = step
        self.head = head
        self.mark_layer = mark_layer
        # Per graph, an event its replay records once layer mark_layer is done (see replay()).
        self._marks: dict[tuple[int, bool], torch.cuda.Event] = {}
        self.last_mark: torch.cuda.Event | None = None
        self.block_size = block_size
        self.max_seq_len = max_seq_len
        self.buckets = tuple(sorted(buckets))
        self.max_blocks_per_seq = -(-max_seq_len // block_size)
        rows, width = self.buckets[-1], self.max_blocks_per_seq
        # Every input of the graphs lives in one device buffer, so that a step's host values arrive in
        # one copy (load_rows): int64 [input_ids | positions | slot_mapping | extra], then int32
        # [seq_lens | block_tables (rows x width)]. `extra` holds a step's own small index lists.
        self.extra_len = 3 * rows
        int64_bytes = 8 * (3 * rows + self.extra_len)
        self._storage = torch.zeros(int64_bytes + 4 * rows * (1 + width), dtype=torch.uint8, device=device)
        int64s = self._storage[:int64_bytes].view(torch.int64)
        int32s = self._storage[int64_bytes:].view(torch.int32)
        self.input_ids, self.positions, self.slot_mapping, self._extra = int64s.split(
            [rows] * 3 + [self.extra_len]
        )
        self.seq_lens, tables = int32s.split([rows, rows * width])
        self.block_tables = tables.view(rows, width)
        self.slot_mapping.fill_(-1)
        self.query_start_loc = torch.arange(rows + 1, dtype=torch.int32, device=device)
        self._tables_offset = int64_bytes + 4 * rows  # where block_tables starts in the buffer
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self.disabled_reason: str | None = None

    def can_run(self, attn: AttentionMetadata) -> bool:
        return (
            self.disabled_reason is None
            and attn.is_decode
            and bucket_for(attn.num_seqs, self.buckets) is not None
            and attn.max_seq_len <= self.max_seq_len
            and attn.block_tables.shape[1] <= self.max_blocks_per_seq
        )

    def returns_logits(self, attn: AttentionMetadata) -> bool:
        """Whether run() gives float32 logits (the head in the graph) rather than hidden states."""
        return self.head is not None and not attn.prompt_tokens_as_sequences

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata) -> torch.Tensor:
        """One decode step through the bucket's graph, its inputs as device tensors; returns the step's
        output rows [:num_seqs], logits where returns_logits(attn), else hidden states (a view of a
        static buffer, valid until the next replay)."""
        assert bucket_for(attn.num_seqs, self.buckets) is not None and self.can_run(attn)
        self._load_inputs(input_ids, positions, attn)
        return self.replay(attn.num_seqs, attn.prompt_tokens_as_sequences)

    def can_run_rows(self, num_rows: int, max_seq_len: int, table_width: int) -> bool:
        """Whether load_rows() and replay() can serve a step of these host-side dimensions."""
        return (
            self.disabled_reason is None
            and 0 < num_rows <= self.buckets[-1]
            and max_seq_len <= self.max_seq_len
            and table_width <= self.max_blocks_per_seq
        )

    def load_rows(
        self,
        input_ids: list[int],
        positions: list[int],
        slot_mapping: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        extra: list[int] = (),
    ) -> torch.Tensor:
        """A step's inputs from the host, one row per token (a sequence's row sees its context up to
        seq_lens; its block table, padded with 0), in one copy from pinned memory queued on the
        stream; rows past the step are padding. Returns `extra` (at most extra_len int64s) on the
        device, valid until the next load."""
        rows, width, n = self.buckets[-1], self.max_blocks_per_seq, len(input_ids)
        pad = rows - n
        assert 0 < n <= rows and len(extra) <= self.extra_len
        zeros = array("q", bytes(8 * pad))
        head = (
            array("q", input_ids) + zeros
            + array("q", positions) + zeros
            + array("q", slot_mapping) + array("q", [-1]) * pad  # padding rows write no K/V
            + array("q", extra) + array("q", bytes(8 * (self.extra_len - len(extra))))
        )  # fmt: skip
        lens = array("i", seq_lens) + array("i", bytes(4 * pad))  # padding rows read nothing
        tables = array("i")
        converted: dict[int, array] = {}  # a prompt's rows share one table
        for table in block_tables:
            row = converted.get(id(table))
            if row is None:
                row = converted[id(table)] = array("i", table) + array("i", bytes(4 * (width - len(table))))
            tables.extend(row)
        data = head.tobytes() + lens.tobytes() + tables.tobytes()
        assert len(data) == self._tables_offset + 4 * n * width
        host = torch.empty(len(data), dtype=torch.uint8, pin_memory=True)
        ctypes.memmove(host.data_ptr(), data, len(data))
        self._storage[: len(data)].copy_(host, non_blocking=True)
        return self._extra[: len(extra)]

    def replay(self, num_rows: int, prompt_tokens: bool) -> torch.Tensor:
        """Replay the graph of the smallest bucket holding num_rows over the loaded inputs (captured
        on first use); returns its output rows [:num_rows], as run() does. With mark_layer,
        last_mark is then the event this replay records when that layer is done: the engine waits
        for it, not for the whole step, before deciding whether to queue the next step ahead."""
        bucket = bucket_for(num_rows, self.buckets)
        assert bucket is not None
        key = (bucket, prompt_tokens)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(bucket, prompt_tokens)
        graph, out = entry
        graph.replay()
        self.last_mark = self._marks.get(key)
        return out[:num_rows]

    def _load_inputs(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata) -> None:
        n, width = attn.num_seqs, attn.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(attn.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(attn.seq_lens, non_blocking=True)
        self.block_tables[:n, :width].copy_(attn.block_tables, non_blocking=True)
        # padding rows: nothing to read, nothing to write
        self.input_ids[n:].zero_()
        self.positions[n:].zero_()
        self.slot_mapping[n:].fill_(-1)
        self.seq_lens[n:].zero_()

    def _static_metadata(self, rows: int, prompt_tokens: bool) -> AttentionMetadata:
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[: rows + 1],
            seq_lens=self.seq_lens[:rows],
            block_tables=self.block_tables[:rows],
            slot_mapping=self.slot_mapping[:rows],
            max_query_len=1,
            max_seq_len=self.max_seq_len,
            block_size=self.block_size,
            prompt_tokens_as_sequences=prompt_tokens,
        )

    def _capture(self, bucket: int, prompt_tokens: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        attn = self._static_metadata(bucket, prompt_tokens)
        ids, pos = self.input_ids[:bucket], self.positions[:bucket]
        head = self.head if self.returns_logits(attn) else None

        mark = None
        event = progress_event() if self.mark_layer is not None else None
        if event is not None:
            self._marks[(bucket, prompt_tokens)] = event
            mark = (self.mark_layer, event.record)

        def step() -> torch.Tensor:
            out = self.step(ids, pos, attn) if mark is None else self.step(ids, pos, attn, mark=mark)
            return out if head is None else head(out)

        # warm up on a side stream (lazy inits, cuBLAS workspaces) before capturing
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = step()
        self._graphs[(bucket, prompt_tokens)] = (graph, out)
        log.info("captured the decode step for batch bucket %d (prompt tokens: %s)", bucket, prompt_tokens)
        return graph, out


def progress_event() -> torch.cuda.Event | None:
    """An event that a graph records as one of its nodes on every replay (external), or None where
    torch has no such events (before 2.8): the graphs then record none, and the engine decides about
    the next step right after launching one."""
    try:
        return torch.cuda.Event(external=True)
    except TypeError:
        return None


def token_level_metadata(attn: AttentionMetadata, num_tokens: int) -> AttentionMetadata:
    """The new tokens of a prefill step as one-token sequences: token j of a sequence with L tokens
    after this step and n new ones becomes a sequence of length L - n + 1 + j with the same block
    table. Device ops only (no host sync); num_tokens is the host's count of new tokens."""
    device = attn.seq_lens.device
    query_lens = attn.query_start_loc[1:] - attn.query_start_loc[:-1]  # (S,)
    seq_of_token = torch.repeat_interleave(
        torch.arange(attn.num_seqs, device=device), query_lens, output_size=num_tokens
    )  # (T,)
    tokens_after = attn.query_start_loc[1:][seq_of_token] - 1 - torch.arange(num_tokens, device=device)
    return AttentionMetadata(
        query_start_loc=torch.arange(num_tokens + 1, dtype=torch.int32, device=device),
        seq_lens=(attn.seq_lens[seq_of_token] - tokens_after).to(torch.int32),
        block_tables=attn.block_tables.index_select(0, seq_of_token),
        slot_mapping=attn.slot_mapping,
        max_query_len=1,
        max_seq_len=attn.max_seq_len,
        block_size=attn.block_size,
        prompt_tokens_as_sequences=True,
    )


def graphs_supported(config) -> bool:
    """Graphs need every decode op on a CUDA kernel: the reference attention synchronizes with the
    host (and a failed capture can leave the stream unusable), so this is decided before capturing."""
    from engine import ops
    from engine.ops import cuda_attention

    if not torch.cuda.is_available() or ops.backend_report().get("paged_attention") != "cuda":
        return False
    group = config.num_heads // config.num_kv_heads
    return cuda_attention.decode_kernel_covers(config.head_dim, group)

"""Scheduler: continuous batching, chunked prefill, priorities, cancellation, deadlines, stop rules and
a cache too small for everyone. Driven without a model: the "sampled" token is a function of the
sequence's tokens, and text is one letter per token."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.block_manager import BlockManager
from engine.request import Priority, SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput
from engine.sequence import Sequence

EOS = 99


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def decode(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i % 26) for i in ids)


def make(rid, n_prompt, clock, *, first=0, eos=frozenset({EOS}), **params) -> Sequence:
    return Sequence(
        rid,
        [first + i for i in range(n_prompt)],
        SamplingParams(**params),
        arrival_time_s=clock(),
        eos_token_ids=eos,
        max_model_len_tokens=1000,
        decode=decode,
    )


def next_token(seq: Sequence) -> int:
    return (seq.token_ids[-1] + 1) % 26  # never EOS


def step(s: Scheduler, sample=next_token) -> tuple[SchedulerOutput, list[Sequence]]:
    out = s.schedule()
    tokens = [sample(item.seq) if item.samples else None for item in out.scheduled]
    return out, out.finished + s.update(out, tokens)


def run_all(s: Scheduler, sample=next_token, max_steps=500) -> list[Sequence]:
    done = []
    for _ in range(max_steps):
        if not s.has_work():
            return done
        done += step(s, sample)[1]
    raise AssertionError("scheduler did not finish")


def scheduler(num_blocks=64, block_size=4, clock=None, **kw) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size), clock=clock or Clock(), **kw)


def test_decode_tokens_and_stop_at_max_new_tokens():
    s = scheduler()
    seq = make(1, 5, s.clock, max_new_tokens=3)
    s.add(seq)
    out, _ = step(s)
    assert [(i.start, i.num_tokens, i.samples) for i in out.scheduled] == [(0, 5, True)]
    out, _ = step(s)
    assert [(i.start, i.num_tokens) for i in out.scheduled] == [(5, 1)]
    out, done = step(s)
    assert done == [seq] and seq.finish_reason == "length"
    assert seq.output_token_ids == [5, 6, 7]
    assert seq.text == "fgh"
    assert s.block_manager.num_free_blocks == 64


def test_long_prompt_is_chunked_and_never_stalls_a_decoding_request():
    s = scheduler(prefill_chunk_tokens=8)
    short = make(1, 3, s.clock, max_new_tokens=20)
    s.add(short)
    step(s)  # short prefilled, now decoding
    long = make(2, 30, s.clock, max_new_tokens=1, priority=Priority.CHAT)
    s.add(long)
    starts = []
    for _ in range(4):
        out, _ = step(s)
        by_id = {i.seq.request_id: i for i in out.scheduled}
        assert by_id[1].num_tokens == 1  # the decoding request runs every step
        starts.append((by_id[2].start, by_id[2].num_tokens))
    assert starts == [(0, 8), (8, 8), (16, 8), (24, 6)]
    assert long.is_finished and long.finish_reason == "length"


def test_a_completion_overtakes_a_chat_prompt_being_prefilled():
    s = scheduler(prefill_chunk_tokens=8)
    chat = make(1, 40, s.clock, max_new_tokens=1, priority=Priority.CHAT)
    s.add(chat)
    step(s)
    s.clock.now_s += 1
    completion = make(2, 6, s.clock, first=100, max_new_tokens=2, priority=Priority.COMPLETION)
    s.add(completion)
    out, _ = step(s)
    # The completion's whole prompt goes first; the chat prompt gets what is left of the chunk.
    assert [(i.seq.request_id, i.start, i.num_tokens) for i in out.scheduled] == [(2, 0, 6), (1, 8, 2)]


def test_priority_orders_admission_and_fifo_within_a_class():
    s = scheduler(max_batch_size=1)
    chat = make(1, 2, s.clock, max_new_tokens=1, priority=Priority.CHAT)
    s.clock.now_s += 1
    c1 = make(2, 2, s.clock, max_new_tokens=1)
    s.clock.now_s += 1
    c2 = make(3, 2, s.clock, max_new_tokens=1)
    for seq in (chat, c2, c1):
        s.add(seq)
    order = [seq.request_id for seq in run_all(s)]
    assert order == [2, 3, 1]


def test_a_completion_preempts_chat_when_the_batch_is_full():
    s = scheduler(max_batch_size=1)
    chat = make(1, 4, s.clock, max_new_tokens=50, priority=Priority.CHAT)
    s.add(chat)
    step(s)
    step(s)
    completion = make(2, 4, s.clock, max_new_tokens=2)
    s.add(completion)
    out, _ = step(s)
    assert [i.seq.request_id for i in out.scheduled] == [2]
    assert chat.num_preemptions == 1 and chat in s.waiting
    done = run_all(s)
    assert [d.request_id for d in done] == [2, 1]
    # Recomputed after preemption, the chat output continues exactly where it was.
    assert chat.output_token_ids == [(4 + i) % 26 for i in range(50)]


def test_cancel_takes_effect_at_the_next_step_and_returns_every_block():
    s = scheduler()
    seq = make(1, 9, s.clock, max_new_tokens=100)
    s.add(seq)
    step(s)
    step(s)
    assert s.block_manager.num_free_blocks < 64
    assert s.cancel(1) is True
    assert s.cancel(1) is False  # twice: a no-op
    assert s.block_manager.num_free_blocks == 64
    out, done = step(s)
    assert out.scheduled == [] and done == [seq]
    assert seq.finish_reason == "cancelled" and seq.output_token_ids == [9, 10]
    assert s.cancel(1) is False  # after completion: a no-op
    assert not s.has_work()


def test_deadline_returns_what_it_has():
    s = scheduler()
    seq = make(1, 3, s.clock, max_new_tokens=100, time_budget_ms=50)
    s.add(seq)
    step(s)
    step(s)
    s.clock.now_s += 0.049
    step(s)
    assert not seq.is_finished
    s.clock.now_s += 0.001
    out, done = step(s)
    assert done == [seq] and out.scheduled == []
    assert seq.finish_reason == "deadline" and seq.output_token_ids == [3, 4, 5]
    assert seq.result().text == "def"


def test_a_request_past_its_deadline_while_queued_finishes_without_running():
    s = scheduler(max_batch_size=1)
    busy = make(1, 3, s.clock, max_new_tokens=100)
    queued = make(2, 3, s.clock, first=50, max_new_tokens=5, time_budget_ms=10)
    s.add(busy)
    s.add(queued)
    step(s)
    s.clock.now_s += 0.010
    out, done = step(s)
    assert done == [queued] and queued.finish_reason == "deadline"
    assert queued.output_token_ids == [] and queued.result().text == ""
    assert [i.seq.request_id for i in out.scheduled] == [1]


def test_eos_and_stop_token_ids_end_the_output_without_appearing_in_it():
    s = scheduler()
    a = make(1, 3, s.clock, max_new_tokens=10)
    c = make(3, 3, s.clock, max_new_tokens=3, ignore_eos=True)
    for seq in (a, c):
        s.add(seq)
    run_all(s, sample=lambda seq: EOS if seq.num_tokens >= 5 else next_token(seq))
    assert (a.finish_reason, a.output_token_ids, a.text) == ("eos", [3, 4], "de")
    assert (c.finish_reason, c.output_token_ids) == ("length", [3, 4, EOS])
    b = make(2, 3, s.clock, max_new_tokens=10, stop_token_ids=(5,))
    s.add(b)
    run_all(s)
    assert (b.finish_reason, b.output_token_ids) == ("stop", [3, 4])


def test_stop_string_cuts_the_text_and_streaming_holds_back_its_possible_start():
    s = scheduler()
    seq = make(1, 2, s.clock, max_new_tokens=20, stop=("fgx", "hij"))  # output letters: c d e f g h i j
    s.add(seq)
    streamed = []
    while not seq.is_finished:
        step(s)
        chunk = seq.take_stream_chunk()
        streamed.append(chunk.text if chunk else None)
    # "f" and "fg" could start "fgx", "h" and "hi" could start "hij": held back until decided.
    assert streamed == ["c", "d", "e", "", "", "fg", "", ""]
    assert seq.finish_reason == "stop" and seq.text == "cdefg"
    assert "".join(t for t in streamed if t) == seq.result().text


def test_a_cache_too_small_for_everyone_makes_requests_wait_and_all_finish():
    s = scheduler(num_blocks=6, block_size=4, max_batch_size=4)
    seqs = [
        make(i, 7, s.clock, first=i * 30, max_new_tokens=8) for i in range(4)
    ]  # 15 tokens = 4 blocks each
    for seq in seqs:
        s.add(seq)
    done = run_all(s)
    assert sorted(d.request_id for d in done) == [0, 1, 2, 3]
    for seq in seqs:
        assert seq.finish_reason == "length"
        assert seq.output_token_ids == [(seq.token_ids[6] + 1 + i) % 26 for i in range(8)]
    assert s.block_manager.num_free_blocks == 6


def test_a_request_the_whole_cache_cannot_hold_fails_with_a_clear_message():
    s = scheduler(num_blocks=2, block_size=4)
    seq = make(1, 9, s.clock)
    s.add(seq)
    out, done = step(s)
    assert done == [seq] and seq.finish_reason == "error"
    assert seq.error == (
        "the prompt needs 3 KV-cache blocks of 4 tokens (9 tokens) but the whole cache has 2 blocks; "
        "shorten the prompt or start the engine with a larger cache"
    )


def test_a_request_that_fills_the_whole_cache_while_decoding_stops_with_length():
    s = scheduler(num_blocks=2, block_size=4)
    seq = make(1, 6, s.clock, max_new_tokens=50)
    s.add(seq)
    run_all(s)
    assert seq.finish_reason == "length"
    assert seq.num_tokens == 9  # 8 slots computed, the ninth token sampled but never computed
    assert s.block_manager.num_free_blocks == 2


def test_a_second_request_with_the_same_prefix_reports_cached_tokens():
    s = scheduler(block_size=4)
    a = make(1, 10, s.clock, max_new_tokens=1)
    s.add(a)
    run_all(s)
    b = make(2, 10, s.clock, max_new_tokens=1)
    s.add(b)
    out, _ = step(s)
    assert (out.scheduled[0].start, out.scheduled[0].num_tokens) == (8, 2)
    assert b.num_cached_tokens == 8 and b.result().num_cached_tokens == 8


@settings(max_examples=150, deadline=None)
@given(
    num_blocks=st.integers(3, 16),
    block_size=st.sampled_from([2, 4]),
    chunk=st.integers(1, 12),
    max_batch=st.integers(1, 4),
    events=st.lists(
        st.tuples(
            st.integers(1, 14),  # prompt length
            st.integers(0, 6),  # max_new_tokens
            st.sampled_from(list(Priority)),
            st.integers(0, 3),  # steps before the next arrival
            st.one_of(st.none(), st.integers(0, 8)),  # cancel after this many steps
            st.integers(0, 2),  # shared-prefix family
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_random_workloads_finish_every_request_once_and_return_every_block(
    num_blocks, block_size, chunk, max_batch, events
):
    s = scheduler(num_blocks, block_size, max_batch_size=max_batch, prefill_chunk_tokens=chunk)
    pending = list(enumerate(events))
    cancels: dict[int, int] = {}
    finished: list[Sequence] = []
    seqs: dict[int, Sequence] = {}
    step_no = wait = 0
    while pending or s.has_work():
        while pending and wait == 0:
            rid, (n, max_new, prio, gap, cancel_after, family) = pending.pop(0)
            seqs[rid] = make(rid, n, s.clock, first=family * 40, max_new_tokens=max_new, priority=prio)
            s.add(seqs[rid])
            if cancel_after is not None:
                cancels[rid] = step_no + cancel_after
            wait = gap
        for rid, when in list(cancels.items()):
            if when <= step_no:
                s.cancel(rid)
                del cancels[rid]
        decoding_before = {q.request_id for q in s.running if q.is_decoding}
        out, done = step(s)
        finished += done
        prefill_tokens = sum(i.num_tokens for i in out.scheduled if i.seq.request_id not in decoding_before)
        assert prefill_tokens <= chunk  # nobody waits for more than one chunk of another's prompt
        assert len(out.scheduled) <= max_batch
        # A decoding request runs every step unless a better-ranked one needed its blocks.
        for rid in decoding_before:
            q = seqs[rid]
            assert q.is_finished or rid in {i.seq.request_id for i in out.scheduled} or q.num_preemptions > 0
        s.block_manager.check_invariants()
        step_no += 1
        wait = max(0, wait - 1)
        assert step_no < 2000
    ids = [q.request_id for q in finished]
    assert sorted(ids) == sorted(seqs)  # every request finishes exactly once
    assert s.block_manager.num_free_blocks == num_blocks
    for q in finished:
        assert q.finish_reason in ("eos", "stop", "length", "cancelled", "deadline", "error")
        if q.finish_reason == "length":
            assert len(q.output_token_ids) == q.params.max_new_tokens or q.error is None


# ---- one step ahead (the pipeline that runs it: test_step_pipeline.py) ---------------------------


def decoding(s: Scheduler, *seqs: Sequence) -> SchedulerOutput:
    """Prefill the sequences and schedule their first decode step."""
    for seq in seqs:
        s.add(seq)
    step(s)
    out = s.schedule()
    assert all(i.num_tokens == 1 for i in out.scheduled)
    return out


def test_schedule_ahead_gives_each_sequence_its_next_position_and_slot():
    s = scheduler(block_size=4)
    a, b = make(1, 4, s.clock, max_new_tokens=10), make(2, 6, s.clock, first=9, max_new_tokens=10)
    out = decoding(s, a, b)
    ahead = s.schedule_ahead(out)
    assert [
        (i.seq.request_id, i.start, i.num_tokens, i.input_pending, i.samples) for i in ahead.scheduled
    ] == [
        (1, 5, 1, True, True),
        (2, 7, 1, True, True),
    ]
    # Position 5 of a needs its second block, taken now: the step ahead writes its K/V there.
    assert len(s.block_manager.block_table(1)) == 2 and len(s.block_manager.slot_mapping(1, 5, 6)) == 1


def test_schedule_ahead_waits_when_the_next_step_may_be_anything_else():
    s = scheduler(block_size=4)
    out = decoding(s, make(1, 4, s.clock, max_new_tokens=10))
    s.add(make(2, 3, s.clock))  # a request waits: the next step prefills it
    assert s.schedule_ahead(out) is None

    s = scheduler(block_size=4)
    out = decoding(s, make(1, 4, s.clock, max_new_tokens=10, repetition_penalty=1.2))
    assert s.schedule_ahead(out) is None  # the penalty reads the sampled tokens on the host

    s = scheduler(block_size=4, prefill_chunk_tokens=4)
    s.add(make(1, 3, s.clock, max_new_tokens=10))
    step(s)  # 1 is decoding now
    s.add(make(2, 9, s.clock, first=30))
    out = s.schedule()  # 1 decodes, 2 prefills its first chunk
    assert s.schedule_ahead(out) is None

    s = scheduler(num_blocks=2, block_size=4)
    out = decoding(s, make(1, 7, s.clock, max_new_tokens=10))  # 8 slots taken after this step
    assert s.schedule_ahead(out) is None  # position 8 needs a third block: the pool has none


def test_a_sequence_whose_pending_token_is_its_last_is_left_out():
    s = scheduler(block_size=4)
    a, b = make(1, 4, s.clock, max_new_tokens=2), make(2, 4, s.clock, first=9, max_new_tokens=10)
    out = decoding(s, a, b)  # a's pending token is its second and last
    assert [i.seq.request_id for i in s.schedule_ahead(out).scheduled] == [2]
    s = scheduler(block_size=4)
    out = decoding(s, make(1, 4, s.clock, max_new_tokens=2))
    assert s.schedule_ahead(out) is None

"""StepPipeline with the real scheduler and block manager and a device stand-in (the runner's launch
and tokens, sampling token -> f(input token)): running one decode step ahead gives exactly the
synchronous outputs, whatever stops, cancels or preempts, and returns every block. The engine with
the real model is tested both ways in tests/engine/test_engine.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.step_pipeline import StepPipeline
from tests.unit.test_scheduler import EOS, make, scheduler


class FakeLaunched:
    def __init__(self, tokens: list[int | None], rows: dict[int, int], log: list[str] | None = None) -> None:
        self._tokens = tokens
        self._rows = rows
        self.sampled = tokens  # "on the device"
        self.log = log if log is not None else []

    def wait_mostly_done(self) -> None:
        self.log.append("mostly done")

    def row_of(self, request_id: int) -> int:
        return self._rows[request_id]

    def tokens(self) -> list[int | None]:
        self.log.append("read")
        return list(self._tokens)


class FakeRunner:
    """Samples f(input token) for each entry that samples; an entry whose input is pending reads it
    from the step launched before, as the device does."""

    def __init__(self, f) -> None:
        self.f = f
        self.launches: list[bool] = []  # per launch: was it queued ahead
        self.log: list[str] = []  # what the pipeline did, in order

    def launch(self, scheduled, block_manager, after: FakeLaunched | None = None) -> FakeLaunched:
        tokens: list[int | None] = []
        for item in scheduled:
            rid = item.seq.request_id
            block_manager.slot_mapping(rid, item.start, item.end)  # the slots exist
            if item.input_pending:
                assert after is not None
                tokens.append(self.f(after.sampled[after.row_of(rid)]))
            else:
                tokens.append(self.f(item.seq.token_ids[-1]) if item.samples else None)
        self.launches.append(after is not None)
        self.log.append("launch ahead" if after is not None else "launch")
        return FakeLaunched(tokens, {item.seq.request_id: i for i, item in enumerate(scheduled)}, self.log)


def drive(s: Scheduler, f, *, ahead: bool, cancel: dict[int, int] | None = None, max_steps=500):
    """Step as the engine does. `cancel`: request id -> the read before which it is cancelled (a
    step ahead may be queued then). Returns (finished sequences, steps launched ahead)."""
    runner = FakeRunner(f)
    pipeline = StepPipeline(s, runner, s.block_manager, run_ahead=ahead)
    done: list[Sequence] = []
    reads = 0
    for _ in range(max_steps):
        if not pipeline.has_work():
            assert pipeline.steps_ahead == sum(runner.launches)
            return done, pipeline.steps_ahead
        for rid, when in (cancel or {}).items():
            if when == reads:
                s.cancel(rid)
        done += pipeline.start()
        result = pipeline.finish(may_run_ahead=True)
        if result is not None:
            reads += 1
            done += result.finished
        s.block_manager.check_invariants()
    raise AssertionError("the pipeline did not finish")


def plus_one(token: int) -> int:
    return (token + 1) % 26


def eos_after(token: int) -> int:
    return EOS if token == 12 else plus_one(token)


def workload(clock) -> list[Sequence]:
    return [
        make(1, 5, clock, max_new_tokens=6),  # length
        make(2, 7, clock, first=3, max_new_tokens=30),  # eos after token 12
        make(3, 4, clock, first=20, max_new_tokens=30, stop=("bc",)),  # a stop string
        make(4, 6, clock, first=1, max_new_tokens=1),  # one token: never runs ahead
        make(5, 9, clock, first=5, max_new_tokens=25, ignore_eos=True),
    ]


def test_running_ahead_gives_the_same_outputs_and_returns_every_block():
    results = {}
    for ahead in (False, True):
        s = scheduler(num_blocks=64, block_size=4)
        seqs = workload(s.clock)
        for seq in seqs:
            s.add(seq)
        done, steps_ahead = drive(s, eos_after, ahead=ahead)
        assert sorted(q.request_id for q in done) == [1, 2, 3, 4, 5]
        assert s.block_manager.num_free_blocks == 64
        results[ahead] = [(q.output_token_ids, q.text, q.finish_reason) for q in seqs], steps_ahead
    assert results[True][0] == results[False][0]
    assert [r for _, _, r in results[True][0]] == ["length", "eos", "stop", "length", "length"]
    assert results[False][1] == 0 and results[True][1] >= 20


def test_a_cancel_while_a_step_ahead_is_queued_discards_its_token():
    s = scheduler()
    seq = make(1, 5, s.clock, max_new_tokens=50)
    s.add(seq)
    done, steps_ahead = drive(s, plus_one, ahead=True, cancel={1: 4})
    assert done == [seq] and seq.finish_reason == "cancelled"
    assert seq.output_token_ids == [5, 6, 7, 8]  # four reads; the queued step's token dropped
    assert steps_ahead >= 3 and s.block_manager.num_free_blocks == 64


def test_a_fault_abandons_the_step_being_read_and_the_one_queued_behind_it():
    s = scheduler()
    a, b = make(1, 5, s.clock, max_new_tokens=50), make(2, 3, s.clock, first=7, max_new_tokens=50)
    s.add(a)
    s.add(b)
    runner = FakeRunner(plus_one)
    pipeline = StepPipeline(s, runner, s.block_manager, run_ahead=True)
    for _ in range(3):
        pipeline.start()
        pipeline.finish(may_run_ahead=True)
    assert runner.launches[-1]  # a step is queued ahead

    def broken():
        raise RuntimeError("device fault")

    s.update = lambda out, tokens: broken()
    try:
        pipeline.start()
        pipeline.finish(may_run_ahead=True)
    except RuntimeError:
        pass
    victims = pipeline.abandon()
    assert sorted(q.request_id for q in victims) == [1, 2]
    assert pipeline.finish(may_run_ahead=True) is None  # nothing queued any more
    s.fail(victims, "device fault")
    assert not pipeline.has_work() and s.block_manager.num_free_blocks == 64


def test_the_next_step_is_decided_once_most_of_the_current_one_has_run():
    """may_run_ahead is asked after the step's progress event and before its read: a request that
    arrives while the step runs stops the step ahead from being queued for the others."""
    s = scheduler()
    seq = make(1, 5, s.clock, max_new_tokens=50)
    s.add(seq)
    runner = FakeRunner(plus_one)
    pipeline = StepPipeline(s, runner, s.block_manager, run_ahead=True)
    pipeline.start()
    pipeline.finish(lambda: runner.log.append("asked") is None)  # the prefill: its first decode step ahead
    assert runner.log == ["launch", "mostly done", "asked", "launch ahead", "read"]
    inbox = ["a request"]
    pipeline.start()  # the step ahead is queued: nothing is launched
    assert pipeline.finish(lambda: not inbox) is not None
    assert runner.log[5:] == ["mostly done", "read"]  # nothing queued behind it for the others
    assert pipeline.steps_ahead == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 20), st.integers(1, 12), st.integers(0, 2), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.integers(2, 12),
)
def test_random_workloads_ahead_equal_the_synchronous_ones(requests, num_blocks):
    """Small pools (preemption), cancellations while a step is queued ahead, EOS: the same outputs."""
    outputs = {}
    for ahead in (False, True):
        s = scheduler(num_blocks=num_blocks, block_size=4, max_batch_size=3, prefill_chunk_tokens=8)
        seqs = [
            make(rid, n, s.clock, first=rid * 3, max_new_tokens=m, priority=p)
            for rid, (n, m, p, _) in enumerate(requests)
        ]
        for seq in seqs:
            s.add(seq)
        cancel = {rid: 2 * rid + 1 for rid, (*_, c) in enumerate(requests) if c}
        drive(s, eos_after, ahead=ahead, cancel=cancel)
        assert s.block_manager.num_free_blocks == num_blocks
        outputs[ahead] = [(q.finish_reason, q.output_token_ids) for q in seqs]
    # A cancel lands before the same read in both runs, so every output is the same.
    assert outputs[True] == outputs[False]


def test_graphs_record_no_progress_event_where_torch_has_no_external_events(monkeypatch):
    """torch before 2.8 has no Event(external=...): the graphs are captured without the event (the
    step ahead is then decided right after each launch) instead of failing every capture."""
    import torch

    from engine import cuda_graph

    class OldEvent:
        def __init__(self, enable_timing=False, blocking=False, interprocess=False) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "Event", OldEvent)
    assert cuda_graph.progress_event() is None

    class NewEvent(OldEvent):
        def __init__(self, external=False, **kw) -> None:
            self.external = external

    monkeypatch.setattr(torch.cuda, "Event", NewEvent)
    assert cuda_graph.progress_event().external

"""Engine end to end on a tiny random-weight model (CPU): greedy output equals a no-cache reference,
prefix caching changes nothing but the work done, and every stop rule, cancellation, deadline,
streaming form and bad input behaves as the contract says."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from engine import Engine
from engine.request import Priority, SamplingParams
from tests.tiny_models import make_tiny_checkpoint

BS = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("qwen2"), "qwen2", seed=1)


@pytest.fixture(params=[False, True], ids=["sync", "ahead"])
def engine(checkpoint, request):
    """Every contract holds whether the engine waits for each step or runs one decode step ahead (the
    GPU default, forced here on the CPU)."""
    with Engine(checkpoint, device="cpu", block_size=BS, num_cache_blocks=128, run_ahead=request.param) as e:
        yield e


def prompt_ids(engine, n: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, engine.config.vocab_size, (n,), generator=gen).tolist()


def reference_greedy(model, ids: list[int], n: int) -> list[int]:
    """No cache at all: the whole sequence through model.forward for every token."""
    ids = list(ids)
    out = []
    for _ in range(n):
        logits = model(torch.tensor([ids]))  # (1, S, V)
        out.append(int(logits[0, -1].argmax()))
        ids.append(out[-1])
    return out


def test_greedy_generation_equals_the_no_cache_reference(engine):
    ids = prompt_ids(engine, 37)
    result = engine.generate(ids, max_new_tokens=24, ignore_eos=True)
    assert result.token_ids == reference_greedy(engine.model, ids, 24)
    assert result.finish_reason == "length"
    assert result.num_prompt_tokens == 37 and result.num_cached_tokens == 0
    assert result.text == engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)


def test_prefix_cache_on_equals_off_and_reports_exact_cached_tokens(checkpoint):
    shared = None
    outputs = {}
    for enabled in (False, True):
        with Engine(checkpoint, device="cpu", block_size=BS, num_cache_blocks=64, enable_prefix_cache=enabled,
                    prefill_chunk_tokens=32) as e:  # fmt: skip
            shared = prompt_ids(e, 40, seed=1)
            prompts = [shared + prompt_ids(e, 9, seed=s) for s in (2, 3)] + [shared[:35]]
            first = e.generate(prompts[0], max_new_tokens=12, ignore_eos=True)
            # The others run together, sharing the cached prefix.
            handles = [e.submit(p, max_new_tokens=12, ignore_eos=True) for p in prompts[1:]]
            results = [first] + [h.result() for h in handles]
            outputs[enabled] = [r.token_ids for r in results]
            cached = [r.num_cached_tokens for r in results]
            if enabled:
                # 40 shared tokens hold 2 full blocks: 32 tokens; the 35-token prompt also gets 2 blocks,
                # since (35 - 1) // 16 = 2.
                assert cached == [0, 32, 32]
                assert e.stats()["prefix_cache_hit_tokens"] == 64
            else:
                assert cached == [0, 0, 0]
            assert e.stats()["num_free_blocks"] == 64
    assert outputs[True] == outputs[False]
    assert outputs[True][1] == reference_greedy(e.model, prompts[1], 12)


def test_prompt_plus_output_of_an_earlier_request_reuses_the_generated_blocks(engine):
    ids = prompt_ids(engine, 20)
    first = engine.generate(ids, max_new_tokens=30, ignore_eos=True)
    # 50 tokens, 49 of them computed (the last sampled token never was): 3 full blocks.
    second = engine.generate(ids + first.token_ids, max_new_tokens=5, ignore_eos=True)
    assert second.num_cached_tokens == 48  # the prompt alone held only 1 full block (16)
    assert second.token_ids == reference_greedy(engine.model, ids + first.token_ids, 5)


def test_max_new_tokens_and_stop_token_ids(engine):
    ids = prompt_ids(engine, 10)
    full = engine.generate(ids, max_new_tokens=8, ignore_eos=True)
    assert len(full.token_ids) == 8 and full.finish_reason == "length"
    stop_at = full.token_ids[3]
    first_hit = full.token_ids.index(stop_at)
    cut = engine.generate(ids, max_new_tokens=8, ignore_eos=True, stop_token_ids=[stop_at])
    assert cut.finish_reason == "stop" and cut.token_ids == full.token_ids[:first_hit]


def test_eos_ends_the_output(engine):
    ids = prompt_ids(engine, 10)
    full = engine.generate(ids, max_new_tokens=8, ignore_eos=True)
    engine.tokenizer.eos_ids = frozenset({full.token_ids[2]})  # make the model's third token its EOS
    result = engine.generate(ids, max_new_tokens=8)
    assert result.finish_reason == "eos"
    assert result.token_ids == full.token_ids[: full.token_ids.index(full.token_ids[2])]


def test_stop_string_cuts_the_text(engine):
    ids = prompt_ids(engine, 12, seed=4)
    full = engine.generate(ids, max_new_tokens=20, ignore_eos=True)
    text = full.text
    assert len(text) > 6
    stop = text[3:6]
    result = engine.generate(ids, max_new_tokens=20, ignore_eos=True, stop=[stop])
    assert result.finish_reason == "stop"
    assert result.text == text[: text.index(stop)]


def test_streaming_concatenation_equals_the_final_text(engine):
    ids = prompt_ids(engine, 12, seed=5)
    handle = engine.submit(ids, max_new_tokens=25, ignore_eos=True)
    chunks = list(handle)
    result = handle.result()
    assert "".join(c.text for c in chunks) == result.text
    assert [t for c in chunks for t in c.token_ids] == result.token_ids
    assert handle.done()


def test_async_iteration_and_wait(engine):
    ids = prompt_ids(engine, 12, seed=6)

    async def consume():
        handle = engine.submit(ids, max_new_tokens=15, ignore_eos=True)
        texts = [chunk.text async for chunk in handle]
        return texts, await handle.wait()

    texts, result = asyncio.run(consume())
    assert "".join(texts) == result.text and len(result.token_ids) == 15


def test_submit_from_several_threads(engine):
    prompts = [prompt_ids(engine, 8 + i, seed=10 + i) for i in range(6)]
    expected = [reference_greedy(engine.model, p, 6) for p in prompts]
    results: dict[int, list[int]] = {}

    def worker(i):
        results[i] = engine.generate(prompts[i], max_new_tokens=6, ignore_eos=True).token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [results[i] for i in range(6)] == expected


def test_cancel_stops_generation_and_returns_every_block(engine):
    ids = prompt_ids(engine, 30)
    handle = engine.submit(ids, max_new_tokens=400, ignore_eos=True)
    next(iter(handle))  # generation is under way
    handle.cancel()
    handle.cancel()  # twice: a no-op
    result = handle.result(timeout=30)
    assert result.finish_reason == "cancelled"
    assert len(result.token_ids) < 400
    handle.cancel()  # after completion: a no-op
    assert engine.stats()["num_free_blocks"] == 128
    assert engine.generate(ids, max_new_tokens=2).finish_reason in ("length", "eos")


def test_many_requests_with_cancellations_from_several_threads_all_finish(checkpoint):
    import random

    with Engine(checkpoint, device="cpu", block_size=BS, num_cache_blocks=24, max_batch_size=4,
                prefill_chunk_tokens=32) as e:  # fmt: skip
        shared = prompt_ids(e, 40, seed=30)
        handles = []
        lock = threading.Lock()

        def worker(seed):
            rng = random.Random(seed)
            for _ in range(6):
                ids = shared[: rng.randint(1, 40)] + prompt_ids(
                    e, rng.randint(1, 30), seed=rng.randint(0, 99)
                )
                h = e.submit(ids, max_new_tokens=rng.randint(1, 20), ignore_eos=True,
                             priority=rng.choice(list(Priority)))  # fmt: skip
                with lock:
                    handles.append((h, ids))
                if rng.random() < 0.5:
                    h.cancel()

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        results = [(h.result(timeout=60), ids) for h, ids in handles]
        assert len(results) == 18
        assert {r.finish_reason for r, _ in results} <= {"length", "cancelled"}
        for r, ids in results:  # shared prefixes, preemption and cancellations changed no output
            if r.finish_reason == "length":
                assert r.token_ids == reference_greedy(e.model, ids, len(r.token_ids))
        stats = e.stats()
        assert stats["num_free_blocks"] == 24 and stats["num_running"] == stats["num_waiting"] == 0


def test_deadline_returns_what_it_has(engine):
    result = engine.generate(prompt_ids(engine, 10), max_new_tokens=480, ignore_eos=True, time_budget_ms=30)
    assert result.finish_reason == "deadline"
    assert len(result.token_ids) < 480
    assert result.text == engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)


def test_token_ids_outside_the_vocabulary_are_refused(engine):
    v = engine.config.vocab_size
    with pytest.raises(ValueError, match=rf"prompt token 1 is {v}, outside the vocabulary \[0, {v}\)"):
        engine.submit([1, v, 2])
    with pytest.raises(ValueError, match=r"prompt token 0 is -1, outside"):
        engine.submit([-1])
    with pytest.raises(ValueError, match="the prompt is empty"):
        engine.submit([])
    with pytest.raises(ValueError, match=r"prompt token 1 is 2.0, not an integer token id"):
        engine.submit([1, 2.0])
    assert engine.submit(torch.tensor([3, 4])).result().num_prompt_tokens == 2  # 0-d tensors are fine


def test_prompt_longer_than_the_context(engine):
    ids = prompt_ids(engine, 600)
    with pytest.raises(
        ValueError, match="the prompt has 600 tokens but the model's context is 512; shorten it"
    ):
        engine.submit(ids)
    result = engine.generate(ids, max_new_tokens=4, ignore_eos=True, truncate_prompt=True)
    assert result.num_prompt_tokens == 508  # the last 512 - 4 tokens
    assert result.token_ids == reference_greedy(engine.model, ids[-508:], 4)


def test_unknown_sampling_parameter_is_refused(engine):
    with pytest.raises(TypeError, match="unknown sampling parameter"):
        engine.submit([1, 2], max_tokens=3)


def test_a_cache_too_small_for_a_request_gives_an_error_result(checkpoint):
    with Engine(checkpoint, device="cpu", block_size=BS, num_cache_blocks=2) as e:
        result = e.generate(prompt_ids(e, 40))
        assert result.finish_reason == "error"
        assert "needs 3 KV-cache blocks" in result.error and "whole cache has 2 blocks" in result.error
        assert e.generate(prompt_ids(e, 20), max_new_tokens=3).finish_reason in ("length", "eos")


def test_a_cache_too_small_for_all_requests_queues_or_preempts_them(checkpoint):
    with Engine(checkpoint, device="cpu", block_size=BS, num_cache_blocks=5, max_batch_size=4) as e:
        prompts = [prompt_ids(e, 30, seed=20 + i) for i in range(4)]  # 30 + 20 tokens = 4 blocks each
        handles = [e.submit(p, max_new_tokens=20, ignore_eos=True) for p in prompts]
        results = [h.result(timeout=120) for h in handles]
        assert [r.finish_reason for r in results] == ["length"] * 4
        assert [r.token_ids for r in results] == [reference_greedy(e.model, p, 20) for p in prompts]
        assert e.stats()["num_preemptions"] >= 1  # the pool ran dry mid-decode: recomputed, same tokens
        assert e.stats()["num_free_blocks"] == 5


@pytest.mark.parametrize("where", ["runner", "runner-later", "scheduler"])
def test_an_exception_in_a_step_fails_that_request_and_the_engine_keeps_serving(engine, monkeypatch, where):
    """A fault in a step's launch (the first, or a later one: with the step ahead, a launch made while
    another step is queued), or in applying its tokens: the request fails, nothing leaks."""
    owner, name = (engine.scheduler, "update") if where == "scheduler" else (engine.runner, "launch")
    fault_at = 3 if where == "runner-later" else 1
    real = getattr(owner, name)
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == fault_at:
            raise RuntimeError("simulated fault")
        return real(*args)

    monkeypatch.setattr(owner, name, flaky)
    bad = engine.generate(prompt_ids(engine, 10), max_new_tokens=6)
    assert bad.finish_reason == "error"
    assert bad.error == "engine step failed: RuntimeError: simulated fault"
    good = engine.generate(prompt_ids(engine, 10), max_new_tokens=3, ignore_eos=True)
    assert good.finish_reason == "length" and len(good.token_ids) == 3
    assert engine.stats()["num_free_blocks"] == 128
    assert engine.stats()["step_errors"] == 1


def test_seeded_sampling_is_reproducible(engine):
    ids = prompt_ids(engine, 10)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    a = engine.generate(ids, params)
    b = engine.generate(ids, params)
    assert a.token_ids == b.token_ids


def test_string_prompt_and_stats(engine):
    result = engine.generate("def fibonacci(n):", max_new_tokens=3, ignore_eos=True)
    assert result.num_prompt_tokens == len(engine.tokenizer.encode("def fibonacci(n):"))
    stats = engine.stats()
    assert stats["num_cache_blocks"] == 128 and stats["num_free_blocks"] == 128
    assert stats["prompt_tokens"] >= result.num_prompt_tokens and stats["generated_tokens"] >= 3


def test_closing_finishes_pending_requests_as_cancelled(checkpoint):
    e = Engine(checkpoint, device="cpu", block_size=BS, num_cache_blocks=64)
    handle = e.submit(prompt_ids(e, 10), max_new_tokens=480, ignore_eos=True)
    e.close()
    e.close()
    assert handle.result(timeout=10).finish_reason in ("cancelled", "length")
    with pytest.raises(RuntimeError, match="the engine is closed"):
        e.submit([1, 2])


def test_streamed_chunks_never_split_a_multibyte_character(engine, monkeypatch):
    import engine.model_runner as model_runner

    text = "é → 😀 数据"
    forced = engine.tokenizer.encode(text)
    assert any("\ufffd" in engine.tokenizer.decode([t]) for t in forced)  # characters span tokens
    position = {"i": 0}

    def forced_sample(logits, params, generators=None, prev_token_ids=None):
        token = forced[position["i"]]
        position["i"] += 1
        return torch.tensor([token])

    monkeypatch.setattr(model_runner, "sample", forced_sample)
    handle = engine.submit(prompt_ids(engine, 5), max_new_tokens=len(forced), ignore_eos=True)
    chunks = [c.text for c in handle]
    assert all("\ufffd" not in c for c in chunks)
    assert "" in chunks  # a token that ended mid-character released no text
    assert "".join(chunks) == handle.result().text == text


def test_cache_size_from_tokens_blocks_or_the_default(checkpoint):
    with Engine(checkpoint, device="cpu", block_size=BS, cache_tokens=100) as e:
        assert e.stats()["num_cache_blocks"] == 7  # ceil(100 / 16)
    with Engine(checkpoint, device="cpu", block_size=BS) as e:
        c = e.config
        # CPU default: max_batch_size (8) full contexts of 512 tokens = 8 * 32 blocks (well under the cap)
        assert e.stats()["num_cache_blocks"] == 256
        assert tuple(e.runner.kv_cache.shape) == (c.num_layers, 2, 256, BS, c.num_kv_heads, c.head_dim)
        assert e.runner.kv_cache.dtype == torch.float32
    with pytest.raises(ValueError, match="give num_cache_blocks or cache_tokens, not both"):
        Engine(checkpoint, device="cpu", num_cache_blocks=4, cache_tokens=64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_greedy_on_the_gpu_equals_the_reference(checkpoint):
    with Engine(checkpoint, device="cuda", dtype=torch.float32, block_size=BS, num_cache_blocks=64) as e:
        assert e.runner.kv_cache.device.type == "cuda"
        ids = prompt_ids(e, 37)
        result = e.generate(ids, max_new_tokens=16, ignore_eos=True)
        second = e.generate(ids, max_new_tokens=16, ignore_eos=True)
        assert second.num_cached_tokens == 32 and second.token_ids == result.token_ids
        assert e.run_ahead and e.stats()["steps_ahead"] >= 14  # the GPU default
        cpu_model = engine_load_cpu(checkpoint)
        assert result.token_ids == reference_greedy(cpu_model, ids, 16)


def concurrent_outputs(engine) -> list[tuple[list[int], str]]:
    """Requests of several lengths, stop rules and a seeded sampler, decoding side by side."""
    runs = [
        (prompt_ids(engine, 20, seed=1), dict(max_new_tokens=12, ignore_eos=True)),
        (prompt_ids(engine, 33, seed=2), dict(max_new_tokens=30, ignore_eos=True)),
        (prompt_ids(engine, 9, seed=3), dict(max_new_tokens=25)),
        (prompt_ids(engine, 17, seed=4), dict(max_new_tokens=1, ignore_eos=True)),
        (prompt_ids(engine, 12, seed=5), dict(max_new_tokens=20, temperature=1.0, seed=11, ignore_eos=True)),
    ]
    handles = [engine.submit(ids, **kw) for ids, kw in runs]
    return [(r.token_ids, r.finish_reason) for r in (h.result(timeout=120) for h in handles)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_running_one_step_ahead_changes_no_output(checkpoint, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    outputs, stats = {}, {}
    for ahead in (False, True):
        with Engine(checkpoint, device=device, dtype=torch.float32, block_size=BS, num_cache_blocks=64,
                    run_ahead=ahead) as e:  # fmt: skip
            outputs[ahead] = concurrent_outputs(e)
            stats[ahead] = e.stats()
    assert outputs[True] == outputs[False]
    assert [len(t) for t, _ in outputs[True]][:2] == [12, 30]
    assert stats[False]["steps_ahead"] == 0 and stats[True]["steps_ahead"] >= 10
    assert stats[True]["generated_tokens"] == stats[False]["generated_tokens"]  # discarded ones not counted
    assert stats[True]["num_free_blocks"] == 64


def engine_load_cpu(checkpoint):
    from engine import load_model

    return load_model(checkpoint, device="cpu", dtype=torch.float32)


def test_engine_thread_adopts_the_callers_torch_thread_count(checkpoint, monkeypatch):
    """MKL and OpenMP keep the intra-op thread count per thread: an engine thread that never sets it
    ran its GEMMs on every core under the caller's torch.set_num_threads(1)."""
    calls = []
    set_num_threads = torch.set_num_threads

    def spy(n: int) -> None:
        calls.append((threading.current_thread().name, n))
        set_num_threads(n)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    with Engine(checkpoint, device="cpu", block_size=BS, num_cache_blocks=16) as e:
        e.generate([11, 12, 13], max_new_tokens=1)
    assert ("exlsp-engine", torch.get_num_threads()) in calls


def test_prefill_chunk_default_is_larger_on_a_gpu(tmp_path):
    """A GPU chunk dequantizes every weight once, so it needs many tokens to pay for that; the CPU keeps
    short chunks (a long prompt delays a keystroke's completion by at most one chunk)."""
    from engine.engine import default_prefill_chunk_tokens

    assert default_prefill_chunk_tokens(torch.device("cuda")) == 2048
    assert default_prefill_chunk_tokens(torch.device("cpu")) == 512
    with Engine(make_tiny_checkpoint(tmp_path, "llama"), device="cpu", cache_tokens=256) as e:
        assert e.scheduler.prefill_chunk_tokens == 512


def test_a_cache_too_large_for_the_memory_is_sized_down_and_said(tmp_path, monkeypatch, caplog):
    """Out of memory while allocating the KV cache: the engine still starts, with the largest cache
    that fits (three quarters at a time), and the warning names both sizes."""
    real_zeros = torch.zeros
    fits = 300  # blocks this "device" has room for

    def zeros(*shape, **kwargs):
        dims = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if len(dims) == 6 and dims[2] > fits:  # (layers, 2, blocks, block_size, kv_heads, head_dim)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_zeros(*shape, **kwargs)

    monkeypatch.setattr(torch, "zeros", zeros)
    with caplog.at_level("WARNING", logger="engine.model_runner"):
        with Engine(
            make_tiny_checkpoint(tmp_path, "llama"), device="cpu", num_cache_blocks=1000, block_size=4
        ) as e:
            assert e.runner.num_cache_blocks == e.block_manager.num_blocks == 236  # 1000 * (3/4)^5
            assert e.runner.kv_cache.shape[2] == 236
            assert e.generate([1, 2, 3], max_new_tokens=3).token_ids
    assert "a KV cache of 4000 tokens does not fit in cpu memory: using 944 tokens" in caplog.text

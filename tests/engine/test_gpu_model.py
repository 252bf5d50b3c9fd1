"""The tiny models on the GPU (fp16, CUDA kernels) against the CPU reference path (float32):
the same logits within fp16 tolerance, and the Engine's greedy tokens (decode through CUDA graphs)
equal the reference's for the first 32 tokens."""

from __future__ import annotations

import copy

import pytest
import torch

import engine
from engine.loader import default_vocab_bits
from tests.tiny_models import make_tiny_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# head_dim 64 so that the CUDA attention kernels (64/128) serve every op; "default-shape" keeps
# the tiny default head_dim 16, which must fall back to the reference for attention only.
KERNEL_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
CASES = {
    "llama-gptq4-act-order": (
        "llama",
        {"quant": {"bits": 4, "group_size": 32, "desc_act": True}},
        KERNEL_SHAPE,
    ),
    "qwen2-gptq8-sym": ("qwen2", {"quant": {"bits": 8, "group_size": 64, "sym": True}}, KERNEL_SHAPE),
    "mistral-window-float": ("mistral", {}, {**KERNEL_SHAPE, "sliding_window": 24}),
    "qwen2-gptq4-default-shape": ("qwen2", {"quant": {"bits": 4, "group_size": 32}}, {}),
}
NUM_TOKENS = 32


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(scope="module")
def kernels():
    from engine import ops
    from engine.ops import cuda

    assert cuda.ensure_loaded(), f"kernels failed to build: {cuda.load_error()}"
    return ops.backend_report()


@pytest.mark.parametrize("seq_len", [20, 70], ids=["gemv-path", "gemm-path"])  # 2 x 20 rows: tensor-core GEMV
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_cuda_logits_match_the_cpu_reference(tmp_path, kernels, case, seq_len):
    family, kwargs, overrides = case
    folder = make_tiny_checkpoint(tmp_path, family, **kwargs, **overrides)
    ref_model = engine.load_model(folder, device="cpu", dtype=torch.float32)
    ids = torch.randint(
        0, ref_model.config.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(1)
    )
    ref = ref_model(ids)
    out = engine.load_model(folder, device="cuda", dtype=torch.float16)(ids.cuda())
    assert rel_err(out.cpu(), ref) <= 1e-2


@pytest.mark.parametrize("head_bits, embed_bits", [(8, 8), (4, 8), (8, 4)])
@pytest.mark.parametrize("tie", [False, True])
def test_cuda_quantized_head_and_embedding_match_the_cpu_reference(
    tmp_path, kernels, tie, head_bits, embed_bits
):
    """The head through the quantized GEMV (4-bit: tensor cores; 8-bit: CUDA cores; many rows:
    dequantize + GEMM) and the quantized embedding lookup on the GPU, against the CPU reference
    computing with the same matrices (copied over, so both sides hold exactly the same codes and
    scales): each part at its own tolerance, then the whole model at the fp16 model tolerance."""
    folder = make_tiny_checkpoint(
        tmp_path, "qwen2", quant={"bits": 4, "group_size": 32}, tie=tie, **KERNEL_SHAPE
    )
    gpu_model = engine.load_model(
        folder, device="cuda", dtype=torch.float16, head_bits=head_bits, embed_bits=embed_bits
    )
    ref_model = engine.load_model(folder, device="cpu", dtype=torch.float32)
    ref_model.lm_head = copy.deepcopy(gpu_model.lm_head).to(device="cpu", dtype=torch.float32)
    ref_model.embed_tokens = copy.deepcopy(gpu_model.embed_tokens).to(device="cpu", dtype=torch.float32)
    gen = torch.Generator().manual_seed(head_bits + embed_bits)
    ids = torch.randint(0, ref_model.config.vocab_size, (3, 70), generator=gen)
    # the lookup: the same codes and scales, one fp16 rounding of each element
    assert rel_err(gpu_model.embed_tokens(ids.cuda()).cpu(), ref_model.embed_tokens(ids)) <= 1e-3
    for rows in (1, 20, 70):  # CUDA-core / tensor-core GEMV, dequantize + GEMM
        hidden = torch.randn((rows, KERNEL_SHAPE["hidden_size"]), generator=gen)
        logits = gpu_model.compute_logits(hidden.cuda().half()).cpu()
        assert rel_err(logits, ref_model.compute_logits(hidden.half().float())) <= 1e-2
    # Two fp16 decoder layers of a random model amplify rounding: 2e-2 here (the untied 8/4 case,
    # checked whole at 1e-2, measured 1.22e-2 on an H100 while its parts matched as above).
    assert rel_err(gpu_model(ids.cuda()).cpu(), ref_model(ids)) <= 2e-2


@pytest.mark.parametrize("prompt_len", [40, 12], ids=["eager-prefill", "graph-prefill"])  # <= 16: graphs
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_engine_greedy_tokens_match_the_reference(tmp_path, kernels, case, prompt_len):
    """Greedy decoding on the GPU picks, at each of the first 32 steps, the token the float32 CPU
    model (with the engine's quantized head and embedding) ranks first given the same history.
    Where the CPU model's top two logits are closer than fp16 noise (a near tie in a random model; fp16 activations move these logits by up to ~3%)
    either token is a faithful pick; such steps are counted and may be at most a few."""
    family, kwargs, overrides = case
    folder = make_tiny_checkpoint(tmp_path, family, **kwargs, **overrides)
    ref = engine.load_model(folder, device="cpu", dtype=torch.float32)
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, ref.config.vocab_size, (prompt_len,), generator=gen).tolist()
    with engine.Engine(folder, device="cuda", dtype=torch.float16, cache_tokens=2048) as eng:
        assert (eng.model.lm_head.bits, eng.model.embed_tokens.bits) == default_vocab_bits(
            torch.device("cuda")
        )
        result = eng.generate(prompt, max_new_tokens=NUM_TOKENS, temperature=0.0, ignore_eos=True)
        # The reference computes with the very codes the engine quantized (from fp16 weights; the
        # CPU's own quantization of the fp32 weights may pick another 4-bit range for some groups).
        ref.lm_head = copy.deepcopy(eng.model.lm_head).to(device="cpu", dtype=torch.float32)
        ref.embed_tokens = copy.deepcopy(eng.model.embed_tokens).to(device="cpu", dtype=torch.float32)
    tokens = result.token_ids
    assert len(tokens) == NUM_TOKENS, result
    logits = ref(torch.tensor([prompt + tokens]))[
        0, len(prompt) - 1 : -1
    ]  # (32, V): what predicts each token
    top2 = logits.topk(2, dim=-1).values
    chosen = logits.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)
    ties = 0
    for step in range(NUM_TOKENS):
        best, second = top2[step].tolist()
        if chosen[step] == best:
            continue
        tolerance = 5e-2 * max(1.0, abs(best))
        assert best - chosen[step].item() <= tolerance, (
            f"step {step}: GPU picked a token {best - chosen[step]:.4f} below the best"
        )
        assert best - second <= tolerance
        ties += 1
    assert ties <= 3, f"{ties} near-tie steps"


def decode_step_inputs(tmp_path, rows: int, block: int = 4):
    """(model, cache, ids, positions, metadata): the fp16 act-order tiny model on the GPU, `rows`
    sequences of a 9-token prompt in its cache, and a decode step of one new token each."""
    import dataclasses

    from engine.models.base import dense_attention_metadata

    family, kwargs, overrides = CASES["llama-gptq4-act-order"]
    model = engine.load_model(make_tiny_checkpoint(tmp_path, family, **kwargs, **overrides), device="cuda")
    gen = torch.Generator().manual_seed(rows)
    prompt_len = 9
    cache = model.allocate_kv_cache(num_blocks=rows * 4, block_size=block)
    prompt = torch.randint(0, model.config.vocab_size, (rows * prompt_len,), generator=gen).cuda()
    positions = torch.arange(prompt_len, device="cuda").repeat(rows)
    model.forward_paged(
        prompt, positions, dense_attention_metadata(rows, prompt_len, block, cache.device), cache
    )
    dense = dense_attention_metadata(rows, prompt_len + 1, block, cache.device)
    step = dataclasses.replace(
        dense,
        query_start_loc=torch.arange(rows + 1, dtype=torch.int32, device="cuda"),
        slot_mapping=dense.slot_mapping.view(rows, -1)[:, -1].contiguous(),
        max_query_len=1,
    )
    ids = torch.randint(0, model.config.vocab_size, (rows,), generator=gen).cuda()
    pos = torch.full((rows,), prompt_len, device="cuda")
    return model, cache, ids, pos, step


@pytest.mark.parametrize("rows", [1, 3])
def test_decode_graph_with_the_head_equals_the_eager_step(tmp_path, kernels, rows):
    """engine/cuda_graph.py with the head inside a decode graph (what the engine and bench_gpu
    replay): the same logits, bit for bit, as the eager forward and head; a short prefill's graph
    still returns hidden states. The same rows loaded from host lists (load_rows, the engine's path)
    give the same bits."""
    from engine.cuda_graph import DecodeGraphs, token_level_metadata

    model, cache, ids, pos, step = decode_step_inputs(tmp_path, rows)
    block = step.block_size
    eager = model.compute_logits(model.forward_paged(ids, pos, step, cache.clone()))
    graphs = DecodeGraphs(
        lambda i, p, a: model.forward_paged(i, p, a, cache),
        device=cache.device,
        block_size=block,
        max_seq_len=64,
        head=model.compute_logits,
    )
    assert graphs.returns_logits(step)
    assert torch.equal(graphs.run(ids, pos, step), eager)
    assert not graphs.returns_logits(token_level_metadata(step, rows))
    hidden = graphs.run(ids, pos, token_level_metadata(step, rows)).clone()
    # The engine's path: the same rows from host lists in one copy (load_rows), then replay.
    host_rows = (ids.tolist(), pos.tolist(), step.slot_mapping.tolist(), step.seq_lens.tolist())
    tables = step.block_tables.tolist()
    extra = graphs.load_rows(*host_rows, tables, extra=[7, -8, 9])
    assert extra.tolist() == [7, -8, 9]
    assert torch.equal(graphs.replay(rows, prompt_tokens=False), eager)
    graphs.load_rows(*host_rows, tables)
    assert torch.equal(graphs.replay(rows, prompt_tokens=True), hidden)
    assert graphs.last_mark is None
    # A graph that records its progress event after layer 0 (the engine's graphs do, for the step
    # ahead) computes the same bits, and the event is recorded on replay.
    marked = DecodeGraphs(
        lambda i, p, a, mark=None: model.forward_paged(i, p, a, cache, mark),
        device=cache.device,
        block_size=block,
        max_seq_len=64,
        head=model.compute_logits,
        mark_layer=0,
    )
    marked.load_rows(*host_rows, tables)
    assert torch.equal(marked.replay(rows, prompt_tokens=False), eager)
    marked.last_mark.synchronize()
    assert marked.last_mark.query()


def test_the_norm_triggering_at_entry_computes_the_same_bits(tmp_path, kernels):
    """The RMSNorm lets the next GEMV launch at its entry (launch.cuh), so three grids overlap in a
    decode graph: the logits equal, bit for bit, those of a graph whose norms trigger after their
    wait and those of the eager step with programmatic dependent launch off (kernels one after the
    other)."""
    from engine import ops
    from engine.cuda_graph import DecodeGraphs

    model, cache, ids, pos, step = decode_step_inputs(tmp_path, rows=2)
    torch.ops.exlsp.set_launch_pdl(0)
    try:
        serial = model.compute_logits(model.forward_paged(ids, pos, step, cache.clone()))
    finally:
        torch.ops.exlsp.set_launch_pdl(-1)
    for at_entry in (True, False):
        torch.ops.exlsp.set_norm_trigger_at_entry(at_entry)
        try:
            graphs = DecodeGraphs(
                lambda i, p, a: model.forward_paged(i, p, a, cache),
                device=cache.device,
                block_size=step.block_size,
                max_seq_len=64,
                head=model.compute_logits,
            )
            assert torch.equal(graphs.run(ids, pos, step), serial), at_entry
        finally:
            torch.ops.exlsp.set_norm_trigger_at_entry(True)
    assert ops.backend_report()["rms_norm"] == "cuda"


def pipeline_with_requests(tmp_path, run_ahead: bool):
    """engine/step_pipeline.py over an fp16 act-order model through the decode graphs, with greedy,
    sampled and seeded requests added before the first step (the same batches in every run)."""
    import dataclasses

    from engine.block_manager import BlockManager
    from engine.model_runner import ModelRunner
    from engine.request import SamplingParams
    from engine.scheduler import Scheduler
    from engine.sequence import Sequence
    from engine.step_pipeline import StepPipeline

    family, kwargs, overrides = CASES["llama-gptq4-act-order"]
    folder = make_tiny_checkpoint(tmp_path, family, **kwargs, **overrides)
    model = engine.load_model(folder, device="cuda", dtype=torch.float16)
    runner = ModelRunner(model, num_cache_blocks=64, block_size=16)
    block_manager = BlockManager(64, 16)
    scheduler = Scheduler(block_manager)
    greedy = SamplingParams(max_new_tokens=30, ignore_eos=True)
    sampled = SamplingParams(
        max_new_tokens=40, ignore_eos=True, temperature=0.8, top_k=20, top_p=0.9, min_p=0.05
    )
    seqs = [
        Sequence(i, list(range(3, 23 + i)), params, arrival_time_s=0.0)
        for i, params in enumerate((greedy, sampled, dataclasses.replace(sampled, seed=3)))
    ]
    for seq in seqs:
        scheduler.add(seq)
    return StepPipeline(scheduler, runner, block_manager, run_ahead=run_ahead), runner, seqs


def test_queuing_a_step_never_waits_for_the_device(tmp_path, kernels):
    """The engine's step ahead must not wait for the step running: a copy from pageable memory or a
    read of a device value inside launch() would (torch's sync debug mode makes either an error)."""
    pipeline, runner, _ = pipeline_with_requests(tmp_path, run_ahead=True)
    for _ in range(4):  # the prefill, the decode graph's capture
        pipeline.start()
        pipeline.finish(may_run_ahead=True)
    graphs = runner._decode_graphs()
    assert graphs is not None and graphs.disabled_reason is None and graphs.last_mark is not None
    real_launch = runner.launch

    def launch(*args):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real_launch(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    runner.launch = launch
    ahead_before = pipeline.steps_ahead
    for _ in range(10):
        pipeline.start()
        pipeline.finish(may_run_ahead=True)
    assert pipeline.steps_ahead - ahead_before == 10


def test_the_step_ahead_gives_the_synchronous_tokens_bit_for_bit(tmp_path, kernels):
    """The same batches through the decode graphs, waiting for each step or queuing the next one
    ahead: the same tokens, the seeded row's included (greedy and seeded: the others draw from the
    global generator, which the discarded steps also advance)."""
    outputs = {}
    for ahead in (False, True):
        pipeline, _, seqs = pipeline_with_requests(tmp_path / str(ahead), run_ahead=ahead)
        while pipeline.has_work():
            pipeline.start()
            pipeline.finish(may_run_ahead=True)
        outputs[ahead] = [seqs[0].output_token_ids, seqs[2].output_token_ids]
        assert [len(s.output_token_ids) for s in seqs] == [30, 40, 40]
        assert (pipeline.steps_ahead >= 30) == ahead
    assert outputs[True] == outputs[False]

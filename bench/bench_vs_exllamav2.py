"""exlsp against ExLlamaV2 on one GPTQ checkpoint, in one run: batch-1 decode tokens/s after a context
of 32, 2k and 8k tokens.

    python bench/bench_vs_exllamav2.py [--folder DIR] [--model llama3-8b] [--contexts 32,2048,8192]
        [--engines exllamav2,exlsp]

Unless --folder holds a checkpoint, writes a random-weight 4-bit g128 GPTQ checkpoint at the model's
real shapes (there, or into a temporary folder; the "gptq" format of engine/quant/gptq_writer.py,
which both engines load; speed does not depend on weight values). Then each engine loads that
folder in turn:
  - ExLlamaV2 (the exllamav2 package, which builds its kernels on first import): model.forward on one
    token per step with its cache, the next token taken on the host as its generators do, after a
    prefill of the context;
  - exlsp: the served step (a CUDA graph per step, bench_gpu.py time_decode) with the head and
    embedding bits it serves on a GPU (an 8-bit head), and again with the checkpoint's fp16 head as
    ExLlamaV2 runs it; steps queued back to back, and with the token read on the host each step.
Prints one line per engine; --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_shapes import MODELS, kernels_ready  # noqa: E402
from bench.gpu_timing import median_ms  # noqa: E402

GROUP_SIZE = 128
LINEARS = {  # checkpoint name -> (in features, out features) by the config's sizes
    "self_attn.q_proj": ("hidden", "q"),
    "self_attn.k_proj": ("hidden", "kv"),
    "self_attn.v_proj": ("hidden", "kv"),
    "self_attn.o_proj": ("q", "hidden"),
    "mlp.gate_proj": ("hidden", "mlp"),
    "mlp.up_proj": ("hidden", "mlp"),
    "mlp.down_proj": ("mlp", "hidden"),
}


def random_gptq_tensors(config: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every tensor of a 4-bit g128 GPTQ checkpoint ("gptq" v1: stored zeros are zero - 1) of the
    config's shapes: random codes, scales ~0.004 and mid-range zeros (weights of std ~0.02, as
    bench/gpu_shapes.py random_packed), fp16 embedding, norms, head and Qwen2's q/k/v biases; drawn
    on gen's device, kept on the CPU."""
    dev = gen.device
    with_qkv_bias = config["model_type"] == "qwen2"  # Qwen2's q, k and v always have one
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    sizes = {
        "hidden": config["hidden_size"],
        "q": config["num_attention_heads"] * head_dim,
        "kv": config["num_key_value_heads"] * head_dim,
        "mlp": config["intermediate_size"],
    }

    def normal(*shape: int, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(shape, device=dev, generator=gen) * std + mean).half().cpu()

    vocab, hidden = config["vocab_size"], sizes["hidden"]
    tensors = {
        "model.embed_tokens.weight": normal(vocab, hidden),
        "model.norm.weight": normal(hidden, std=0.05, mean=1.0),
    }
    if not config.get("tie_word_embeddings"):
        tensors["lm_head.weight"] = normal(vocab, hidden)
    stored_zeros = sum(7 << (4 * i) for i in range(8))  # zero 8 in every nibble, stored as 7
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        tensors[prefix + "input_layernorm.weight"] = normal(hidden, std=0.05, mean=1.0)
        tensors[prefix + "post_attention_layernorm.weight"] = normal(hidden, std=0.05, mean=1.0)
        for name, (k_of, n_of) in LINEARS.items():
            k, n = sizes[k_of], sizes[n_of]
            groups = k // GROUP_SIZE
            tensors[prefix + name + ".qweight"] = torch.randint(
                -(2**31), 2**31 - 1, (k // 8, n), dtype=torch.int32, device=dev, generator=gen
            ).cpu()
            tensors[prefix + name + ".qzeros"] = torch.full((groups, n // 8), stored_zeros, dtype=torch.int32)
            tensors[prefix + name + ".scales"] = (
                (torch.rand((groups, n), device=dev, generator=gen) * 0.004 + 0.002).half().cpu()
            )
            tensors[prefix + name + ".g_idx"] = torch.arange(k, dtype=torch.int32) // GROUP_SIZE
            if with_qkv_bias and name.endswith(("q_proj", "k_proj", "v_proj")):
                tensors[prefix + name + ".bias"] = normal(n)
    return tensors


def write_random_checkpoint(folder: Path, shapes: dict, gen: torch.Generator) -> None:
    """config.json and model.safetensors of random_gptq_tensors for the config fields `shapes`."""
    from engine.quant.gptq_writer import write_checkpoint

    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[shapes["model_type"]]
    config = dict(
        shapes,
        architectures=[arch],
        torch_dtype="float16",
        bos_token_id=0,
        eos_token_id=1,
        quantization_config={
            "bits": 4,
            "group_size": GROUP_SIZE,
            "desc_act": False,
            "sym": False,
            "checkpoint_format": "gptq",
            "quant_method": "gptq",
        },
    )
    write_checkpoint(folder, random_gptq_tensors(config, gen), config)


def exllamav2_tok_s(folder: Path, contexts: list[int], steps: int = 64, rounds: int = 5) -> dict[int, float]:
    """ExLlamaV2's decode: one forward of one token per step, its logits' argmax read on the host
    (as its generators sample there), after its own prefill of each context; median of rounds."""
    from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config

    config = ExLlamaV2Config(str(folder))
    config.max_seq_len = max(contexts) + steps + 16
    model = ExLlamaV2(config)
    cache = ExLlamaV2Cache(model, max_seq_len=config.max_seq_len, lazy=True)
    model.load_autosplit(cache)
    out = {}
    for ctx in contexts:
        ids = torch.randint(0, config.vocab_size, (1, ctx), dtype=torch.long)
        cache.current_seq_len = 0
        model.forward(ids[:, :-1], cache, preprocess_only=True)

        def decode_steps(ctx: int = ctx, ids: torch.Tensor = ids) -> None:
            cache.current_seq_len = ctx - 1
            token = ids[:, -1:]
            for _ in range(steps):
                logits = model.forward(token, cache)
                token = logits[:, -1].argmax(-1, keepdim=True).cpu()

        out[ctx] = 1e3 * steps / median_ms(decode_steps, warmup=1, iters=rounds)
    model.unload()
    return out  # the cache's memory goes with this frame


def exlsp_tok_s(
    folder: Path, contexts: list[int], head_bits: int, embed_bits: int
) -> dict[str, dict[int, float]]:
    """exlsp's served step on the loaded checkpoint: steps queued back to back, and with the token
    read on the host each step."""
    from bench.bench_gpu import time_decode
    from bench.engine_step import ServedStep, random_kv_cache
    from engine.loader import load_model

    model = load_model(folder, "cuda", torch.float16, head_bits=head_bits, embed_bits=embed_bits)
    served = ServedStep(model, random_kv_cache(model))
    times = {ctx: time_decode(served, ctx) for ctx in contexts}
    del served, model
    torch.cuda.empty_cache()
    return {
        "queued": {ctx: 1e3 / t[0] for ctx, t in times.items()},
        "synced": {ctx: 1e3 / t[1] for ctx, t in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--folder", help="a GPTQ checkpoint folder; a random one is written there first if it has none"
    )
    parser.add_argument(
        "--model", default="llama3-8b", choices=sorted(MODELS), help="shapes of the random one"
    )
    parser.add_argument("--contexts", default="32,2048,8192")
    parser.add_argument("--engines", default="exllamav2,exlsp", help="which to time, in this order")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    if not kernels_ready("bench_vs_exllamav2"):
        return 1
    if "exllamav2" in engines:
        try:
            import exllamav2  # noqa: F401  (builds its kernels on first import)
        except ImportError as e:
            print(
                f"bench_vs_exllamav2: exllamav2 is not importable ({e}); pip install exllamav2",
                file=sys.stderr,
            )
            return 1
    from engine.loader import default_vocab_bits

    torch.set_grad_enabled(False)
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="exlsp-vs-exl2-") as tmp:
        folder = Path(args.folder or tmp)
        if not (folder / "config.json").exists():
            t0 = time.perf_counter()
            folder.mkdir(parents=True, exist_ok=True)
            write_random_checkpoint(folder, MODELS[args.model], torch.Generator(device="cuda").manual_seed(0))
            print(
                f"random {args.model} GPTQ checkpoint written in {time.perf_counter() - t0:.0f} s", flush=True
            )
        for name in engines:
            if name == "exllamav2":
                rows["exllamav2"] = exllamav2_tok_s(folder, contexts)
                torch.cuda.empty_cache()
                continue
            head_bits, embed_bits = default_vocab_bits(torch.device("cuda"))
            for label, bits in (
                (f"exlsp {head_bits}-bit head", (head_bits, embed_bits)),
                ("exlsp fp16 head", (16, 16)),
            ):
                for mode, tok_s in exlsp_tok_s(folder, contexts, *bits).items():
                    rows[f"{label}, {mode}"] = tok_s
    print(
        f"{torch.cuda.get_device_name()}  {args.model}  batch-1 decode tok/s at context "
        + " / ".join(map(str, contexts))
    )
    for label, tok_s in rows.items():
        print(f"  {label:32} " + " / ".join(f"{tok_s[c]:7.1f}" for c in contexts), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"card": torch.cuda.get_device_name(), "tok_s": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

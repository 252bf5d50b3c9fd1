"""The sequential driver (engine/quant/quantize_model.py) and the GPTQ checkpoint it writes."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import engine.quant.quantize_checkpoint as qc
import engine.quant.quantize_model as qm
from engine.loader import load_model
from engine.quant.calibration import CalibrationConfig, CalibrationError
from engine.quant.gptq import Hessian, float_target_weight
from engine.quant.gptq_writer import DestinationExists
from engine.quant.rtn import QuantSpec
from tests.tiny_models import CORPUS, gptq_unpack, make_tiny_checkpoint

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def load_float(src: Path, device: torch.device) -> torch.nn.Module:
    return load_model(src, device=device, dtype=torch.float32)


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("float") / "qwen2", "qwen2", seed=3)


@pytest.fixture(scope="module")
def calib_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("calib")
    files = []
    for i in range(4):  # ~4 x 3 kB of code: enough for 8 samples of 64 tokens
        path = folder / f"sample{i}.py"
        path.write_text(CORPUS)
        files.append(path)
    return files


CALIB = CalibrationConfig(num_samples=8, seq_len_tokens=64)


def quantize(src: Path, dst: Path, spec: QuantSpec, calib_files, **kw) -> Path:
    return qc.quantize_checkpoint(
        src, dst, spec, calib_files=calib_files, calib=CALIB, batch_size=4, device="cpu",
        **{"load_float_model": load_float, **kw},
    )  # fmt: skip


@pytest.mark.parametrize(
    "spec",
    [QuantSpec(bits=4, group_size=32, act_order=True, sym=False), QuantSpec(bits=8, group_size=-1)],
    ids=str,
)
def test_checkpoint_has_gptq_tensors_that_unpack_to_the_weights_the_model_computed_with(
    float_ckpt, calib_files, tmp_path, spec, monkeypatch
) -> None:
    seen = {}
    real = qm.quantize_layers

    def spy(model, *args, **kwargs):
        results = real(model, *args, **kwargs)
        seen.update({name: q.dequantize() for name, q in results.items()})
        return results

    monkeypatch.setattr(qc, "quantize_layers", spy)  # as quantize_checkpoint calls it
    dst = quantize(float_ckpt, tmp_path / "q", spec, calib_files)
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization_config"] == {
        "bits": spec.bits, "group_size": spec.group_size, "desc_act": spec.act_order, "sym": spec.sym,
        "damp_percent": 0.01, "true_sequential": True, "checkpoint_format": "gptq", "quant_method": "gptq",
    }  # fmt: skip
    assert config["torch_dtype"] == "float16"
    tensors = load_file(str(dst / "model.safetensors"))
    float_tensors = load_file(str(float_ckpt / "model.safetensors"))
    assert len(seen) == 2 * len(LINEARS)
    for layer in range(2):
        for linear in LINEARS:
            prefix = f"model.layers.{layer}.{'mlp' if linear in MLP else 'self_attn'}.{linear}"
            assert f"{prefix}.weight" not in tensors
            parts = {k: tensors[f"{prefix}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")}
            assert parts["qweight"].dtype == torch.int32 and parts["scales"].dtype == torch.float16
            # Unpacked by the tests' own independent GPTQ reader: bit for bit the driver's weights.
            assert torch.equal(gptq_unpack(parts, spec.bits, "gptq"), seen[prefix])
    # Biases of q/k/v stay, in fp16; norms and embeddings are copied in fp16.
    assert torch.equal(
        tensors["model.layers.0.self_attn.q_proj.bias"],
        float_tensors["model.layers.0.self_attn.q_proj.bias"].half(),
    )
    assert torch.equal(tensors["model.norm.weight"], float_tensors["model.norm.weight"].half())
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (dst / name).read_bytes() == (float_ckpt / name).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no staging folder left behind


def test_each_stage_is_calibrated_on_inputs_from_the_already_quantized_model(
    float_ckpt, calib_files, monkeypatch
):
    # Record the Hessian each linear was quantized with...
    used: dict[int, torch.Tensor] = {}
    real = qm.gptq_quantize

    def spy(weight, hessian, spec):
        used[weight.data_ptr()] = hessian.clone()
        return real(weight, hessian, spec)

    monkeypatch.setattr(qm, "gptq_quantize", spy)
    model = load_float(float_ckpt, torch.device("cpu"))
    float_model = load_float(float_ckpt, torch.device("cpu"))
    layers = qm.decoder_layers(model)
    order = []
    for layer_index, layer in enumerate(layers):
        for stage in qm.STAGES:
            order.append((layer_index, stage.module, layer.get_submodule(stage.module).weight.data_ptr()))
    batches = qc.calibration_batches(float_ckpt, calib_files, CALIB, 4, torch.device("cpu"))
    qm.quantize_layers(model, batches, QuantSpec(bits=4, group_size=32))

    # ...and compare with the inputs each linear sees in the finished quantized model: a linear's
    # input does not depend on itself or anything after it, so they must be the same.
    def hessians_of(m):
        found, handles = {}, []
        for layer_index, layer in enumerate(qm.decoder_layers(m)):
            for stage in qm.STAGES:
                module = layer.get_submodule(stage.module)
                h = found[(layer_index, stage.module)] = Hessian(module.weight.shape[1])
                handles.append(module.register_forward_pre_hook(lambda _m, a, h=h: h.add(a[0])))
        with torch.no_grad():
            for batch in batches:
                m(batch)
        for handle in handles:
            handle.remove()
        return found

    final, floats = hessians_of(model), hessians_of(float_model)
    for layer_index, first, weight_ptr in order:
        torch.testing.assert_close(used[weight_ptr], final[(layer_index, first)].matrix, rtol=1e-4, atol=1e-5)
    # The first input of all is the embedding, the same in both; every later one differs from float.
    qkv = (0, "self_attn.qkv_proj")
    torch.testing.assert_close(final[qkv].matrix, floats[qkv].matrix)
    for key in [(0, "self_attn.o_proj"), (0, "mlp.gate_up_proj"), (1, "self_attn.qkv_proj")]:
        assert not torch.allclose(final[key].matrix, floats[key].matrix, rtol=1e-4, atol=1e-5), key


def test_rtn_needs_no_calibration_and_matches_rtn_of_each_weight(float_ckpt, tmp_path) -> None:
    from engine.quant.rtn import rtn_quantize

    spec = QuantSpec(bits=4, group_size=32)
    dst = qc.quantize_checkpoint(
        float_ckpt, tmp_path / "rtn", spec, method="rtn", load_float_model=load_float
    )
    tensors = load_file(str(dst / "model.safetensors"))
    weight = load_file(str(float_ckpt / "model.safetensors"))["model.layers.1.mlp.down_proj.weight"]
    parts = {
        k: tensors[f"model.layers.1.mlp.down_proj.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")
    }
    assert torch.equal(gptq_unpack(parts, 4, "gptq"), rtn_quantize(weight, spec).dequantize())


def test_an_existing_destination_is_refused_before_any_work_unless_forced(float_ckpt, calib_files, tmp_path):
    dst = tmp_path / "q"
    dst.mkdir()
    (dst / "mine.txt").write_text("keep me")
    loads = []
    with pytest.raises(DestinationExists, match="already exists \\(use --force to replace it\\)"):
        quantize(
            float_ckpt,
            dst,
            QuantSpec(group_size=32),
            calib_files,
            load_float_model=lambda *a: loads.append(a),
        )
    assert loads == [] and (dst / "mine.txt").read_text() == "keep me"
    quantize(float_ckpt, dst, QuantSpec(group_size=32), calib_files, force=True)
    assert not (dst / "mine.txt").exists() and (dst / "model.safetensors").is_file()


def test_running_out_of_disk_leaves_nothing_that_loads(
    float_ckpt, calib_files, tmp_path, monkeypatch
) -> None:
    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("engine.quant.gptq_writer.save_file", full_disk)
    with pytest.raises(OSError, match="out of disk space while writing .*; nothing was written"):
        quantize(float_ckpt, tmp_path / "q", QuantSpec(group_size=32), calib_files)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_run_leaves_nothing_that_loads(float_ckpt, calib_files, tmp_path, monkeypatch) -> None:
    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("engine.quant.gptq_writer.save_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        quantize(float_ckpt, tmp_path / "q", QuantSpec(group_size=32), calib_files)
    assert list(tmp_path.iterdir()) == []


def test_too_little_calibration_text_is_a_clear_error(float_ckpt, tmp_path) -> None:
    short = tmp_path / "short.py"
    short.write_text("x = 1\n")
    empty = tmp_path / "empty.py"
    empty.write_text("")
    with pytest.raises(
        CalibrationError, match=r"calibration files hold \d+ tokens, fewer than the 512 needed"
    ):
        quantize(float_ckpt, tmp_path / "q", QuantSpec(group_size=32), [short, empty])
    with pytest.raises(CalibrationError, match="no calibration files"):
        quantize(float_ckpt, tmp_path / "q", QuantSpec(group_size=32), [])
    assert not (tmp_path / "q").exists()


def test_an_already_quantized_checkpoint_is_refused(tmp_path) -> None:
    src = make_tiny_checkpoint(tmp_path / "gptq", "llama", quant={"bits": 4, "group_size": 32})
    with pytest.raises(ValueError, match="is already quantized \\(gptq\\); quantize a float checkpoint"):
        qc.quantize_checkpoint(src, tmp_path / "q", QuantSpec(), method="rtn", load_float_model=load_float)


def test_next_layer_inputs_come_from_the_kept_down_proj_inputs_not_a_second_forward(
    float_ckpt, calib_files, monkeypatch
) -> None:
    model = load_float(float_ckpt, torch.device("cpu"))
    batches = qc.calibration_batches(float_ckpt, calib_files, CALIB, 2, torch.device("cpu"))  # 4 batches
    layer = qm.decoder_layers(model)[0]
    inputs = qm.capture_first_layer_args(model, batches)
    with torch.no_grad():
        last = qm._stage_pass(layer, qm.STAGES[-1].module, inputs, keep=True)
        expected = [layer(*item.args) for item in inputs]
        calls = []
        monkeypatch.setattr(layer, "forward", lambda *a, real=layer.forward: calls.append(1) or real(*a))
        outputs = qm._layer_outputs(layer, inputs, last)
    assert len(calls) == 1  # only the check on the first batch
    for out, (hidden, residual) in zip(outputs, expected, strict=True):
        torch.testing.assert_close(out.args[1], hidden, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.args[2], residual, rtol=0, atol=0)
    # Without kept inputs (or where they disagree with the layer) every batch runs whole.
    calls.clear()
    with torch.no_grad():
        qm._layer_outputs(layer, inputs, qm.StagePass(last.hessian, [], []))
    assert len(calls) == len(inputs)


@pytest.mark.parametrize("residual_target", [False, True])
def test_float_targets_pair_each_stages_quantized_inputs_with_the_float_models_inputs(
    float_ckpt, calib_files, monkeypatch, residual_target
) -> None:
    # Record the shift (engine/quant/gptq.py OutputShift) each linear was aimed with...
    used: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = float_target_weight

    def spy(weight, hessian, shift, damp_percent, alpha):
        used.append((weight.clone(), shift.clone()))
        return real(weight, hessian, shift, damp_percent, alpha)

    monkeypatch.setattr(qm, "float_target_weight", spy)
    model = load_float(float_ckpt, torch.device("cpu"))
    float_model = load_float(float_ckpt, torch.device("cpu"))
    batches = qc.calibration_batches(float_ckpt, calib_files, CALIB, 4, torch.device("cpu"))
    spec = QuantSpec(bits=4, group_size=32, float_target=1.0, residual_target=residual_target)
    qm.quantize_layers(model, batches, spec)

    # ...and rebuild it from the inputs each linear sees in the float model and in the finished
    # quantized model (a linear's input does not depend on itself or anything after it), and the
    # residual stream that o_proj's and down_proj's outputs join (the norms' residual outputs).
    def inputs_of(m):
        found, handles = {}, []
        for layer_index, layer in enumerate(qm.decoder_layers(m)):
            for stage in qm.STAGES:
                xs = found[(layer_index, stage.module)] = []
                module = layer.get_submodule(stage.module)
                handles.append(module.register_forward_pre_hook(lambda _m, a, xs=xs: xs.append(a[0])))
            for path, norm in qm.STREAM_NORMS.items():
                rs = found[(layer_index, path, "stream")] = []
                module = layer.get_submodule(norm)
                handles.append(module.register_forward_hook(lambda _m, _a, out, rs=rs: rs.append(out[1])))
        with torch.no_grad():
            for batch in batches:
                m(batch)
        for handle in handles:
            handle.remove()
        return {key: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double() for key, xs in found.items()}  # fmt: skip

    quantized, floats = inputs_of(model), inputs_of(float_model)
    stages = [key for key in quantized if len(key) == 2]  # in the order they were quantized
    assert len(used) == len(stages) == 2 * len(qm.STAGES)
    for (weight, shift), key in zip(used, stages, strict=True):
        layer_index, path = key
        float_weight = qm.decoder_layers(float_model)[layer_index].get_submodule(path).weight
        assert torch.equal(weight, float_weight)  # aimed from the float weight, not a quantized one
        x, x_float = quantized[key], floats[key]
        drift = float_weight.double() @ (x_float - x).t()  # (N, n)
        if residual_target and path in qm.STREAM_NORMS:
            stream = (layer_index, path, "stream")
            drift += (floats[stream] - quantized[stream]).t()
        expected = 2.0 / x.shape[0] * drift @ x
        torch.testing.assert_close(shift.double(), expected, rtol=1e-4, atol=1e-6)
    # Layer 0's q/k/v sees the embeddings in both models: nothing to aim for there; every later
    # linear has something (the shifts' largest entries are 0.008-0.04 in this model).
    assert torch.equal(used[0][1], torch.zeros_like(used[0][1]))
    assert all(float(shift.abs().max()) > 1e-3 for _, shift in used[1:])

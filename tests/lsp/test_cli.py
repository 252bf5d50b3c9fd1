"""`exlsp complete`, `exlsp doctor`, `exlsp chat` and `exlsp serve --tcp` on the tiny model."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lsp import harness

REPO_ROOT = Path(__file__).resolve().parents[2]


def exlsp(
    *args: str, home: Path, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "EXLSP_CONFIG_DIR": str(home / "config"),
        "EXLSP_DATA_DIR": str(home / "data"),
    }
    return subprocess.run(
        [sys.executable, "-m", "exlsp.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_complete_prints_what_the_server_pipeline_makes(code_model, tmp_path):
    from engine import Engine

    source = tmp_path / "mul.py"
    text = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    \n"
    source.write_text(text)
    done = exlsp("complete", f"{source}:6:5", "--model", str(code_model), home=tmp_path)
    assert done.returncode == 0, done.stderr
    offset = text.index("mul(a, b):\n    ") + len("mul(a, b):\n    ")
    with Engine(code_model) as engine:
        expected = harness.reference_suggestion(engine, text, offset, path="mul.py", repo_name="")
    assert done.stdout == expected + "\n"
    assert "loading model" in done.stderr


def test_complete_rejects_a_bad_location(tmp_path):
    done = exlsp("complete", "nowhere.py:0:1", home=tmp_path)
    assert done.returncode == 2
    assert "LINE and COL are 1-based" in done.stderr


def test_doctor_passes_on_a_working_model_and_fails_without_one(code_model, plain_model, tmp_path):
    done = exlsp("doctor", "--model", str(code_model), home=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    names = [line.split()[1] for line in done.stdout.splitlines()]
    assert names == ["python", "torch", "device", "kernels", "model", "attention", "fim"]
    assert all(line.startswith("PASS") for line in done.stdout.splitlines())
    assert "(head 16-bit, embedding 16-bit)" in done.stdout  # the CPU keeps both float
    assert "PASS  attention  reference ops on cpu (decode and prefill)" in done.stdout

    no_fim = exlsp("doctor", "--model", str(plain_model), home=tmp_path)
    assert no_fim.returncode == 1
    assert no_fim.stdout.splitlines()[-1].startswith("FAIL  fim")

    missing = exlsp("doctor", "--model", str(tmp_path / "missing"), home=tmp_path)
    assert missing.returncode == 1
    assert "FAIL  model" in missing.stdout


def test_chat_streams_an_answer_to_the_terminal(code_model, tmp_path):
    done = exlsp("chat", "--model", str(code_model), "--max-tokens", "6", home=tmp_path, stdin="hello\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n") and len(done.stdout) > 1


def test_help_reads_well():
    done = subprocess.run(
        [sys.executable, "-m", "exlsp.cli", "serve", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert "--tcp HOST:PORT" in done.stdout and "--model NAME|PATH" in done.stdout


@pytest.mark.asyncio
async def test_serve_over_tcp(code_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "EXLSP_CONFIG_DIR": str(tmp_path / "config")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exlsp.cli",
            "serve",
            "--model",
            str(code_model),
            "--tcp",
            f"127.0.0.1:{port}",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the server did not listen")
        body = b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}}'
        writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        length = int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        reply = await reader.readexactly(length)
        assert b'"inlineCompletionProvider"' in reply
        writer.close()
    finally:
        server.terminate()
        server.wait(10)


def test_serve_hands_head_and_embedding_bits_to_the_engine(monkeypatch):
    """`exlsp serve --head-bits 4 --embed-bits 8` reaches Engine(...) through the engine factory; left
    out, the Engine picks its per-device default (None)."""
    import exlsp.server
    from exlsp.cli import build_parser
    from exlsp.commands import serve

    made = []

    class Stop(Exception):
        pass

    def fake_build_server(factory, **_kwargs):
        made.append(factory.engine_kwargs)
        raise Stop

    monkeypatch.setattr(exlsp.server, "build_server", fake_build_server)
    for argv, expected in (
        (["serve", "--head-bits", "4", "--embed-bits", "8"], (4, 8)),
        (["serve"], (None, None)),
    ):
        with pytest.raises(Stop):
            serve.run(build_parser().parse_args(argv))
        assert (made[-1]["head_bits"], made[-1]["embed_bits"]) == expected
    with pytest.raises(SystemExit):  # argparse names the allowed values
        build_parser().parse_args(["serve", "--head-bits", "6"])

"""Extra context: the ring of recent chunks, and the files that must never reach the model."""

from __future__ import annotations

from exlsp.context import ContextRing
from exlsp.ignore import IgnoreRules
from exlsp.prompt import ContextChunk


def test_ring_keeps_aligned_chunks_newest_first():
    ring = ContextRing(max_chunks=2, chunk_lines=4)
    text = "\n".join(f"l{i}" for i in range(10))
    ring.touch("file:///a.py", "a.py", text, 5)  # lines 4-7
    ring.touch("file:///b.py", "b.py", "only line", 0)
    assert ring.select() == (ContextChunk("b.py", 0, "only line"), ContextChunk("a.py", 4, "l4\nl5\nl6\nl7"))
    # Touching the same window refreshes it instead of adding an overlapping chunk.
    ring.touch("file:///a.py", "a.py", text.replace("l6", "L6"), 6)
    assert ring.select()[0] == ContextChunk("a.py", 4, "l4\nl5\nL6\nl7")
    # The oldest falls out; the current document is never its own context.
    ring.touch("file:///c.py", "c.py", "c", 0)
    assert [c.path for c in ring.select()] == ["c.py", "a.py"]
    assert [c.path for c in ring.select(exclude_uri="file:///c.py")] == ["a.py"]
    ring.forget("file:///a.py")
    assert len(ring) == 1


def test_ignore_rules(tmp_path):
    (tmp_path / ".gitignore").write_text("build/\n*.log\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".gitignore").write_text("local_*.py\n")
    rules = IgnoreRules([tmp_path], max_file_bytes=100)
    assert rules.reason(tmp_path / "src" / "main.py", 10) is None
    assert rules.reason(tmp_path / "build" / "out.py", 10) == "matched by .gitignore"
    assert rules.reason(tmp_path / "debug.log", 10) == "matched by .gitignore"
    assert rules.reason(tmp_path / "sub" / "local_x.py", 10) == "matched by .gitignore"
    assert rules.reason(tmp_path / "local_x.py", 10) is None  # sub/.gitignore applies below sub/ only
    for secret in (
        ".env",
        ".env.production",
        "certs/server.pem",
        "server.key",
        "id_rsa",
        "id_rsa.pub",
        "credentials",
        "aws/credentials.json",
        ".ssh/config",
    ):
        assert rules.reason(tmp_path / secret, 10) == "looks like a secret", secret
    assert rules.reason(tmp_path / "big.py", 101) == "larger than 100 bytes"
    assert rules.reason(tmp_path.parent / "elsewhere.py", 10) == "outside the workspace folders"
    assert rules.relative(tmp_path / "src" / "main.py") == "src/main.py"

"""Reader for the golden post-processing cases in tests/unit/golden/<rule>/<case>.txt.

A case is a few sections, each introduced by a `--- name` line; `#` lines before the first section
describe the case. `document` holds the file with `<CURSOR>` where the cursor is, `raw` the model's
output, `expected` the suggestion (`<none>` when nothing must be shown). A section's text is its
lines joined by newlines, without the newline before the next marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GOLDEN_DIR = Path(__file__).parent / "golden"
CURSOR = "<CURSOR>"
NONE = "<none>"


@dataclass(frozen=True)
class GoldenCase:
    rule: str
    name: str
    description: str
    document: str
    raw: str
    expected: str | None


def read_case(path: Path) -> GoldenCase:
    sections: dict[str, list[str]] = {}
    description: list[str] = []
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("--- "):
            current = sections.setdefault(line[4:].strip(), [])
        elif current is None:
            description.append(line.lstrip("# "))
        else:
            current.append(line)
    # The file's final newline is not part of the last section.
    if current is not None and current and current[-1] == "":
        current.pop()
    text = {name: "\n".join(lines) for name, lines in sections.items()}
    assert set(text) == {"document", "raw", "expected"}, f"{path}: sections {sorted(text)}"
    assert text["document"].count(CURSOR) == 1, f"{path}: the document needs exactly one {CURSOR}"
    return GoldenCase(
        rule=path.parent.name,
        name=path.stem,
        description=" ".join(description).strip(),
        document=text["document"],
        raw=text["raw"],
        expected=None if text["expected"] == NONE else text["expected"],
    )


def all_cases() -> list[GoldenCase]:
    return [read_case(p) for p in sorted(GOLDEN_DIR.glob("*/*.txt"))]

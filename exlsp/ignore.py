"""Which files may be shown to the model as extra context.

Never: a file outside the workspace folders, matched by a .gitignore on its way down from the
workspace root, named like a secret (.env*, keys, credentials), or over the size cap. `reason`
returns why a file is excluded (None = allowed), so the status and tests can say why.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pathspec

MAX_FILE_BYTES = 512 * 1024

# gitignore syntax: a bare name matches at any depth.
SECRET_PATTERNS = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.keystore",
    "*.jks",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "credentials",
    "credentials.*",
    "*credentials*.json",
    "secrets.*",
    ".netrc",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    ".git-credentials",
    ".aws/",
    ".ssh/",
    ".gnupg/",
    ".git/",
)


class IgnoreRules:
    def __init__(self, roots: list[Path], max_file_bytes: int = MAX_FILE_BYTES):
        self.roots = [Path(os.path.abspath(r)) for r in roots]
        self.max_file_bytes = max_file_bytes
        self._secrets = pathspec.GitIgnoreSpec.from_lines(SECRET_PATTERNS)
        self._gitignores: dict[Path, tuple[float, pathspec.GitIgnoreSpec | None]] = {}

    def root_of(self, path: Path) -> Path | None:
        path = Path(os.path.abspath(path))
        for root in sorted(self.roots, key=lambda r: len(r.parts), reverse=True):
            if path == root or root in path.parents:
                return root
        return None

    def relative(self, path: Path) -> str | None:
        root = self.root_of(path)
        if root is None:
            return None
        return PurePosixPath(*Path(os.path.abspath(path)).relative_to(root).parts).as_posix()

    def _gitignore(self, directory: Path) -> pathspec.GitIgnoreSpec | None:
        file = directory / ".gitignore"
        try:
            mtime = file.stat().st_mtime
        except OSError:
            return None
        cached = self._gitignores.get(directory)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            spec = pathspec.GitIgnoreSpec.from_lines(
                file.read_text(encoding="utf-8", errors="replace").splitlines()
            )
        except OSError:
            spec = None
        self._gitignores[directory] = (mtime, spec)
        return spec

    def reason(self, path: Path, size_bytes: int | None = None) -> str | None:
        """Why `path` must not be used as context, or None when it may."""
        root = self.root_of(path)
        if root is None:
            return "outside the workspace folders"
        rel_parts = Path(os.path.abspath(path)).relative_to(root).parts
        rel = "/".join(rel_parts)
        if self._secrets.match_file(rel):
            return "looks like a secret"
        # Each .gitignore applies to paths below its own directory.
        directory = root
        for depth in range(len(rel_parts)):
            spec = self._gitignore(directory)
            if spec is not None and spec.match_file("/".join(rel_parts[depth:])):
                return "matched by .gitignore"
            directory = directory / rel_parts[depth]
        if size_bytes is None:
            try:
                size_bytes = os.stat(path).st_size
            except OSError:
                size_bytes = 0
        if size_bytes > self.max_file_bytes:
            return f"larger than {self.max_file_bytes} bytes"
        return None

    def allowed(self, path: Path, size_bytes: int | None = None) -> bool:
        return self.reason(path, size_bytes) is None

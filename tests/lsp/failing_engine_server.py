"""`exlsp serve` with one addition for the tests: a request `test/failNextSubmit` that makes the real
engine's next submit raise, to check that an engine failure mid-request never takes the server down.

    python tests/lsp/failing_engine_server.py --model PATH
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from exlsp.server import build_server, default_engine_factory  # noqa: E402


class FailingEngine:
    """The real engine, except that `submit` raises once after `fail_next` is set."""

    def __init__(self, engine):
        self._engine = engine
        self.fail_next = False

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def submit(self, prompt, params=None, **kwargs):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected engine failure")
        return self._engine.submit(prompt, params, **kwargs)


def main() -> None:
    model = sys.argv[sys.argv.index("--model") + 1]
    real = default_engine_factory(model)
    server = build_server(lambda settings: FailingEngine(real(settings)), config_dir=None)

    @server.feature("test/failNextSubmit")
    def fail_next(ls, params) -> bool:
        ls.bridge.engine.fail_next = True
        return True

    server.start_io()


if __name__ == "__main__":
    main()

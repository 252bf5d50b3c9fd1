"""The language server: state on a pygls `LanguageServer` subclass, thin handlers in exlsp/handlers/.

`build_server` wires everything; `exlsp serve` (exlsp/commands/serve.py) starts it on stdio or TCP.
Nothing here imports torch: the engine is built in a background thread after `initialized`
(exlsp/bridge.py), and until it is ready every request answers empty.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from exlsp.bridge import EngineBridge, EngineState
from exlsp.completion_cache import CompletionCache
from exlsp.context import ContextRing
from exlsp.debounce import Debouncer
from exlsp.documents import Documents
from exlsp.ignore import IgnoreRules
from exlsp.protocol import ExlspProtocol
from exlsp.settings import SECTION, Settings, merge_layers, parse_settings, read_config_file
from exlsp.status import Counters

log = logging.getLogger("exlsp")
VERSION = "0.1.0"

# settings -> engine; runs in the loading thread, so it may import torch.
EngineFactory = Callable[[Settings], Any]


def resolve_model_path(name_or_path: str | None) -> Path:
    """--model / settings.model -> checkpoint folder, through the model store when it exists."""
    try:
        from exlsp import store
    except ImportError:
        store = None
    resolver = getattr(store, "resolve_model", None) if store is not None else None
    if resolver is not None:
        return Path(resolver(name_or_path))
    if name_or_path is None:
        raise FileNotFoundError("no model configured: pass --model PATH or set 'model' in the settings")
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {name_or_path}")
    return path


class DefaultEngineFactory:
    """settings -> Engine for the model named on the command line or in the settings."""

    def __init__(
        self, model_override: str | None = None, device_override: str | None = None, **engine_kwargs: Any
    ):
        self.model_override = model_override  # --model on the command line wins over the settings
        self.device_override = device_override  # likewise --device
        self.engine_kwargs = engine_kwargs
        self.model_path: Path | None = None  # what the last build resolved the model to

    def __call__(self, settings: Settings) -> Any:
        self.model_path = resolve_model_path(self.model_override or settings.model)
        from engine import Engine  # first torch import of the process

        device = self.device_override or settings.device
        return Engine(self.model_path, device=device, **self.engine_kwargs)


def default_engine_factory(
    model_override: str | None = None, device_override: str | None = None, **engine_kwargs: Any
) -> DefaultEngineFactory:
    return DefaultEngineFactory(model_override, device_override, **engine_kwargs)


def open_engine(model: str | None, device: str | None = None, **engine_kwargs: Any) -> Any:
    """Blocking engine construction for the command line (complete, chat, doctor)."""
    path = resolve_model_path(model)
    from engine import Engine

    return Engine(path, device=device, **engine_kwargs)


def open_engine_verbose(command: str, model: str | None, device: str | None) -> Any | None:
    """open_engine for an interactive command: says so on stderr while loading; None on failure."""
    import time

    started = time.perf_counter()
    print("exlsp: loading model…", file=sys.stderr, flush=True)
    try:
        engine = open_engine(model, device=device)
    except Exception as exc:
        print(f"exlsp {command}: cannot load the model: {exc}", file=sys.stderr)
        return None
    print(f"exlsp: model loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    return engine


class ExlspServer(LanguageServer):
    def __init__(
        self, engine_factory: EngineFactory, config_dir: Path | None = None, answers_dir: Path | None = None
    ):
        super().__init__(
            "exlsp",
            VERSION,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=ExlspProtocol,
        )
        self.engine_factory = engine_factory
        self.config_dir = config_dir
        self.answers_dir = answers_dir
        self.documents = Documents()
        self.ring = ContextRing()
        self.cache = CompletionCache()
        self.debouncer = Debouncer()
        self.counters = Counters()
        self.bridge = EngineBridge(self._make_engine)
        self.ignore = IgnoreRules([])
        self.settings = Settings()
        self.layers: dict[str, dict] = {"file": {}, "init": {}, "client": {}}
        self.reported_problems: set[str] = set()
        self.prompt_builder: Any = None  # exlsp.prompt.PromptBuilder once the tokenizer is there
        self.fim_message: str | None = None
        self.inflight: dict[str, Any] = {}  # uri -> engine handle of its newest completion
        self.answers: dict[str, str] = {}  # answer document uri -> text (prose code-action results)
        self.background: set[asyncio.Task] = set()
        self.client_supports_inline = False
        self.last_prompt: dict | None = None  # shape of the newest completion prompt, for the status

    # -- settings ------------------------------------------------------------------------------

    def _make_engine(self) -> Any:
        return self.engine_factory(self.settings)

    def apply_settings(self) -> None:
        merged = merge_layers(self.layers["file"], self.layers["init"], self.layers["client"])
        settings, problems = parse_settings(merged)
        for problem in problems:
            self.report_problem(f"exlsp settings: {problem}")
        self.settings = settings

    def reload_config_file(self) -> None:
        raw, problems = read_config_file(self.config_dir)
        for problem in problems:
            self.report_problem(f"exlsp config file: {problem}")
        self.layers["file"] = raw
        self.apply_settings()

    def report_problem(self, message: str) -> None:
        """window/showMessage once per distinct problem; a log line every time."""
        log.warning(message)
        self.log(message, types.MessageType.Warning)
        if message not in self.reported_problems:
            self.reported_problems.add(message)
            self.window_show_message(types.ShowMessageParams(type=types.MessageType.Warning, message=message))

    def log(self, message: str, level: types.MessageType = types.MessageType.Info) -> None:
        try:
            self.window_log_message(types.LogMessageParams(type=level, message=message))
        except Exception:  # no transport yet (unit tests) or the client is gone
            log.info(message)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def report_server_error(self, error: Exception, source) -> None:
        """Errors outside a request (a malformed message, a failing notification handler): log them
        to the client and keep serving. Request errors already travel in their response."""
        from pygls.exceptions import FeatureRequestError

        if source is FeatureRequestError:
            return
        log.warning("%s: %s", getattr(source, "__name__", source), error)
        self.log(f"exlsp: ignored a bad message: {error}", types.MessageType.Warning)

    # -- workspace -----------------------------------------------------------------------------

    def set_workspace_roots(self, uris: list[str]) -> None:
        roots = [Path(p) for uri in uris if (p := to_fs_path(uri))]
        self.ignore = IgnoreRules(roots)

    def relative_path(self, uri: str) -> str:
        path = to_fs_path(uri) if uri.startswith("file:") else None
        if path is not None:
            rel = self.ignore.relative(Path(path))
            if rel is not None:
                return rel
            return Path(path).name
        return uri.rsplit("/", 1)[-1]

    def context_allowed(self, uri: str, size_bytes: int) -> bool:
        path = to_fs_path(uri) if uri.startswith("file:") else None
        return path is not None and self.ignore.allowed(Path(path), size_bytes)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict:
        engine_stats = self.bridge.stats()
        backend = None
        if "engine.ops" in sys.modules:
            report = getattr(sys.modules["engine.ops"], "backend_report", None)
            if report is not None:
                try:
                    backend = report()
                except Exception as exc:
                    backend = f"unknown ({exc})"
        engine = self.bridge.engine
        return {
            "state": self.bridge.state.value,
            "error": self.bridge.error,
            "model": str(getattr(self.engine_factory, "model_path", None) or self.settings.model or "")
            or None,
            "device": str(getattr(engine, "device", None) or self.settings.device or "") or None,
            "backend": backend,
            "fim": self.fim_message,
            "loadSeconds": self.bridge.load_seconds,
            "torchImported": "torch" in sys.modules,
            "engine": engine_stats,
            "completions": self.counters.snapshot(),
            "settings": {k: (dict(v) if k == "enable" else v) for k, v in asdict(self.settings).items()},
            "openDocuments": len(self.documents),
            "lastPrompt": self.last_prompt,
        }


def build_server(
    engine_factory: EngineFactory, config_dir: Path | None = None, answers_dir: Path | None = None
) -> ExlspServer:
    from exlsp.handlers import actions, completion, lifecycle, sync

    server = ExlspServer(engine_factory, config_dir=config_dir, answers_dir=answers_dir)
    for module in (lifecycle, sync, completion, actions):
        module.register(server)
    # exlsp.documents keeps the text (with UTF-16 positions clamped, lone surrogates replaced);
    # pygls's own copy would cost a second O(document) update per keystroke and raise on a change
    # to a document that was never opened.
    for method in (
        types.TEXT_DOCUMENT_DID_OPEN,
        types.TEXT_DOCUMENT_DID_CHANGE,
        types.TEXT_DOCUMENT_DID_CLOSE,
    ):
        server.protocol.fm.builtin_features.pop(method, None)
    return server


def engine_ready_message(server: ExlspServer) -> str:
    if server.bridge.state is EngineState.READY:
        return f"exlsp: model ready in {server.bridge.load_seconds:.1f}s"
    return f"exlsp: model failed to load: {server.bridge.error}"


__all__ = ["ExlspServer", "build_server", "default_engine_factory", "SECTION"]

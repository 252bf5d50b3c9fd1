"""initialize/initialized, settings (initializationOptions, didChangeConfiguration, configuration
pull, the hot-reloaded TOML file), engine loading with $/progress, exlsp/status, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from lsprotocol import types

from exlsp.bridge import EngineBridge, EngineState
from exlsp.handlers import plain
from exlsp.prompt import Budgets, PromptBuilder, fim_status
from exlsp.settings import CONFIG_FILE_NAME, SECTION

log = logging.getLogger("exlsp")
STATUS_METHOD = "exlsp/status"
LOAD_TOKEN = "exlsp/load-model"


def _supports_progress(ls) -> bool:
    window = ls.client_capabilities.window
    return bool(window and window.work_done_progress)


def _supports_configuration(ls) -> bool:
    workspace = ls.client_capabilities.workspace
    return bool(workspace and workspace.configuration)


async def pull_configuration(ls) -> None:
    if not _supports_configuration(ls):
        return
    try:
        values = await ls.workspace_configuration_async(
            types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
        )
    except Exception as exc:
        ls.log(f"exlsp: workspace/configuration failed: {exc}", types.MessageType.Warning)
        return
    value = plain(values[0]) if values else None
    ls.layers["client"] = value if isinstance(value, dict) else {}
    ls.apply_settings()


HEADER_SLACK_TOKENS = 64  # repo name, file path and FIM markers


def budgets(settings, max_context_tokens: int | None = None) -> Budgets:
    """The prompt budgets from the settings, scaled down to fit the model's context window."""
    b = Budgets(settings.prefix_tokens, settings.suffix_tokens, settings.extra_context_tokens)
    if max_context_tokens is None:
        return b
    room = max(16, max_context_tokens - settings.max_tokens - HEADER_SLACK_TOKENS)
    total = b.prefix_tokens + b.suffix_tokens + b.context_tokens
    if total <= room:
        return b
    return Budgets(
        max(8, b.prefix_tokens * room // total),
        b.suffix_tokens * room // total,
        b.context_tokens * room // total,
    )


def on_engine_done(ls, bridge: EngineBridge) -> None:
    if bridge.state is EngineState.READY:
        tokenizer = bridge.engine.tokenizer
        ls.prompt_builder = PromptBuilder(tokenizer, budgets(ls.settings))
        ls.fim_message = fim_status(ls.prompt_builder.template)
        ls.log(f"exlsp: model ready in {bridge.load_seconds:.1f}s; {ls.fim_message}")
        if ls.prompt_builder.template is None:
            ls.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Warning, message=f"exlsp: {ls.fim_message}")
            )
    else:
        message = f"exlsp: the model failed to load: {bridge.error}"
        log.error(message)
        ls.log(message, types.MessageType.Error)
        ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=message))


def _model_label(ls) -> str:
    return str(getattr(ls.engine_factory, "model_override", None) or ls.settings.model or "the default model")


async def load_engine(ls, token: str = LOAD_TOKEN) -> None:
    """Start the engine thread and show its loading as work-done progress."""
    progress = _supports_progress(ls)
    if progress:
        try:
            await ls.work_done_progress.create_async(token)
        except Exception:
            progress = False
    started = time.monotonic()
    if progress:
        ls.work_done_progress.begin(
            token,
            types.WorkDoneProgressBegin(
                title="exlsp: loading model", message=_model_label(ls), cancellable=False
            ),
        )
    ls.bridge.start(lambda bridge: on_engine_done(ls, bridge))
    if progress:
        ls.work_done_progress.report(
            token, types.WorkDoneProgressReport(message="importing torch, reading weights")
        )
    while not await ls.bridge.wait_ready(timeout_s=1.0) and ls.bridge.state is EngineState.LOADING:
        if progress:
            ls.work_done_progress.report(
                token, types.WorkDoneProgressReport(message=f"{time.monotonic() - started:.0f}s")
            )
    if progress:
        done = "ready" if ls.bridge.ready else "failed"
        ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=done))


_reloads = itertools.count(2)


def engine_settings_changed(ls, before) -> None:
    """A new model or device in the settings: build a new engine, then drop the old one."""
    after = ls.settings
    if (before.model, before.device) == (after.model, after.device):
        return
    if ls.bridge.state not in (EngineState.READY, EngineState.FAILED):
        return  # not started yet (it will read the new settings) or loading (next change reloads)
    if getattr(ls.engine_factory, "model_override", None) and before.device == after.device:
        return  # --model on the command line wins over the settings

    async def restart() -> None:
        old = ls.bridge
        ls.bridge = EngineBridge(ls._make_engine)
        ls.prompt_builder = None
        ls.log(
            f"exlsp: switching to model {after.model or '(default)'} on {after.device or 'the default device'}"
        )
        await asyncio.get_running_loop().run_in_executor(None, old.close)
        await load_engine(ls, f"{LOAD_TOKEN}/{next(_reloads)}")

    ls.spawn(restart())


async def watch_config_file(ls) -> None:
    """Reload the TOML settings whenever the file changes (watchfiles)."""
    if ls.config_dir is None:
        return
    from watchfiles import awatch

    try:
        ls.config_dir.mkdir(parents=True, exist_ok=True)
        async for changes in awatch(ls.config_dir, debounce=100, step=50, recursive=False):
            if any(path.endswith(CONFIG_FILE_NAME) for _, path in changes):
                before = ls.settings
                ls.reload_config_file()
                engine_settings_changed(ls, before)
                ls.log("exlsp: reloaded the settings file")
    except Exception as exc:  # watching is a convenience; never let it take the server down
        ls.log(f"exlsp: cannot watch the settings file: {exc}", types.MessageType.Warning)


def register(server) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(ls, params: types.InitializeParams) -> None:
        ls.layers["init"] = (
            params.initialization_options if isinstance(params.initialization_options, dict) else {}
        )
        folders = [f.uri for f in params.workspace_folders or []]
        if not folders and params.root_uri:
            folders = [params.root_uri]
        ls.set_workspace_roots(folders)
        text_caps = params.capabilities.text_document
        ls.client_supports_inline = bool(text_caps and text_caps.inline_completion is not None)
        ls.reload_config_file()

    @server.feature(types.INITIALIZED)
    async def initialized(ls, params: types.InitializedParams) -> None:
        await pull_configuration(ls)
        ls.spawn(watch_config_file(ls))
        ls.spawn(load_engine(ls))

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls, params: types.DidChangeConfigurationParams) -> None:
        before = ls.settings
        raw = plain(params.settings)
        if isinstance(raw, dict) and raw:
            ls.layers["client"] = raw.get(SECTION, raw) if isinstance(raw.get(SECTION), dict) else raw
            ls.apply_settings()
        else:  # the pull model: the notification only says "something changed"
            await pull_configuration(ls)
        engine_settings_changed(ls, before)
        ls.log("exlsp: settings changed")

    @server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
    def did_change_folders(ls, params: types.DidChangeWorkspaceFoldersParams) -> None:
        roots = {str(r) for r in ls.ignore.roots}
        from pygls.uris import from_fs_path

        uris = {from_fs_path(r) for r in roots}
        uris |= {f.uri for f in params.event.added}
        uris -= {f.uri for f in params.event.removed}
        ls.set_workspace_roots(sorted(u for u in uris if u))

    @server.feature(STATUS_METHOD)
    def status(ls, params) -> dict:
        return ls.status()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls, params) -> None:
        for task in list(ls.background):
            task.cancel()
        for handle in ls.inflight.values():
            handle.cancel()
        ls.bridge.close()

// Entry point: starts `exlsp serve` through vscode-languageclient (inline completions come from its
// built-in textDocument/inlineCompletion support), keeps the status bar current and registers the
// commands. Pure logic lives in settings.ts, serverCommand.ts, statusText.ts, protocol.ts.
import * as vscode from "vscode";
import {
  LanguageClient,
  LanguageClientOptions,
  Middleware,
  ServerOptions,
} from "vscode-languageclient/node";
import { Chat } from "./chat";
import { StatusPoller } from "./statusPoller";
import { activePythonPath, isFile, which } from "./python";
import { SelectionAction, classifyProgress } from "./protocol";
import { runSelectionAction } from "./selectionActions";
import { resolveServerCommand } from "./serverCommand";
import { RESTART_SETTING_KEYS, isEnabledFor, serverSettings } from "./settings";
import { StatusBar } from "./statusBar";

let client: LanguageClient | undefined;
let completionsOn = true;

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration("exlsp");
}

function currentSettings(): Record<string, unknown> {
  const section = config();
  return serverSettings((key) => section.get(key));
}

function middleware(statusBar: StatusBar, chat: Chat): Middleware {
  const progressTitles = new Map<string | number, string | undefined>();
  return {
    async provideInlineCompletionItems(document, position, context, token, next) {
      if (!completionsOn || !isEnabledFor(config().get("enable"), document.languageId)) {
        return null;
      }
      const started = Date.now();
      statusBar.update({ state: "busy" });
      try {
        const result = await next(document, position, context, token);
        if (!token.isCancellationRequested) {
          statusBar.update({ lastLatencyMs: Date.now() - started });
        }
        return result;
      } finally {
        if (statusBar.current.state === "busy") {
          statusBar.update({ state: "ready" });
        }
      }
    },
    handleWorkDoneProgress(token, params, next) {
      if (params.kind === "begin") {
        progressTitles.set(token, params.title);
      }
      const kind = classifyProgress(progressTitles.get(token));
      if (params.kind === "end") {
        progressTitles.delete(token);
      }
      if (kind === "chat") {
        chat.onServerProgress(token, params); // streamed into the chat document, not a notification
        return;
      }
      if (kind === "loading") {
        statusBar.update({
          state: params.kind === "end" ? statusBar.current.state : "loading",
          loadingPercent: params.kind === "end" ? undefined : params.percentage,
          message: params.kind === "end" ? undefined : params.message,
        });
      }
      next(token, params);
    },
    workspace: {
      // The server pulls its section; answer with the same mapping as initializationOptions.
      configuration(params, token, next) {
        if (params.items.every((item) => item.section === "exlsp")) {
          return params.items.map(() => currentSettings());
        }
        return next(params, token);
      },
    },
  };
}

async function startClient(
  context: vscode.ExtensionContext,
  statusBar: StatusBar,
  chat: Chat,
  output: vscode.LogOutputChannel,
): Promise<void> {
  const section = config();
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri;
  const server = resolveServerCommand({
    configuredPath: section.get<string>("serverPath") ?? "",
    pythonPath: await activePythonPath(folder),
    model: section.get<string>("model") || undefined,
    platform: process.platform,
    isFile,
    which,
  });
  output.info(`starting ${server.command} ${server.args.join(" ")} (${server.source})`);
  // No `transport`: with TransportKind.stdio the client appends "--stdio", which `exlsp serve`
  // (stdio by default) rejects; without it the client talks over stdio all the same.
  const serverOptions: ServerOptions = { command: server.command, args: server.args };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: currentSettings(),
    outputChannel: output,
    middleware: middleware(statusBar, chat),
  };
  client = new LanguageClient("exlsp", "exlsp", serverOptions, clientOptions);
  statusBar.update({ state: "starting", message: `${server.command} (${server.source})` });
  try {
    await client.start();
  } catch (error) {
    statusBar.update({ state: "error", message: String(error) });
    output.error(`the server did not start: ${String(error)}`);
    return;
  }
  context.subscriptions.push(client.onDidChangeState((event) => {
    if (event.newState === 1 /* Stopped */) {
      statusBar.update({ state: "stopped" });
    }
  }));
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const output = vscode.window.createOutputChannel("exlsp", { log: true });
  const statusBar = new StatusBar();
  const chat = new Chat(() => client);
  const poller = new StatusPoller(() => client, statusBar);
  context.subscriptions.push(output, statusBar, chat, poller);

  const selection = (name: SelectionAction) => () => runSelectionAction(client, name);
  context.subscriptions.push(
    vscode.commands.registerCommand("exlsp.openChat", (message?: string) => chat.ask(message)),
    vscode.commands.registerCommand("exlsp.explainSelection", selection("explain")),
    vscode.commands.registerCommand("exlsp.docstringSelection", selection("docstring")),
    vscode.commands.registerCommand("exlsp.testsSelection", selection("tests")),
    vscode.commands.registerCommand("exlsp.toggleCompletions", () => {
      completionsOn = !completionsOn;
      statusBar.update({ paused: !completionsOn });
      void vscode.window.showInformationMessage(`exlsp: inline completions ${completionsOn ? "on" : "off"}`);
      return completionsOn;
    }),
    vscode.commands.registerCommand("exlsp.showStatus", () => poller.show()),
    vscode.commands.registerCommand("exlsp.restartServer", async () => {
      await client?.stop();
      await startClient(context, statusBar, chat, output);
      poller.start();
    }),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (!event.affectsConfiguration("exlsp") || !client) {
        return;
      }
      if (RESTART_SETTING_KEYS.some((key) => event.affectsConfiguration(`exlsp.${key}`))) {
        await vscode.commands.executeCommand("exlsp.restartServer");
        return;
      }
      await client.sendNotification("workspace/didChangeConfiguration", {
        settings: { exlsp: currentSettings() },
      });
    }),
  );

  await startClient(context, statusBar, chat, output);
  poller.start();
}

export async function deactivate(): Promise<void> {
  await client?.stop();
  client = undefined;
}

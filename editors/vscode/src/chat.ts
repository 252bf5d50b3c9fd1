// "exlsp: Chat": an input box, then a read-only Markdown document beside the editor that streams
// the answer. The request is `workspace/executeCommand` `exlsp.chat` with a workDoneToken of ours;
// the streamed pieces are the $/progress reports under that token, or under the token the server
// creates itself for the chat (see onServerProgress); the command's result is the whole answer.
import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  WorkDoneProgress,
  WorkDoneProgressBegin,
  WorkDoneProgressEnd,
  WorkDoneProgressReport,
} from "vscode-languageclient/node";
import { ChatTranscript } from "./chatTranscript";
import { CHAT_COMMAND, chatAnswerText } from "./protocol";

const SCHEME = "exlsp-chat";

type ProgressValue = WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd;

export class Chat implements vscode.Disposable, vscode.TextDocumentContentProvider {
  private readonly transcript = new ChatTranscript();
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.changed.event;
  readonly uri = vscode.Uri.parse(`${SCHEME}:exlsp-chat.md`);
  private readonly registration: vscode.Disposable;
  private sequence = 0;
  /** The server-created progress token of the chat in flight, once its begin arrived. */
  private serverToken: string | number | undefined;

  constructor(private readonly client: () => LanguageClient | undefined) {
    this.registration = vscode.workspace.registerTextDocumentContentProvider(SCHEME, this);
  }

  provideTextDocumentContent(): string {
    return this.transcript.text;
  }

  get text(): string {
    return this.transcript.text;
  }

  /** A progress value under a server-created token whose title says chat (via the client's
   * handleWorkDoneProgress middleware). The first one to begin while a chat waits is adopted. */
  onServerProgress(token: string | number, value: ProgressValue): void {
    if (value.kind === "begin" && this.transcript.busy && this.serverToken === undefined) {
      this.serverToken = token;
    }
    if (token === this.serverToken) {
      this.onProgress(value);
    }
  }

  private onProgress(value: ProgressValue): void {
    if (value.kind === "report" && value.message) {
      this.transcript.append(value.message);
      this.changed.fire(this.uri);
    }
  }

  /** Asks in an input box (unless a message is given), with the selection as context. */
  async ask(message?: string): Promise<string | undefined> {
    const client = this.client();
    if (!client || !client.isRunning()) {
      void vscode.window.showErrorMessage("exlsp: the server is not running.");
      return undefined;
    }
    const editor = vscode.window.activeTextEditor;
    message ??= await vscode.window.showInputBox({
      title: "exlsp chat",
      prompt: editor && !editor.selection.isEmpty ? "Ask about the selection" : "Ask the model",
      ignoreFocusOut: true,
    });
    if (!message) {
      return undefined;
    }
    const argument: { message: string; uri?: string; range?: unknown } = { message };
    if (editor && editor.document.uri.scheme !== SCHEME) {
      argument.uri = editor.document.uri.toString();
      if (!editor.selection.isEmpty) {
        argument.range = client.code2ProtocolConverter.asRange(editor.selection);
      }
    }
    this.transcript.ask(message);
    this.serverToken = undefined;
    await this.reveal();

    const token = `exlsp-chat-${process.pid}-${++this.sequence}`;
    const progress = client.onProgress(WorkDoneProgress.type, token, (value) => this.onProgress(value));
    try {
      const result = await client.sendRequest(ExecuteCommandRequest.type, {
        command: CHAT_COMMAND,
        arguments: [argument],
        workDoneToken: token,
      });
      const answer = chatAnswerText(result);
      this.transcript.finish(answer);
      return answer;
    } catch (error) {
      this.transcript.finish(undefined, error instanceof Error ? error.message : String(error));
      return undefined;
    } finally {
      progress.dispose();
      this.serverToken = undefined;
      this.changed.fire(this.uri);
    }
  }

  private async reveal(): Promise<void> {
    this.changed.fire(this.uri);
    let document = await vscode.workspace.openTextDocument(this.uri);
    if (document.languageId !== "markdown") {
      document = await vscode.languages.setTextDocumentLanguage(document, "markdown");
    }
    await vscode.window.showTextDocument(document, {
      viewColumn: vscode.ViewColumn.Beside,
      preserveFocus: true,
      preview: false,
    });
  }

  dispose(): void {
    this.registration.dispose();
    this.changed.dispose();
  }
}

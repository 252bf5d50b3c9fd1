// Asks the server for `exlsp/status`: every second while the model loads (the status bar shows
// the state and model), and on demand for "exlsp: Show Status".
import * as vscode from "vscode";
import { LanguageClient } from "vscode-languageclient/node";
import { STATUS_METHOD } from "./protocol";
import { StatusBar } from "./statusBar";
import { stateFromServer } from "./statusText";
import { statusReport } from "./statusReport";

const LOADING_POLL_MS = 1000;

export class StatusPoller implements vscode.Disposable {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly client: () => LanguageClient | undefined,
    private readonly statusBar: StatusBar,
  ) {}

  start(): void {
    this.stop();
    this.timer = setInterval(() => void this.poll(), LOADING_POLL_MS);
    void this.poll();
  }

  private stop(): void {
    if (this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** One status request; stops polling once the model is loaded or failed. */
  async poll(): Promise<Record<string, unknown> | undefined> {
    const client = this.client();
    if (!client || !client.isRunning()) {
      return undefined;
    }
    try {
      const status = await client.sendRequest<Record<string, unknown>>(STATUS_METHOD, {});
      const state = stateFromServer(status.state);
      this.statusBar.update({
        state: this.statusBar.current.state === "busy" && state === "ready" ? "busy" : state,
        model: typeof status.model === "string" ? status.model : undefined,
        device: typeof status.device === "string" ? status.device : undefined,
        message: typeof status.error === "string" ? status.error : undefined,
      });
      if (state === "ready" || state === "error") {
        this.stop();
      }
      return status;
    } catch (error) {
      this.statusBar.update({ state: "error", message: String(error) });
      this.stop();
      return undefined;
    }
  }

  /** "exlsp: Show Status": the server's status in a modal-free message with a details button. */
  async show(): Promise<void> {
    const status = await this.poll();
    if (!status) {
      void vscode.window.showErrorMessage("exlsp: the server is not running.");
      return;
    }
    const lines = statusReport(status);
    const choice = await vscode.window.showInformationMessage(`exlsp: ${lines.join(" · ")}`, "Details");
    if (choice === "Details") {
      const document = await vscode.workspace.openTextDocument({
        language: "json",
        content: JSON.stringify(status, null, 2),
      });
      await vscode.window.showTextDocument(document, { preview: true });
    }
  }

  dispose(): void {
    this.stop();
  }
}

// The status bar item: model, device, state and last latency; a click runs exlsp.showStatus.
import * as vscode from "vscode";
import { StatusView, statusBarText } from "./statusText";

export class StatusBar implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private view: StatusView = { state: "starting" };

  constructor() {
    this.item = vscode.window.createStatusBarItem("exlsp.status", vscode.StatusBarAlignment.Right, 100);
    this.item.name = "exlsp";
    this.item.command = "exlsp.showStatus";
    this.render();
    this.item.show();
  }

  get current(): StatusView {
    return this.view;
  }

  update(change: Partial<StatusView>): void {
    this.view = { ...this.view, ...change };
    this.render();
  }

  private render(): void {
    const { text, tooltip } = statusBarText(this.view);
    this.item.text = text;
    this.item.tooltip = tooltip;
    this.item.backgroundColor =
      this.view.state === "error" ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  }

  dispose(): void {
    this.item.dispose();
  }
}

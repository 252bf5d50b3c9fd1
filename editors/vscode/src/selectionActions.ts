// Explain / add docstring / write tests on the selection: asks the server for its code actions on
// the selection, resolves the chosen one (the model runs in codeAction/resolve), then applies its
// edit and runs its command (the server shows prose answers through window/showDocument).
import * as vscode from "vscode";
import {
  CodeAction,
  CodeActionRequest,
  CodeActionResolveRequest,
  Command,
  LanguageClient,
} from "vscode-languageclient/node";
import { SelectionAction, pickAction } from "./protocol";

const LABELS: Record<SelectionAction, string> = {
  explain: "Explaining the selection",
  docstring: "Writing a docstring",
  tests: "Writing tests",
};

export async function runSelectionAction(client: LanguageClient | undefined, name: SelectionAction): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!client || !client.isRunning()) {
    void vscode.window.showErrorMessage("exlsp: the server is not running.");
    return;
  }
  if (!editor || editor.selection.isEmpty) {
    void vscode.window.showInformationMessage("exlsp: select some code first.");
    return;
  }
  const offered = await client.sendRequest(CodeActionRequest.type, {
    textDocument: { uri: editor.document.uri.toString() },
    range: client.code2ProtocolConverter.asRange(editor.selection),
    context: { diagnostics: [], triggerKind: 1 },
  });
  const actions = (offered ?? []).filter((item): item is CodeAction => !Command.is(item));
  const chosen = pickAction(actions, name);
  if (!chosen) {
    void vscode.window.showWarningMessage(`exlsp: the server offers no "${name}" action here.`);
    return;
  }
  const resolved = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: `exlsp: ${LABELS[name]}…` },
    () => client.sendRequest(CodeActionResolveRequest.type, chosen),
  );
  if (resolved.edit) {
    const edit = await client.protocol2CodeConverter.asWorkspaceEdit(resolved.edit);
    await vscode.workspace.applyEdit(edit);
  }
  if (resolved.command) {
    await vscode.commands.executeCommand(resolved.command.command, ...(resolved.command.arguments ?? []));
  }
  if (!resolved.edit && !resolved.command) {
    void vscode.window.showWarningMessage("exlsp: the model gave no answer (see the exlsp output).");
  }
}

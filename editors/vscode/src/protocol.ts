// What the exlsp server puts on the wire beyond plain LSP, and small pure readers of it.

/** Request: the server's status (exlsp/server.py ExlspServer.status). */
export const STATUS_METHOD = "exlsp/status";
/** Command the server runs for chat: arguments [{ message, uri?, range? }], result { text }. */
export const CHAT_COMMAND = "exlsp.chat";
/** Title of the work-done progress the server streams a chat answer under. */
export const CHAT_PROGRESS_TITLE = "exlsp chat";
/** Title prefix of the work-done progress of model loading. */
export const LOADING_PROGRESS_PREFIX = "exlsp: loading";

export type ProgressKind = "chat" | "loading" | "other";

export function classifyProgress(title: string | undefined): ProgressKind {
  if (title === CHAT_PROGRESS_TITLE) {
    return "chat";
  }
  if (title?.startsWith(LOADING_PROGRESS_PREFIX)) {
    return "loading";
  }
  return "other";
}

/** The chat answer in a command result: { text } from the server, or a bare string. */
export function chatAnswerText(result: unknown): string | undefined {
  if (typeof result === "string") {
    return result;
  }
  if (result && typeof result === "object" && typeof (result as { text?: unknown }).text === "string") {
    return (result as { text: string }).text;
  }
  return undefined;
}

/** Selection actions the extension's commands run, by the server's action name. */
export type SelectionAction = "explain" | "docstring" | "tests";

interface OfferedAction {
  kind?: string;
  title?: string;
  data?: unknown;
}

/** The offered code action for `name`: the server marks its actions with data.action; a kind of
 * "refactor.exlsp.<name>" is accepted too. */
export function pickAction<T extends OfferedAction>(actions: readonly T[], name: SelectionAction): T | undefined {
  return (
    actions.find((action) => (action.data as { action?: unknown } | undefined)?.action === name) ??
    actions.find((action) => action.kind === `refactor.exlsp.${name}`)
  );
}

// The status bar item's text and tooltip for a server state. Pure.

export type ServerState = "starting" | "loading" | "ready" | "busy" | "error" | "stopped";

export interface StatusView {
  state: ServerState;
  /** Completions switched off by the user (exlsp.toggleCompletions). */
  paused?: boolean;
  model?: string;
  device?: string;
  /** Model loading progress, 0-100. */
  loadingPercent?: number;
  /** Round trip of the last inline completion, in milliseconds. */
  lastLatencyMs?: number;
  /** An error or the loading step. */
  message?: string;
}

const ICONS: Record<ServerState, string> = {
  starting: "$(loading~spin)",
  loading: "$(loading~spin)",
  ready: "$(sparkle)",
  busy: "$(sync~spin)",
  error: "$(error)",
  stopped: "$(debug-stop)",
};

/** A model path shows as its last folder name; a store name as is. */
export function shortModelName(model: string): string {
  const trimmed = model.replace(/[\\/]+$/, "");
  const parts = trimmed.split(/[\\/]/);
  return parts[parts.length - 1] || trimmed;
}

export function statusBarText(view: StatusView): { text: string; tooltip: string } {
  const icon = view.paused ? "$(circle-slash)" : ICONS[view.state];
  const parts: string[] = [];
  if (view.state === "loading" || view.state === "starting") {
    // The server reports loading as elapsed seconds in the message when it has no percentage.
    const detail =
      view.loadingPercent !== undefined
        ? ` ${Math.round(view.loadingPercent)}%`
        : view.state === "loading" && view.message
          ? ` ${view.message}`
          : "";
    parts.push(`exlsp: ${view.state}${detail}`);
  } else if (view.state === "error" || view.state === "stopped") {
    parts.push(`exlsp: ${view.state}`);
  } else {
    parts.push(view.model ? shortModelName(view.model) : "exlsp");
    if (view.device) {
      parts.push(view.device);
    }
    if (view.lastLatencyMs !== undefined) {
      parts.push(`${Math.round(view.lastLatencyMs)} ms`);
    }
  }
  const text = `${icon} ${parts.join(" · ")}`;
  const tooltipLines = [
    `exlsp — ${view.paused ? "completions off" : view.state}`,
    view.model ? `model: ${view.model}` : undefined,
    view.device ? `device: ${view.device}` : undefined,
    view.lastLatencyMs !== undefined ? `last completion: ${Math.round(view.lastLatencyMs)} ms` : undefined,
    view.message,
    "Click for the server status",
  ];
  return { text, tooltip: tooltipLines.filter((line) => line !== undefined).join("\n") };
}

/** Maps the `state` field of an `exlsp/status` answer onto the status bar's states. */
export function stateFromServer(state: unknown): ServerState {
  switch (state) {
    case "ready":
      return "ready";
    case "idle":
      return "starting";
    case "busy":
    case "generating":
      return "busy";
    case "loading":
    case "starting":
      return "loading";
    case "error":
    case "failed":
      return "error";
    default:
      return "loading";
  }
}

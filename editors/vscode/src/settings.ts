// VS Code's "exlsp.*" settings -> the server's "exlsp" settings section (issue 3: camelCase keys,
// sent as initializationOptions, answered to workspace/configuration and pushed on change).
// Pure: the caller passes a getter, so this runs under mocha without VS Code.

/** Reads one "exlsp.<key>" setting (vscode.WorkspaceConfiguration.get fits). */
export type SettingGetter = (key: string) => unknown;

/** Keys the server understands. Client-only settings (serverPath, trace.server) are not sent:
 * the server reports unknown keys to the user. */
export const SERVER_SETTING_KEYS = [
  "model",
  "device",
  "enable",
  "timeBudgetMs",
  "maxTokens",
  "chatMaxTokens",
  "debounceMs",
  "prefixTokens",
  "suffixTokens",
  "extraContextTokens",
  "temperature",
] as const;

/** Settings that only take effect when the server process starts again. */
export const RESTART_SETTING_KEYS = ["serverPath"] as const;

/** The settings object for the server. Unset values (undefined, null, "") are left out, so the
 * server keeps its own default for them rather than receiving a null it must reject. */
export function serverSettings(get: SettingGetter): Record<string, unknown> {
  const settings: Record<string, unknown> = {};
  for (const key of SERVER_SETTING_KEYS) {
    const value = get(key);
    if (value === undefined || value === null || value === "") {
      continue;
    }
    settings[key] = value;
  }
  return settings;
}

/** Whether inline suggestions are wanted for a language id under an "exlsp.enable" map. */
export function isEnabledFor(enable: unknown, languageId: string): boolean {
  if (typeof enable === "boolean") {
    return enable;
  }
  if (enable === null || typeof enable !== "object") {
    return true;
  }
  const map = enable as Record<string, unknown>;
  const value = languageId in map ? map[languageId] : map["*"];
  return value !== false;
}

import * as assert from "node:assert/strict";
import { isEnabledFor, serverSettings } from "../../src/settings";

describe("serverSettings", () => {
  it("maps VS Code's exlsp.* values onto the server's camelCase keys, leaving unset ones out", () => {
    const values: Record<string, unknown> = {
      model: "qwen2.5-coder-0.5b",
      device: "",
      enable: { "*": true, markdown: false },
      timeBudgetMs: 500,
      maxTokens: null,
      serverPath: "/opt/exlsp/bin/exlsp",
      "trace.server": "verbose",
    };
    assert.deepEqual(
      serverSettings((key) => values[key]),
      { model: "qwen2.5-coder-0.5b", enable: { "*": true, markdown: false }, timeBudgetMs: 500 },
    );
  });

  it("sends nothing for a fresh install, so the server keeps all its defaults", () => {
    assert.deepEqual(serverSettings(() => undefined), {});
  });

  it("never sends client-only settings, which the server would report as unknown", () => {
    const settings = serverSettings((key) => `value of ${key}`);
    assert.ok(!("serverPath" in settings));
    assert.ok(!("trace.server" in settings));
    assert.deepEqual(Object.keys(settings).sort(), [
      "chatMaxTokens",
      "debounceMs",
      "device",
      "enable",
      "extraContextTokens",
      "maxTokens",
      "model",
      "prefixTokens",
      "suffixTokens",
      "temperature",
      "timeBudgetMs",
    ]);
  });
});

describe("isEnabledFor", () => {
  it("uses the language's entry, else '*', else on", () => {
    assert.equal(isEnabledFor({ "*": true, markdown: false }, "markdown"), false);
    assert.equal(isEnabledFor({ "*": true, markdown: false }, "python"), true);
    assert.equal(isEnabledFor({ "*": false, python: true }, "rust"), false);
    assert.equal(isEnabledFor({}, "python"), true);
    assert.equal(isEnabledFor(undefined, "python"), true);
    assert.equal(isEnabledFor(false, "python"), false);
  });
});

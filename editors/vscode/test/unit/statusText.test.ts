import * as assert from "node:assert/strict";
import { shortModelName, stateFromServer, statusBarText } from "../../src/statusText";
import { backendSummary, statusReport } from "../../src/statusReport";

describe("statusBarText", () => {
  it("shows model, device and last latency when ready", () => {
    const { text, tooltip } = statusBarText({
      state: "ready",
      model: "/home/u/models/qwen2.5-coder-0.5b-gptq/",
      device: "cuda",
      lastLatencyMs: 41.6,
    });
    assert.equal(text, "$(sparkle) qwen2.5-coder-0.5b-gptq · cuda · 42 ms");
    assert.match(tooltip, /^exlsp — ready\nmodel: \/home\/u\/models\/qwen2.5-coder-0.5b-gptq\/\ndevice: cuda\nlast completion: 42 ms/);
  });

  it("shows loading with its progress, busy with a spinner, errors plainly", () => {
    assert.equal(statusBarText({ state: "loading", loadingPercent: 40 }).text, "$(loading~spin) exlsp: loading 40%");
    assert.equal(statusBarText({ state: "loading", message: "3s" }).text, "$(loading~spin) exlsp: loading 3s");
    assert.equal(statusBarText({ state: "busy", model: "tiny" }).text, "$(sync~spin) tiny");
    const error = statusBarText({ state: "error", message: "model folder not found: x" });
    assert.equal(error.text, "$(error) exlsp: error");
    assert.match(error.tooltip, /model folder not found: x/);
  });

  it("marks completions switched off", () => {
    assert.equal(statusBarText({ state: "ready", paused: true }).text, "$(circle-slash) exlsp");
  });

  it("maps the server's states", () => {
    assert.deepEqual(
      ["idle", "loading", "ready", "failed", "something new"].map(stateFromServer),
      ["starting", "loading", "ready", "error", "loading"],
    );
    assert.equal(shortModelName("C:\\models\\tiny\\"), "tiny");
  });
});

describe("statusReport", () => {
  it("formats the server's exlsp/status answer", () => {
    assert.deepEqual(
      statusReport({
        state: "ready",
        model: "tiny",
        device: "cpu",
        backend: { quant_linear: "reference", paged_attention: "reference" },
        fim: "fill-in-the-middle: qwen template, repo-level layout",
        completions: { shown: 10, accepted: 3, prefixCacheHitRate: 0.75, latencyMs: { p50: 41.25, p95: 90 } },
      }),
      [
        "state: ready",
        "model: tiny",
        "device: cpu",
        "backend: reference",
        "prefix cache hits: 75%",
        "latency: p50 41.3 ms, p95 90 ms",
        "accepted: 3 of 10 shown",
        "fill-in-the-middle: qwen template, repo-level layout",
      ],
    );
  });

  it("summarises a mix of kernel backends", () => {
    assert.equal(backendSummary({ a: "cuda", b: "reference", c: "cuda" }), "cuda x2, reference x1");
    assert.equal(backendSummary(null), undefined);
  });
});

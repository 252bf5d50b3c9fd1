// The lines "exlsp: Show Status" displays for an `exlsp/status` answer. Pure. Accepts the key
// names of issue 3 (cacheHitRate, latency) and those of the server's counters (prefixCacheHitRate,
// latencyMs).

type Json = Record<string, unknown>;

function show(value: unknown, unit = ""): string {
  if (value === undefined || value === null) {
    return "-";
  }
  if (typeof value === "number" && unit === "%") {
    return `${Math.round(value * 100)}%`;
  }
  if (typeof value === "number" && !Number.isInteger(value)) {
    return `${value.toFixed(1)}${unit}`;
  }
  return `${String(value)}${unit}`;
}

/** The kernel backend in a word: the server reports one backend per op; one name when they agree. */
export function backendSummary(backend: unknown): string | undefined {
  if (backend === undefined || backend === null) {
    return undefined;
  }
  if (typeof backend !== "object") {
    return String(backend);
  }
  const counts = new Map<string, number>();
  for (const name of Object.values(backend as Json)) {
    counts.set(String(name), (counts.get(String(name)) ?? 0) + 1);
  }
  const names = [...counts.keys()].sort();
  return names.length === 1 ? names[0] : names.map((name) => `${name} x${counts.get(name)}`).join(", ");
}

export function statusReport(status: Json): string[] {
  // Counters sit under `completions` in the server's answer; issue 3 lists them at the top level.
  const counters = (typeof status.completions === "object" && status.completions !== null
    ? status.completions
    : status) as Json;
  const latency = (counters.latency ?? counters.latencyMs ?? {}) as Json;
  const hitRate = counters.cacheHitRate ?? counters.prefixCacheHitRate;
  return [
    `state: ${show(status.state)}`,
    `model: ${show(status.model)}`,
    `device: ${show(status.device)}`,
    `backend: ${show(backendSummary(status.backend))}`,
    `prefix cache hits: ${show(hitRate, "%")}`,
    `latency: p50 ${show(latency.p50, " ms")}, p95 ${show(latency.p95, " ms")}`,
    `accepted: ${show(counters.accepted)} of ${show(counters.shown)} shown`,
    ...(typeof status.fim === "string" ? [status.fim] : []),
  ];
}

import * as assert from "node:assert/strict";
import { ServerCommandInputs, resolveServerCommand } from "../../src/serverCommand";

function inputs(overrides: Partial<ServerCommandInputs>, files: string[] = [], onPath: Record<string, string> = {}) {
  return {
    configuredPath: "",
    platform: "linux" as NodeJS.Platform,
    isFile: (file: string) => files.includes(file),
    which: (program: string) => onPath[program],
    ...overrides,
  };
}

describe("resolveServerCommand", () => {
  it("runs a configured exlsp executable with serve", () => {
    const command = resolveServerCommand(inputs({ configuredPath: "/opt/exlsp/bin/exlsp" }));
    assert.deepEqual([command.command, command.args], ["/opt/exlsp/bin/exlsp", ["serve"]]);
  });

  it("runs a configured Python interpreter with -m exlsp.cli", () => {
    const command = resolveServerCommand(inputs({ configuredPath: "/venv/bin/python3.11", model: "tiny" }));
    assert.deepEqual(
      [command.command, command.args],
      ["/venv/bin/python3.11", ["-m", "exlsp.cli", "serve", "--model", "tiny"]],
    );
  });

  it("prefers exlsp beside the active environment's interpreter", () => {
    const command = resolveServerCommand(
      inputs({ pythonPath: "/home/u/.venv/bin/python" }, ["/home/u/.venv/bin/exlsp"], { exlsp: "/usr/bin/exlsp" }),
    );
    assert.deepEqual([command.command, command.args], ["/home/u/.venv/bin/exlsp", ["serve"]]);
    assert.equal(command.source, "active Python environment");
  });

  it("falls back to python -m exlsp.cli of the active environment when its exlsp script is missing", () => {
    const command = resolveServerCommand(inputs({ pythonPath: "/home/u/.venv/bin/python" }, [], { exlsp: "/usr/bin/exlsp" }));
    assert.deepEqual([command.command, command.args], ["/home/u/.venv/bin/python", ["-m", "exlsp.cli", "serve"]]);
  });

  it("finds a Windows virtualenv's Scripts\\exlsp.exe", () => {
    const command = resolveServerCommand(
      inputs({ platform: "win32", pythonPath: "C:\\env\\Scripts\\python.exe" }, ["C:\\env\\Scripts\\exlsp.exe"]),
    );
    assert.equal(command.command, "C:\\env\\Scripts\\exlsp.exe");
  });

  it("without an environment uses exlsp from PATH, else python3 -m exlsp.cli", () => {
    assert.equal(resolveServerCommand(inputs({}, [], { exlsp: "/usr/local/bin/exlsp" })).command, "/usr/local/bin/exlsp");
    const last = resolveServerCommand(inputs({}));
    assert.deepEqual([last.command, last.args], ["python3", ["-m", "exlsp.cli", "serve"]]);
  });
});

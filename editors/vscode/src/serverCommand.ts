// Which process to start as the language server. Pure: file-system and PATH lookups are passed
// in, so the order of preference is tested without a Python installation.
import * as path from "node:path";

export interface ServerCommandInputs {
  /** "exlsp.serverPath": an `exlsp` executable, or a Python interpreter to run `-m exlsp.cli` with. */
  configuredPath: string;
  /** The interpreter of the active Python environment (Python extension, VIRTUAL_ENV, CONDA_PREFIX). */
  pythonPath?: string;
  /** "exlsp.model", passed as --model so the server loads the right model from its first moment. */
  model?: string;
  platform: NodeJS.Platform;
  isFile: (file: string) => boolean;
  /** The full path of a program found on PATH, or undefined. */
  which: (program: string) => string | undefined;
}

export interface ServerCommand {
  command: string;
  args: string[];
  /** Why this one was chosen, for the log and the status tooltip. */
  source: string;
}

function looksLikePython(file: string): boolean {
  return /^python(\d+(\.\d+)?)?(\.exe)?$/i.test(path.win32.basename(file));
}

/** `exlsp` beside an interpreter: bin/ on POSIX, Scripts\ on Windows (where python.exe sits one
 * folder up in a virtualenv). */
function exlspBeside(pythonPath: string, platform: NodeJS.Platform, isFile: (f: string) => boolean): string | undefined {
  // Paths of the platform the editor runs on, whatever platform runs this code (the tests).
  const paths = platform === "win32" ? path.win32 : path.posix;
  const folder = paths.dirname(pythonPath);
  const candidates =
    platform === "win32"
      ? [paths.join(folder, "exlsp.exe"), paths.join(folder, "Scripts", "exlsp.exe")]
      : [paths.join(folder, "exlsp")];
  return candidates.find(isFile);
}

export function resolveServerCommand(inputs: ServerCommandInputs): ServerCommand {
  const modelArgs = inputs.model ? ["--model", inputs.model] : [];
  const serve = ["serve", ...modelArgs];
  const moduleServe = ["-m", "exlsp.cli", ...serve];
  const configured = inputs.configuredPath.trim();
  if (configured) {
    if (looksLikePython(configured)) {
      return { command: configured, args: moduleServe, source: "exlsp.serverPath (python)" };
    }
    return { command: configured, args: serve, source: "exlsp.serverPath" };
  }
  if (inputs.pythonPath) {
    const beside = exlspBeside(inputs.pythonPath, inputs.platform, inputs.isFile);
    if (beside) {
      return { command: beside, args: serve, source: "active Python environment" };
    }
    return { command: inputs.pythonPath, args: moduleServe, source: "active Python environment (python -m)" };
  }
  const onPath = inputs.which(inputs.platform === "win32" ? "exlsp.exe" : "exlsp");
  if (onPath) {
    return { command: onPath, args: serve, source: "PATH" };
  }
  return {
    command: inputs.platform === "win32" ? "python" : "python3",
    args: moduleServe,
    source: "python on PATH (python -m)",
  };
}

// The interpreter of the active Python environment: the Python extension's choice when it is
// installed, else an activated virtualenv or conda env from the environment variables.
import * as fs from "node:fs";
import * as path from "node:path";
import * as vscode from "vscode";

interface PythonExtensionApi {
  environments?: {
    getActiveEnvironmentPath(resource?: vscode.Uri): { path: string } | undefined;
    resolveEnvironment?(env: { path: string }): Promise<{ executable: { uri?: vscode.Uri } } | undefined>;
  };
}

function interpreterIn(prefix: string | undefined): string | undefined {
  if (!prefix) {
    return undefined;
  }
  const candidates =
    process.platform === "win32"
      ? [path.join(prefix, "Scripts", "python.exe"), path.join(prefix, "python.exe")]
      : [path.join(prefix, "bin", "python")];
  return candidates.find((file) => fs.existsSync(file));
}

export async function activePythonPath(resource?: vscode.Uri): Promise<string | undefined> {
  const extension = vscode.extensions.getExtension<PythonExtensionApi>("ms-python.python");
  if (extension) {
    try {
      const api = extension.isActive ? extension.exports : await extension.activate();
      const active = api.environments?.getActiveEnvironmentPath(resource);
      if (active?.path) {
        const resolved = await api.environments?.resolveEnvironment?.(active);
        const executable = resolved?.executable.uri?.fsPath ?? active.path;
        if (fs.existsSync(executable) && fs.statSync(executable).isFile()) {
          return executable;
        }
        return interpreterIn(executable);
      }
    } catch {
      // The Python extension failing must not stop completions: fall through to the variables.
    }
  }
  return interpreterIn(process.env.VIRTUAL_ENV) ?? interpreterIn(process.env.CONDA_PREFIX);
}

/** A program on PATH, like `which`. */
export function which(program: string): string | undefined {
  for (const folder of (process.env.PATH ?? "").split(path.delimiter)) {
    const candidate = path.join(folder, program);
    try {
      if (folder && fs.statSync(candidate).isFile()) {
        return candidate;
      }
    } catch {
      // not in this folder
    }
  }
  return undefined;
}

export function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

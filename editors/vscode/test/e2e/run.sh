#!/usr/bin/env bash
# The VS Code real-editor test: VS Code 1.100 (code-server 4.100.3 from npm) in headless Debian
# Chromium driven by playwright-core, with the exlsp .vsix installed, against the real
# `exlsp serve` on a tiny scripted model. Installs everything it needs itself (Debian packages when
# run as root, npm packages into .work/), then prints one line "E2E_RESULT {...}" and exits 0 on
# success. Developers run it; CI does not (it needs minutes and a native build of code-server).
#
#   editors/vscode/test/e2e/run.sh            # PYTHON=... to pick the interpreter with torch
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
EXT_DIR="$(cd "$HERE/../.." && pwd)"
REPO="$(cd "$EXT_DIR/../.." && pwd)"
WORK="${EXLSP_E2E_WORK:-$HERE/.work}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
CODE_SERVER_VERSION=4.100.3
PORT="${EXLSP_E2E_PORT:-8137}"
mkdir -p "$WORK"
log() { echo "[run.sh] $*"; }

# 1. Debian packages: the browser, ripgrep, and what code-server's native modules build against.
packages=(chromium ripgrep libkrb5-dev libxkbfile-dev libsecret-1-dev pkg-config build-essential python3)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
        log "apt-get install ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        log "missing Debian packages (install them as root): ${missing[*]}"; exit 2
    fi
fi

# 2. The extension, packaged as users get it.
log "package the extension"
(cd "$EXT_DIR" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent package >/dev/null)

# 3. code-server. Its install runs npm inside lib/vscode (native modules: they build against the
# local Node headers, never downloaded) and @vscode/ripgrep, whose install step would download rg:
# its cache is filled with Debian's rg under the name it looks for.
CS="$WORK/code-server"
if [ ! -x "$CS/node_modules/.bin/code-server" ]; then
    log "install code-server@$CODE_SERVER_VERSION (a few minutes)"
    rm -rf "$CS" && mkdir -p "$CS" "$WORK/tmp"
    # @vscode/ripgrep 1.15.11 (pinned by code-server 4.100.3's lib/vscode/npm-shrinkwrap.json)
    # caches ripgrep v13.0.0-10 under $TMPDIR/vscode-ripgrep-cache-<its version>/.
    rg_cache="$WORK/tmp/vscode-ripgrep-cache-1.15.11"
    mkdir -p "$rg_cache/pack"
    cp "$(command -v rg)" "$rg_cache/pack/rg"
    tar czf "$rg_cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" -C "$rg_cache/pack" rg
    printf '{ "private": true, "dependencies": { "code-server": "%s" } }\n' "$CODE_SERVER_VERSION" >"$CS/package.json"
    # code-server's postinstall runs nested npm installs that need their own install scripts, and
    # node-pty's runs `npx node-gyp`, which must not stop to ask.
    (cd "$CS" && TMPDIR="$WORK/tmp" npm_config_nodedir=/usr npm_config_unsafe_perm=true \
        npm_config_dangerously_allow_all_scripts=true npm_config_yes=true \
        npm install --no-audit --no-fund --loglevel=error)
fi

# 4. playwright-core (no browser download: it drives Debian's chromium).
PW="$WORK/playwright"
if [ ! -d "$PW/node_modules/playwright-core" ]; then
    log "install playwright-core"
    mkdir -p "$PW" && printf '{ "private": true, "type": "module" }\n' >"$PW/package.json"
    (cd "$PW" && npm install --no-audit --no-fund --loglevel=error playwright-core@1)
fi
cp "$HERE/e2e.mjs" "$PW/e2e.mjs"

# 5. A tiny model whose completion is known, and a workspace that uses it.
log "build the scripted tiny model"
rm -rf "$WORK/model" "$WORK/ws" "$WORK/data" "$WORK/extensions" "$WORK/shots"
mkdir -p "$WORK/ws/.vscode" "$WORK/shots"
(cd "$REPO" && "$PYTHON" - "$WORK/model" <<'PY'
import sys
from pathlib import Path
from tests.editors import scripted_model as sm
folder = Path(sys.argv[1])
sm.make_tokenizer_json(folder)
sm.make_scripted_checkpoint(folder, {sm.FIM_MIDDLE: "urn value", sm.chat_prompt_last_token(folder): "Fibonacci numbers grow fast."})
PY
)
printf 'def fib(n):\n    x = 1\n' >"$WORK/ws/fib.py"
cat >"$WORK/ws/.vscode/settings.json" <<JSON
{
  "exlsp.serverPath": "$PYTHON",
  "exlsp.model": "$WORK/model",
  "exlsp.device": "cpu",
  "workbench.startupEditor": "none",
  "editor.inlineSuggest.enabled": true
}
JSON

# 6. Install the .vsix and start code-server on the loopback address only.
CODE="$CS/node_modules/.bin/code-server"
common=(--user-data-dir "$WORK/data" --extensions-dir "$WORK/extensions")
"$CODE" "${common[@]}" --install-extension "$EXT_DIR/exlsp.vsix" >/dev/null
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export EXLSP_CONFIG_DIR="$WORK/exlsp-config" EXLSP_CACHE_DIR="$WORK/exlsp-cache"
"$CODE" "${common[@]}" --auth none --disable-telemetry --disable-update-check --disable-workspace-trust \
    --bind-addr "127.0.0.1:$PORT" "$WORK/ws" >"$WORK/code-server.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    "$PYTHON" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/healthz', timeout=2)" 2>/dev/null && break
    sleep 0.5
done

# 7. The browser session.
log "drive VS Code"
(cd "$PW" && CHROMIUM="$(command -v chromium)" node e2e.mjs "http://127.0.0.1:$PORT/?folder=$WORK/ws" "$WORK/shots")

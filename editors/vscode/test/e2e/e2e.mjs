// Drives VS Code (code-server, in headless Chromium through playwright-core) the way a user does:
// open a Python file of the workspace, wait for the exlsp status bar item to say the model is
// loaded, type on a new line, see the server's ghost text, press Tab and see it inserted; then ask
// "exlsp: Chat" from the command palette and see the answer in the chat document, and "exlsp:
// Explain Selection" on a line and see the explanation document.
// Usage: node e2e.mjs URL SCREENSHOT_DIR  (env CHROMIUM: the browser executable)
import { chromium } from "playwright-core";

const [url, screenshotDir] = process.argv.slice(2);
// What run.sh's scripted model (tests/editors/scripted_model.py) writes after a FIM / chat prompt.
const EXPECTED_GHOST = "urn value";
const EXPECTED_CHAT = "Fibonacci numbers grow fast.";
const step = (message) => console.log(`[e2e] ${message}`);
const normalize = (text) => (text ?? "").replace(/\u00a0/g, " ");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
const result = { ghostText: null, inserted: null, statusBar: null, chat: null, explain: null };
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
try {
  step(`open ${url}`);
  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 120_000 });
  await page.locator(".monaco-workbench").waitFor({ timeout: 120_000 });

  step("open fib.py from the explorer");
  const row = page.locator('.explorer-folders-view .monaco-list-row[aria-label*="fib.py"]').first();
  await row.waitFor({ timeout: 60_000 });
  await row.dblclick();
  const editor = page.locator('.editor-instance .monaco-editor[data-uri$="fib.py"]').first();
  await editor.locator(".view-lines").waitFor({ timeout: 60_000 });

  step("wait for the exlsp status bar item to show the loaded model");
  const status = page.locator('[id="exlsp.exlsp.status"], .statusbar-item[aria-label*="exlsp"]').first();
  await page.waitForFunction(
    () => {
      const items = [...document.querySelectorAll(".statusbar-item")];
      return items.some((item) => / · cpu/.test(item.textContent ?? ""));
    },
    undefined,
    { timeout: 180_000 },
  );
  result.statusBar = normalize(await status.textContent().catch(() => null));
  step(`status bar: ${result.statusBar}`);

  step("type on a new last line");
  await editor.locator(".view-lines").click();
  await page.keyboard.press("Control+End");
  await page.keyboard.type("    ret", { delay: 60 });

  step("wait for the ghost text");
  // VS Code draws ghost text as injected text in the line, split into syntax-coloured spans whose
  // classes contain "ghost-text": join the innermost ones.
  const readGhost = () =>
    page.evaluate(() => {
      const all = [...document.querySelectorAll('.monaco-editor[data-uri$="fib.py"] [class*="ghost-text"]')];
      const leaves = all.filter((el) => !el.querySelector('[class*="ghost-text"]'));
      return {
        text: leaves.map((el) => el.textContent ?? "").join("").replace(/\u00a0/g, " "),
        html: all.map((el) => el.outerHTML).join("\n").slice(0, 4000),
      };
    });
  try {
    await page.waitForFunction(
      (expected) => {
        const all = [...document.querySelectorAll('.monaco-editor[data-uri$="fib.py"] [class*="ghost-text"]')];
        const leaves = all.filter((el) => !el.querySelector('[class*="ghost-text"]'));
        return leaves.map((el) => el.textContent ?? "").join("").replace(/\u00a0/g, " ").includes(expected);
      },
      EXPECTED_GHOST,
      { timeout: 60_000 },
    );
  } finally {
    const ghost = await readGhost();
    result.ghostText = ghost.text;
    if (!ghost.text.includes(EXPECTED_GHOST)) {
      console.log(`[e2e] ghost-text elements:\n${ghost.html}`);
    }
  }
  step(`ghost text: ${JSON.stringify(result.ghostText)}`);
  await page.screenshot({ path: `${screenshotDir}/ghost-text.png` });

  step("accept with Tab");
  await page.keyboard.press("Tab");
  await page.waitForFunction(
    () =>
      [...document.querySelectorAll('.monaco-editor[data-uri$="fib.py"] .view-line')].some((line) =>
        (line.textContent ?? "").replace(/\u00a0/g, " ").includes("return value"),
      ),
    undefined,
    { timeout: 20_000 },
  );
  result.inserted = "return value";
  await page.screenshot({ path: `${screenshotDir}/accepted.png` });
  step("accepted: the line reads 'return value'");

  step("chat: command palette -> exlsp: Chat -> question");
  await page.keyboard.press("F1");
  await page.keyboard.type("exlsp: Chat", { delay: 20 });
  await page.locator('.quick-input-list .monaco-list-row[aria-label*="exlsp: Chat"]').first().waitFor({ timeout: 20_000 });
  await page.keyboard.press("Enter");
  await page.locator(".quick-input-box input").waitFor({ timeout: 20_000 });
  await page.keyboard.type("what does fib do?", { delay: 20 });
  await page.keyboard.press("Enter");
  await page.waitForFunction(
    (expected) =>
      [...document.querySelectorAll('.monaco-editor[data-uri^="exlsp-chat"] .view-line')].some((line) =>
        (line.textContent ?? "").replace(/\u00a0/g, " ").includes(expected),
      ),
    EXPECTED_CHAT,
    { timeout: 60_000 },
  );
  result.chat = EXPECTED_CHAT;
  await page.screenshot({ path: `${screenshotDir}/chat.png` });
  step("chat answer shown in the chat document");

  step("explain: select the first line, run exlsp: Explain Selection");
  await editor.locator(".view-lines").click();
  await page.keyboard.press("Control+Home");
  await page.keyboard.press("Shift+End");
  await page.keyboard.press("F1");
  await page.keyboard.type("exlsp: Explain Selection", { delay: 20 });
  await page.locator('.quick-input-list .monaco-list-row[aria-label*="Explain Selection"]').first().waitFor({ timeout: 20_000 });
  await page.keyboard.press("Enter");
  // The server resolves the code action, writes the prose answer to a file and shows it
  // (window/showDocument).
  await page.waitForFunction(
    (expected) =>
      [...document.querySelectorAll('.monaco-editor[data-uri*="explain-"] .view-line')].some((line) =>
        (line.textContent ?? "").replace(/\u00a0/g, " ").includes(expected),
      ),
    EXPECTED_CHAT,
    { timeout: 60_000 },
  );
  result.explain = EXPECTED_CHAT;
  await page.screenshot({ path: `${screenshotDir}/explain.png` });
  step("explanation shown in its own document");
  console.log(`E2E_RESULT ${JSON.stringify({ ok: true, ...result })}`);
} catch (error) {
  await page.screenshot({ path: `${screenshotDir}/failure.png` }).catch(() => {});
  console.log(`E2E_RESULT ${JSON.stringify({ ok: false, error: String(error), ...result })}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}

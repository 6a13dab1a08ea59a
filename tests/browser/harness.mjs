// What every browser script here needs: its settings from the environment
// (tests/web_browser.rs passes them), numbered checks that stop at the
// first failure, and Debian's Chromium, headless, fetching nothing of its own.
import { chromium } from "playwright-core";
import fs from "node:fs";

export { totp } from "./totp.mjs";

export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing ${name}`);
  return value;
};

let checks = 0;
export function check(condition, what) {
  if (!condition) throw new Error(`FAILED: ${what}`);
  checks += 1;
  console.log(`ok ${checks} - ${what}`);
}

/// The screenshot directory (made if missing).
export function screenshots() {
  const dir = env("BW_SCREENSHOTS");
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--no-first-run"],
  });
}

/// The last line the Rust side looks for.
export function pass() {
  console.log(`PASS ${checks} checks`);
}

// An admin without an authenticator signs in for the first time in real
// headless Chromium: enrols one from the page (the secret read from the
// page's otpauth:// URI, as a phone would scan it), keeps a recovery code,
// signs in with it once, and confirms it's them before making new codes.
// Run by tests/web_browser.rs; prints one line per check.
import { env, check, launch, pass, screenshots, totp } from "./harness.mjs";
import path from "node:path";

const BASE = env("BW_BASE");
const SHOTS = screenshots();
const PASSWORD = env("BW_PASSWORD");
const ADMIN = env("BW_NEW_ADMIN");
const REAUTH_MS = Number(env("BW_REAUTH_MS"));

const browser = await launch();

async function signIn(context) {
  const page = await context.newPage();
  page.on("dialog", (d) => d.accept().catch(() => {})); // "Are you sure?" → yes
  await page.goto(`${BASE}/login`);
  await page.fill("input[name=address]", ADMIN);
  await page.fill("input[name=password]", PASSWORD);
  await page.click("button[type=submit]");
  return page;
}

try {
  // 1. First sign-in: enrolment is forced before any page.
  const first = await browser.newContext({ locale: "en-US", viewport: { width: 1280, height: 900 } });
  const page = await signIn(first);
  await page.waitForURL(/\/login\/enrol/);
  check(await page.locator(".qr svg").isVisible(), "QR code drawn by the server");
  const uri = await page.locator("a.otpauth").getAttribute("href");
  check(uri.startsWith("otpauth://totp/"), `otpauth URI on the page: ${uri.split("?")[0]}`);
  const secret = new URL(uri).searchParams.get("secret");
  check((await page.locator("code.secret").innerText()) === secret, "the key is shown for typing by hand");
  await page.screenshot({ path: path.join(SHOTS, "10-enrol-totp.png"), fullPage: true });
  const blocked = await first.newPage();
  await blocked.goto(`${BASE}/admin`);
  check(blocked.url().includes("/login"), "no admin page before the enrolment is confirmed");
  await blocked.close();
  await page.fill("input[name=code]", totp(secret));
  await page.click("button[type=submit]");
  const codes = await page.locator("ol.recovery-codes li code").allInnerTexts();
  check(codes.length === 10 && codes.every((c) => /^[a-z0-9]{4}(-[a-z0-9]{4}){3}$/.test(c)), `ten recovery codes shown once (${codes[0]}, …)`);
  await page.screenshot({ path: path.join(SHOTS, "11-recovery-codes.png"), fullPage: true });
  await page.click("a.button");
  await page.waitForURL(/\/mail/);
  check((await page.locator("h1").innerText()) === "Mailbox", "signed in after the enrolment");

  // 2. Phone lost: a recovery code signs in, once.
  const second = await browser.newContext({ locale: "en-US" });
  const lost = await signIn(second);
  await lost.waitForURL(/\/login\/totp/);
  await lost.fill("input[name=code]", codes[0]);
  await lost.click("button[type=submit]");
  await lost.waitForURL(/\/mail/);
  check(true, "a recovery code signs in instead of the app's code");
  const third = await browser.newContext({ locale: "en-US" });
  const replay = await signIn(third);
  await replay.waitForURL(/\/login\/totp/);
  await replay.fill("input[name=code]", codes[0]);
  await replay.click("button[type=submit]");
  await replay.waitForLoadState();
  check(replay.url().includes("/login/totp") && (await replay.locator(".error").count()) === 1, "the same recovery code is refused the second time");

  // 3. After the confirmation window, new recovery codes ask for the password.
  await lost.goto(`${BASE}/account`);
  check((await lost.locator(".recovery-left").innerText()).includes("9"), "the security page counts nine unused codes");
  await lost.waitForTimeout(REAUTH_MS + 500);
  await lost.click("form[action='/account/recovery-codes'] button");
  await lost.waitForSelector("input[name=reauth_password]");
  check((await lost.locator("h1").innerText()) === "Confirm it's you", "confirm it's you asked before new recovery codes");
  await lost.fill("input[name=reauth_password]", "not the password at all");
  await lost.click("button[type=submit]");
  await lost.waitForSelector("p.error");
  check((await lost.locator("ol.recovery-codes").count()) === 0, "a wrong password makes no new codes");
  await lost.fill("input[name=reauth_password]", PASSWORD);
  await lost.click("button[type=submit]");
  const fresh = await lost.locator("ol.recovery-codes li code").allInnerTexts();
  check(fresh.length === 10 && !fresh.includes(codes[1]), "confirmed: ten new codes, the old ones replaced");
  await lost.screenshot({ path: path.join(SHOTS, "12-new-recovery-codes.png"), fullPage: true });
  pass();
} catch (err) {
  console.error(err.stack || String(err));
  process.exitCode = 1;
} finally {
  await browser.close();
}

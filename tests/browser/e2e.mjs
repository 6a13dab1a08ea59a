// End-to-end test of the Breakwater web reader in real headless Chromium.
// Run by tests/web_browser.rs, which starts the real server, fills the spool
// and passes everything in environment variables. Exits non-zero on the
// first failed check; prints one line per check.
import { env, check, launch, pass, screenshots, totp } from "./harness.mjs";
import fs from "node:fs";
import path from "node:path";

const BASE = env("BW_BASE");
const SHOTS = screenshots();
const PIXEL_HOST = env("BW_PIXEL_HOST"); // e.g. 127.0.0.1:PORT, must never be contacted
const PASSWORD = env("BW_PASSWORD");

const browser = await launch();

// Every request any page or frame makes, and every console line: a payload
// that runs logs "XSS-RAN:<kind>"; a tracking pixel would hit PIXEL_HOST.
const requests = [];
const consoleLines = [];
const dialogs = [];
async function newContext(options) {
  const context = await browser.newContext({ acceptDownloads: true, ...options });
  context.on("request", (r) => requests.push(r.url()));
  context.on("page", (p) => watch(p));
  return context;
}
function watch(page) {
  page.on("console", (m) => consoleLines.push(m.text()));
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
}

try {
  // 0. Positive control: the same payloads DO run in an unprotected page,
  // so the "nothing ran" checks below can fail.
  {
    const context = await newContext({});
    await context.route("**/*", (route) => route.abort()); // the control fetches nothing
    const page = await context.newPage();
    watch(page);
    await page.setContent(fs.readFileSync(env("BW_PAYLOAD_FILE"), "utf8"));
    await page.waitForTimeout(500);
    check(consoleLines.some((l) => l.startsWith("XSS-RAN:")), "control: payloads run in an unprotected page");
    consoleLines.length = 0;
    requests.length = 0;
    await context.close();
  }

  // 1. Admin signs in with password + TOTP (Japanese browser, Tokyo time).
  const adminContext = await newContext({ locale: "ja-JP", timezoneId: "Asia/Tokyo", viewport: { width: 1280, height: 900 } });
  const admin = await adminContext.newPage();
  watch(admin);
  await admin.goto(`${BASE}/mail`);
  check(admin.url().startsWith(`${BASE}/login`), "signed-out visit goes to the login page");
  check((await admin.locator("html").getAttribute("lang")) === "ja", "Japanese UI chosen from Accept-Language");
  await admin.fill("input[name=address]", env("BW_ADMIN"));
  await admin.fill("input[name=password]", PASSWORD);
  await admin.click("button[type=submit]");
  await admin.waitForURL(/\/login\/totp/);
  check((await admin.locator("input[name=code]").count()) === 1, "password accepted, TOTP asked");
  await admin.fill("input[name=code]", totp(env("BW_ADMIN_SECRET")));
  await admin.click("button[type=submit]");
  await admin.waitForURL(/\/mail/);
  check((await admin.locator("h1").innerText()) === "受信箱", "TOTP accepted, mailbox shown (in Japanese)");
  const banner = admin.locator(".banner");
  await banner.waitFor({ timeout: 10000 });
  const bannerText = await banner.innerText();
  check(/Exchange Online/.test(bannerText) && /メールを受け付けていません/.test(bannerText), `outage banner in Japanese: ${bannerText.trim()}`);
  await admin.screenshot({ path: path.join(SHOTS, "01-admin-mailbox-banner-ja.png"), fullPage: true });

  // 2. A user reads an ISO-2022-JP message (English browser).
  const userContext = await newContext({ locale: "en-US", timezoneId: "Asia/Tokyo", viewport: { width: 1280, height: 900 } });
  const user = await userContext.newPage();
  watch(user);
  await user.goto(`${BASE}/login`);
  await user.fill("input[name=address]", env("BW_USER"));
  await user.fill("input[name=password]", PASSWORD);
  await user.click("button[type=submit]");
  await user.waitForURL(/\/mail$/);
  check(await user.locator(".banner").isVisible(), "outage banner shown to the user");
  const row = user.locator("td.subject a", { hasText: "障害のお知らせ" });
  check((await row.count()) === 1, "Japanese subject listed in the mailbox");
  await user.screenshot({ path: path.join(SHOTS, "02-user-mailbox-en.png"), fullPage: true });
  await row.click();
  await user.waitForURL(/\/mail\/[0-9A-Z]{26}$/);
  const bodyText = await user.locator("pre.text").innerText();
  check(bodyText.includes("本日の会議は中止です。"), "ISO-2022-JP body rendered as Japanese text");
  check((await user.locator("dl.headers").innerText()).includes("山田"), "encoded-word sender name decoded");
  await user.screenshot({ path: path.join(SHOTS, "03-iso2022jp-message.png"), fullPage: true });

  // 3. The hostile HTML message: rendered, but nothing runs and nothing is fetched.
  await user.goto(`${BASE}/mail/${env("BW_HTML_ID")}`);
  const frameElement = await user.waitForSelector("iframe.mailbody");
  const frame = await frameElement.contentFrame();
  await frame.waitForLoadState("load");
  await user.waitForTimeout(1500); // time for onload/ontoggle/animation payloads
  const heading = await frame.locator("h1").innerText();
  check(heading === "Quarterly report", "sanitised HTML body is rendered in the frame");
  // (The sanitiser drops id attributes, hence alt/text selectors. The frame
  // runs no script at all, so look from outside: a loaded 1x1
  // PNG is 1 px wide; a broken image would show its alt text instead.)
  const inline = frame.locator("img[alt=logo]");
  const box = await inline.boundingBox();
  check((await inline.getAttribute("src")).startsWith("data:image/png;base64,") && box && box.width === 1, "cid: inline image shown from the message's own part");
  check(!consoleLines.some((l) => l.startsWith("XSS-RAN:")), `no payload ran (console: ${consoleLines.join(" | ") || "empty"})`);
  check(dialogs.length === 0, "no dialog opened");
  check((await user.title()) !== "XSS-script", "page title untouched");
  check(!requests.some((u) => u.includes(PIXEL_HOST)), "no request to the tracking host while images are blocked");
  check((await user.locator("#load-images").count()) === 1, "'load remote images' offered");
  const linkRel = await frame.locator("a", { hasText: "report" }).getAttribute("rel");
  check(linkRel === "noopener noreferrer" && (await frame.locator("a", { hasText: "report" }).getAttribute("target")) === "_blank", "links open in a new tab with noopener noreferrer");
  check((await frame.locator("a", { hasText: "click" }).getAttribute("href")) === null, "javascript: link neutralised");
  check((await frame.locator("a", { hasText: "data link" }).getAttribute("href")) === null, "data: link neutralised");
  await user.screenshot({ path: path.join(SHOTS, "04-hostile-html-message.png"), fullPage: true });

  // 4. Download an attachment with a Japanese, path-traversing name.
  const [download] = await Promise.all([
    user.waitForEvent("download"),
    user.locator("section.attachments a", { hasText: "請求書.pdf" }).click(),
  ]);
  check(download.suggestedFilename() === "請求書.pdf", `attachment saved as ${download.suggestedFilename()}`);
  const saved = fs.readFileSync(await download.path());
  check(saved.toString("latin1") === "%PDF-1.4\n", "attachment bytes intact");

  // 5. Another user's message ID gives 404.
  const foreign = await user.goto(`${BASE}/mail/${env("BW_FOREIGN_ID")}`);
  check(foreign.status() === 404, "another user's message is not found");

  // 6. Phone-sized mailbox.
  await user.setViewportSize({ width: 390, height: 844 });
  await user.goto(`${BASE}/mail`);
  await user.screenshot({ path: path.join(SHOTS, "05-mailbox-phone.png"), fullPage: true });
  check(await user.locator("td.subject").first().isVisible(), "mailbox usable on a phone-sized screen");

  // 6b. Redirect targets: wherever `next` points, the browser stays on our site.
  const origin = new URL(BASE).origin;
  for (const next of ["/%09/evil.example", "/%0a/evil.example", "/%5Cevil.example", "//evil.example", "/%20/evil.example"]) {
    for (const site of ["/lang/en", "/login"]) {
      await user.goto(`${BASE}${site}?next=${next}`);
      const landed = new URL(user.url());
      check(landed.origin === origin && landed.pathname === "/mail", `${site}?next=${next} lands on ${landed.origin}${landed.pathname}`);
    }
  }

  // 7. The admin holds and releases a message from its detail page.
  await admin.goto(`${BASE}/admin/message/${env("BW_FOREIGN_ID")}`);
  await admin.click("button[value=hold]");
  await admin.waitForURL(/done=/);
  check((await admin.locator("h1 .badge").innerText()) === "held", "message held from the admin page");
  await admin.screenshot({ path: path.join(SHOTS, "06-admin-held.png"), fullPage: true });
  await admin.click("button[value=release]");
  await admin.waitForURL(/done=release/);
  check((await admin.locator("h1 .badge").innerText()) !== "held", "message released");
  await admin.goto(`${BASE}/admin/audit?action=web-admin-hold`);
  check((await admin.locator("table.audit tbody tr").count()) >= 1, "hold shows in the audit log viewer");
  await admin.screenshot({ path: path.join(SHOTS, "07-audit-log.png"), fullPage: true });

  check(!consoleLines.some((l) => l.startsWith("XSS-RAN:")), "still no payload ran at the end");
  check(!requests.some((u) => !u.startsWith(BASE) && !u.startsWith("data:") && !u.startsWith("about:")), `no request left the server (${requests.filter((u) => !u.startsWith(BASE)).join(", ") || "none"})`);
  pass();
} catch (err) {
  console.error(err.stack || String(err));
  process.exitCode = 1;
} finally {
  await browser.close();
}

// Sending during an outage in real headless Chromium, on a phone-sized
// screen in Japanese: open a spooled message, reply with an attachment,
// see it on the Sent page with each recipient's status. Run by
// tests/web_browser.rs, which checks what the outside MX received.
import { env, check, launch, pass, screenshots } from "./harness.mjs";
import path from "node:path";

const BASE = env("BW_BASE");
const SHOTS = screenshots();
const browser = await launch();

try {
  const context = await browser.newContext({
    locale: "ja-JP",
    timezoneId: "Asia/Tokyo",
    viewport: { width: 390, height: 844 },
    isMobile: true,
    hasTouch: true,
  });
  const page = await context.newPage();
  await page.goto(`${BASE}/login`);
  await page.fill("input[name=address]", env("BW_USER"));
  await page.fill("input[name=password]", env("BW_PASSWORD"));
  await page.click("button[type=submit]");
  await page.waitForURL(/\/mail/);
  await page.goto(`${BASE}/mail/${env("BW_MESSAGE_ID")}`);
  const reply = page.locator(`a.reply[href="/mail/compose?reply=${env("BW_MESSAGE_ID")}"]`);
  check((await reply.count()) === 1, "the message page offers Reply");
  await reply.click();
  await page.waitForURL(/\/mail\/compose/);
  check((await page.locator("h1").innerText()) === "メールの作成", "compose page in Japanese");
  check((await page.inputValue("input[name=subject]")).startsWith("Re: "), "subject prefilled with Re:");
  check((await page.inputValue("input[name=to]")) === env("BW_REPLY_TO"), "To is the original's sender");
  check((await page.inputValue("select[name=from]")) === env("BW_USER"), "From is the user's own address");
  check((await page.inputValue("textarea[name=text]")).includes("> "), "the original is quoted");
  await page.fill("textarea[name=text]", "ご連絡ありがとうございます。資料を添付します。\n\n" + (await page.inputValue("textarea[name=text]")));
  await page.setInputFiles("input[type=file][name=attachment]", env("BW_ATTACHMENT"));
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `no sideways scrolling on a phone (overflow ${overflow}px)`);
  await page.screenshot({ path: path.join(SHOTS, "10-compose-reply-phone-ja.png"), fullPage: true });
  await page.click("form.compose button[type=submit]");
  await page.waitForSelector("h1:has-text('送信しました')");
  check(/キュー ID/.test(await page.locator("main").innerText()), "sent, with its queue ID");

  // The Sent page: the reply, its recipient, its status (delivered once
  // the outside MX has taken it).
  await page.click("header nav a[href='/mail/sent']");
  await page.waitForURL(/\/mail\/sent/);
  check((await page.locator("h1").innerText()) === "送信済み", "Sent page in Japanese");
  let status = "";
  for (let i = 0; i < 50; i++) {
    status = await page.locator("table.sent tbody tr").first().locator("td.status").innerText();
    if (status.includes("配送済み")) break;
    await page.waitForTimeout(200);
    await page.reload();
  }
  check(status.includes(env("BW_REPLY_TO")) && status.includes("配送済み"), `recipient delivered: ${status.trim()}`);
  check(status.includes("控え"), "the copy for the user's mailbox is shown");
  const sentOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(sentOverflow <= 1, `Sent page fits a phone (overflow ${sentOverflow}px)`);
  await page.screenshot({ path: path.join(SHOTS, "11-sent-phone-ja.png"), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.screenshot({ path: path.join(SHOTS, "12-sent-desktop-ja.png"), fullPage: true });
  pass();
} finally {
  await browser.close();
}

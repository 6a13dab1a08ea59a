// Breakwater web reader: progressive enhancement only. Every page works
// without this file; the CSP allows no inline script, only this one.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Dates: show in the browser's own time zone and locale.
  const lang = document.documentElement.lang || "en";
  const format = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" });
  for (const el of document.querySelectorAll("time[data-ms]")) {
    const ms = Number(el.dataset.ms);
    if (Number.isFinite(ms)) {
      el.title = el.textContent;
      el.textContent = format.format(new Date(ms));
    }
  }
  // Destructive admin buttons ask first.
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.dataset.confirm)) {
      event.preventDefault();
    }
  });
  // Size the mail frame to its content (same-origin content is not
  // readable from here by design, so use a generous viewport height).
  for (const frame of document.querySelectorAll("iframe.mailbody")) {
    frame.style.height = Math.max(400, window.innerHeight - frame.getBoundingClientRect().top - 24) + "px";
  }
});

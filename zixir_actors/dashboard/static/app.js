// zixir dashboard: live fragments by short polling, confirmations. No library, no build.
"use strict";

(function () {
  const body = document.body;
  let submitting = false;     // a form is on its way: stop swapping the page under it

  // Forms that ask before they act (cancel, discard).
  document.addEventListener("submit", (event) => {
    const form = event.target;
    const question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    submitting = true;
    const button = form.querySelector("button[type=submit]");
    if (button) {
      button.disabled = true;
      button.classList.add("busy");
    }
  });

  // Live parts: the server renders the fragments, this only swaps them in.
  const url = body.getAttribute("data-live");
  if (!url) return;
  const every = 1000 * parseFloat(body.getAttribute("data-interval") || "2");
  let timer = null;
  let failures = 0;
  let stopAfterNext = false;

  function paint(fragments) {
    if (submitting) return;
    for (const [id, html] of Object.entries(fragments)) {
      const node = document.getElementById(id);
      if (!node || node.innerHTML === html) continue;
      // Never under the user's hands: a field being typed in, an open "send event" form.
      const active = document.activeElement;
      if (active && active !== body && node.contains(active)) continue;
      if (node.querySelector("details.send[open]")) continue;
      // Keep the <details> the user opened or closed as they were.
      const opened = Array.from(node.querySelectorAll("details")).map((d) => d.open);
      node.innerHTML = html;
      const now = node.querySelectorAll("details");
      if (now.length === opened.length) now.forEach((d, i) => { d.open = opened[i]; });
    }
  }

  async function tick() {
    timer = null;
    if (submitting) return;
    if (document.hidden) { schedule(); return; }
    try {
      const response = await fetch(url, { headers: { "Accept": "application/json" },
                                          credentials: "same-origin" });
      if (!response.ok) throw new Error(String(response.status));
      const data = await response.json();
      paint(data.fragments || {});
      failures = 0;
      body.classList.remove("offline");
      const ended = ["succeeded", "failed", "cancelled", "timed_out"];
      if (data.status && ended.includes(data.status)) {
        if (stopAfterNext) return;      // one more round picks up the last writes
        stopAfterNext = true;
      } else {
        stopAfterNext = false;
      }
    } catch (err) {
      failures += 1;
      body.classList.add("offline");
    }
    schedule();
  }

  function schedule() {
    if (timer === null) timer = window.setTimeout(tick, every * Math.min(1 + failures, 5));
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(); });
  schedule();
})();

// Live updates: re-fetch the server's rendering of the content every POLL_MS (and at once when
// a filter changes), swap it in when it differs, and keep open <details> open.
"use strict";
(function () {
  const POLL_MS = 1000;
  const content = document.getElementById("content");
  const form = document.getElementById("filters");
  const live = document.getElementById("live");
  let current = content.innerHTML;
  let timer = null;
  let debounce = null;

  function query() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (String(value).trim()) params.set(name, String(value).trim());
    }
    return params.toString();
  }

  function openKeys() {
    return new Set(
      Array.from(content.querySelectorAll("details[open]"), (d) => d.dataset.key)
    );
  }

  async function refresh() {
    clearTimeout(timer);
    const q = query();
    try {
      const response = await fetch("/_sandbox/inbox" + (q ? "?" + q : ""), { cache: "no-store" });
      if (!response.ok) throw new Error(String(response.status));
      const text = await response.text();
      if (q !== query()) return; // a newer filter is on its way
      if (text !== current) {
        const open = openKeys();
        content.innerHTML = text;
        current = text;
        for (const d of content.querySelectorAll("details[data-key]")) {
          if (open.has(d.dataset.key)) d.open = true;
        }
      }
      live.textContent = "live · " + new Date().toLocaleTimeString();
      live.classList.remove("lost");
    } catch (err) {
      live.textContent = "sandbox unreachable, retrying…";
      live.classList.add("lost");
    } finally {
      timer = setTimeout(refresh, POLL_MS);
    }
  }

  function filtersChanged() {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      const q = query();
      history.replaceState(null, "", q ? "?" + q : location.pathname);
      refresh();
    }, 200);
  }

  form.addEventListener("input", filtersChanged);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    filtersChanged();
  });
  timer = setTimeout(refresh, POLL_MS);
})();

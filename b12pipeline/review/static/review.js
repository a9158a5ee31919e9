// b12pipeline review: the little the pages need beyond HTML forms. Served from the package; no CDN.
"use strict";

function csrfToken() {
  const meta = document.querySelector("meta[name='csrf-token']");
  return meta ? meta.content : "";
}

// Show only the fields the chosen action uses (the comment field is always there).
function wireActionFields(form) {
  const select = form.querySelector(".action-select");
  if (!select) return;
  const uses = { assign: ["assign"], dismiss: ["dismiss"], defer: ["defer"] };
  const update = () => {
    const wanted = uses[select.value] || [];
    form.querySelectorAll("label[data-for]").forEach((label) => {
      const key = label.dataset.for;
      label.hidden = !(key === "any" || wanted.includes(key));
    });
  };
  select.addEventListener("change", update);
  update();
}

// The queue page: select every row on the page; filters apply as soon as a select changes.
function wireQueue() {
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll("input.pick").forEach((box) => { box.checked = all.checked; });
    });
  }
  const filters = document.getElementById("filters");
  if (filters) {
    filters.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => filters.requestSubmit()));
  }
}

// The finding page: an action is a PATCH to the JSON API; the page reloads to show the new state.
function wireFindingActions() {
  const form = document.getElementById("act");
  if (!form) return;
  const error = document.getElementById("act-error");
  const statusFor = { start: "in_progress", fix: "fixed", dismiss: "dismissed", defer: "deferred", reopen: "open" };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const action = data.get("action");
    const body = {};
    if (statusFor[action]) body.status = statusFor[action];
    if (action === "assign") body.owner = data.get("owner");
    if (action === "dismiss") body.reason = data.get("reason");
    if (action === "defer") body.until = data.get("until");
    if (data.get("comment")) body.comment = data.get("comment");
    form.querySelectorAll("label.invalid").forEach((l) => l.classList.remove("invalid"));
    error.hidden = true;
    const response = await fetch("/api/findings/" + encodeURIComponent(form.dataset.finding), {
      method: "PATCH",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken(), "If-Match": form.dataset.version },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    if (response.ok) {
      window.location.reload();
      return;
    }
    const answer = await response.json().catch(() => ({ error: "the server did not answer" }));
    error.textContent = answer.error || "not saved";
    error.hidden = false;
    if (answer.field) {
      const input = form.querySelector("[name='" + answer.field + "']");
      if (input && input.closest("label")) input.closest("label").classList.add("invalid");
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form.act, form.bulk").forEach(wireActionFields);
  wireQueue();
  wireFindingActions();
});

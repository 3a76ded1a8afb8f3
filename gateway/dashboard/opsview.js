// The operator's panels of the dashboard: task search with filters and paging, a task's
// timeline (its story: GET /v1/tasks/{id}/events?format=json), and dead letters (operator
// tokens only: a tenant token gets 403 from /v1/dlq and the panel stays hidden).
"use strict";
(() => {
  const token = new URLSearchParams(location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const main = document.querySelector("main");
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    for (const k of kids) e.append(k);
    return e;
  };
  const api = async (path, opts = {}) => {
    const r = await fetch(path, { ...opts, headers: { ...headers, ...(opts.headers || {}) } });
    const body = r.status === 204 ? null : await r.json();
    return { status: r.status, body };
  };

  // --- task search -----------------------------------------------------------------------
  const tasks = el("section", { class: "wide", id: "tasks-panel" });
  tasks.innerHTML = `<h2>Tasks</h2>
    <div style="display:flex;gap:.5rem;align-items:center">
      <select id="f-status"><option value="">any status</option>
        ${["queued", "running", "retry_scheduled", "succeeded", "failed", "dead_lettered", "cancelled"]
          .map((s) => `<option>${s}</option>`).join("")}</select>
      <select id="f-kind"><option value="">any kind</option><option>text</option><option>chat</option><option>image</option></select>
      <input id="f-provider" placeholder="provider" style="width:10rem;margin:0">
      <button id="f-search">Search</button><button id="f-next" disabled>Next page</button>
      <span id="f-error" style="color:#c62828"></span>
    </div>
    <table><thead><tr><th>task</th><th>tenant</th><th>kind</th><th>status</th><th>provider</th><th>attempts</th><th>fallbacks</th><th>requested</th></tr></thead>
    <tbody id="tasks"></tbody></table>`;
  const timeline = el("section", { class: "wide", id: "timeline-panel", hidden: "" });
  timeline.innerHTML = `<h2>Timeline of <code id="tl-id"></code> <b id="tl-status"></b></h2>
    <div id="tl-summary"></div>
    <table><thead><tr><th>+ms</th><th>attempt</th><th>event</th><th>what happened</th></tr></thead><tbody id="timeline"></tbody></table>
    <div id="tl-attempts"></div>`;
  main.append(tasks, timeline);
  let cursor = null;

  async function search(next) {
    const q = new URLSearchParams({ limit: "20" });
    for (const f of ["status", "kind", "provider"]) {
      const v = document.getElementById("f-" + f).value.trim();
      if (v) q.set(f, v);
    }
    if (next && cursor) q.set("cursor", cursor);
    const { status, body } = await api("/v1/tasks?" + q);
    const err = document.getElementById("f-error");
    if (status !== 200) { err.textContent = body.error.code + ": " + body.error.message; return; }
    err.textContent = "";
    cursor = body.next_cursor;
    document.getElementById("f-next").disabled = !cursor;
    const tb = document.getElementById("tasks");
    tb.replaceChildren();
    for (const t of body.tasks) {
      const tr = tb.insertRow();
      tr.dataset.taskId = t.task_id; tr.style.cursor = "pointer";
      tr.insertCell().append(el("code", {}, t.task_id.slice(0, 12)));
      for (const v of [t.tenant, t.kind, t.status, t.provider, t.attempts, t.fallbacks]) tr.insertCell().textContent = v ?? "";
      tr.cells[3].className = "status-" + t.status;
      tr.insertCell().textContent = t.requested_ts ? new Date(t.requested_ts).toLocaleTimeString() : "";
      tr.onclick = () => openStory(t.task_id);
    }
  }
  document.getElementById("f-search").onclick = () => search(false);
  document.getElementById("f-next").onclick = () => search(true);

  async function openStory(taskId) {
    const { status, body } = await api(`/v1/tasks/${encodeURIComponent(taskId)}/events?format=json`);
    if (status !== 200) return;
    timeline.hidden = false;
    document.getElementById("tl-id").textContent = body.task_id;
    const st = document.getElementById("tl-status");
    st.textContent = body.status; st.className = "status-" + body.status;
    const parts = [];
    if (body.provider) parts.push(`served by ${body.provider}/${body.model} in ${body.latency_ms} ms`);
    if (body.fallbacks.length) parts.push(body.fallbacks.map((f) => `fallback ${f.from} → ${f.to} (${f.error_class})`).join(", "));
    if (body.retries.length) parts.push(`${body.retries.length} retries (delays ${body.retries.map((r) => r.delay_ms + " ms").join(", ")})`);
    if (body.usage) parts.push(`tokens ${body.usage.input_tokens} in / ${body.usage.output_tokens} out`);
    if (body.cost_usd !== null) parts.push("$" + Number(body.cost_usd).toFixed(6));
    if (body.dead_reason) parts.push("dead-lettered: " + body.dead_reason);
    document.getElementById("tl-summary").textContent = parts.join(" · ");
    const tb = document.getElementById("timeline");
    tb.replaceChildren();
    for (const e of body.events) {
      const tr = tb.insertRow();
      for (const v of [e.offset_ms, e.attempt ?? "", e.type, e.summary]) tr.insertCell().textContent = v;
    }
    const at = document.getElementById("tl-attempts");
    at.replaceChildren();
    for (const a of body.attempts) {
      const calls = a.calls.map((c) => `${c.provider}/${c.model || "-"} ${c.outcome}${c.error_class ? " " + c.error_class : ""}${c.latency_ms !== null ? " " + c.latency_ms + " ms" : ""}`);
      at.append(el("div", { class: "attempt" }, `attempt ${a.attempt} (${a.outcome || "running"}): ${calls.join("; ")}`));
    }
    timeline.scrollIntoView({ block: "nearest" });
  }
  window.aiisOpenStory = openStory;
  // a row of "Recent tasks" (the page's own table) opens its timeline too
  const recent = document.getElementById("recent");
  if (recent) {
    recent.style.cursor = "pointer";
    recent.addEventListener("click", (e) => {
      const tr = e.target.closest("tr");
      if (tr && tr.dataset.taskId) openStory(tr.dataset.taskId);
    });
  }

  // --- dead letters (operator tokens only) ---------------------------------------------------
  const dead = el("section", { class: "wide", id: "dlq-panel", hidden: "" });
  dead.innerHTML = `<h2>Dead letters</h2>
    <div><button id="dlq-retry">Retry selected</button> <button id="dlq-purge">Purge all</button> <span id="dlq-msg"></span></div>
    <table><thead><tr><th></th><th>task</th><th>tenant</th><th>reason</th><th>attempt</th><th>last error</th><th>when</th></tr></thead><tbody id="dlq"></tbody></table>`;
  main.append(dead);

  function lastError(raw) { // the entry's error field: JSON of the dead letter's data, or text
    try {
      const e = JSON.parse(raw).error;
      return e ? `${e.error_class}: ${e.message}` : raw;
    } catch (_) { return raw; }
  }

  async function loadDead() {
    const { status, body } = await api("/v1/dlq?limit=100");
    if (status !== 200) { dead.remove(); return; } // a tenant token: no controls at all
    dead.hidden = false;
    const tb = document.getElementById("dlq");
    tb.replaceChildren();
    for (const d of body.dead_letters) {
      const tr = tb.insertRow();
      const box = el("input", { type: "checkbox", value: d.task_id, class: "dlq-pick", style: "width:auto" });
      tr.insertCell().append(box);
      tr.insertCell().append(el("code", {}, d.task_id));
      for (const v of [d.tenant, d.reason, d.attempt, lastError(d.error)]) tr.insertCell().textContent = v;
      tr.insertCell().textContent = d.ts ? new Date(d.ts).toLocaleTimeString() : "";
    }
    if (!body.dead_letters.length) tb.insertRow().insertCell().textContent = "no dead letters";
  }
  document.getElementById("dlq-retry").onclick = async () => {
    const ids = [...document.querySelectorAll(".dlq-pick:checked")].map((b) => b.value);
    if (!ids.length) return;
    const { body } = await api("/v1/dlq/retry", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ task_ids: ids }),
    });
    document.getElementById("dlq-msg").textContent =
      body.retried.map((r) => `retried ${r.task_id.slice(0, 12)} as ${r.new_task_id}`).join(", ") +
      body.errors.map((e) => ` ${e.task_id.slice(0, 12)}: ${e.message}`).join(",");
    loadDead();
  };
  document.getElementById("dlq-purge").onclick = async () => {
    if (!confirm("Delete every dead-letter entry?")) return;
    const { body } = await api("/v1/dlq/purge", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    document.getElementById("dlq-msg").textContent = `purged ${body.purged}`;
    loadDead();
  };

  search(false);
  loadDead();
})();

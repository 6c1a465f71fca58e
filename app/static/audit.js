// The audit log for auditors and admins: every action, newest first, and a check of its hash chain.
import {api} from "./api.js";
import {date, esc, short} from "./format.js";

// API rows name `job:<id>` / `model:<id>`; worker rows the bare id, whose kind the action tells.
function subject(text, action) {
  let [kind, id] = text.includes(":") ? text.split(":", 2) : ["", text];
  if (!kind) kind = action.startsWith("job.") ? "job" : /^(model|version)\./.test(action) ? "model" : "";
  if (kind === "job") return `<a href="#/jobs/${encodeURIComponent(id)}">job ${short(id)}</a>`;
  if (kind === "model") return `<a href="#/models">model ${short(id)}</a>`;
  return esc(text);
}

function row(e) {
  const details = JSON.stringify(e.details);
  return `<tr><td data-label="When">${esc(date(e.at))}</td><td data-label="Who" title="${esc(e.actor)}">${esc(e.actor_name || e.actor)}</td>
    <td data-label="Action"><code>${esc(e.action)}</code></td><td data-label="Subject">${subject(e.subject, e.action)}</td>
    <td data-label="Details" class="details"><code title="${esc(details)}">${esc(details.length > 160 ? details.slice(0, 160) + "…" : details)}</code></td></tr>`;
}

const FORM = `<form class="filters" id="audit-filters">
  <label>Action <input name="action" placeholder="job.* or model.promote" size="16"></label>
  <label>Job id <input name="job_id" size="16"></label><label>Model id <input name="model_id" size="16"></label>
  <button type="submit">Filter</button> <button type="button" id="verify" class="quiet">Check the hash chain</button>
</form><div id="verdict"></div>`;

export async function auditPage(view, ctx) {
  if (!["admin", "auditor"].includes(ctx.me.role)) {
    view.innerHTML = `<h1>Audit log</h1><p class="card">The audit log is for auditors and admins; your key's role is ${esc(ctx.me.role)}.</p>`;
    return;
  }
  view.innerHTML = `<h1>Audit log</h1><p class="hint">Append-only: each row's hash covers the row before it, so an edited or
    deleted row is found by the check.</p>${FORM}
    <table class="cards audit"><thead><tr><th>When</th><th>Who</th><th>Action</th><th>Subject</th><th>Details</th></tr></thead>
    <tbody id="audit-rows"></tbody></table><button id="audit-more" type="button" class="quiet" hidden>Older entries</button>`;
  const form = view.querySelector("#audit-filters");
  const body = view.querySelector("#audit-rows");
  const more = view.querySelector("#audit-more");
  let cursor = null;
  const load = async (append) => {
    const query = new URLSearchParams({limit: "50"});
    for (const [name, value] of new FormData(form)) if (String(value).trim()) query.set(name, String(value).trim());
    if (append && cursor) query.set("cursor", cursor);
    const page = await api(`/v1/audit?${query}`);
    body.insertAdjacentHTML(append ? "beforeend" : "afterbegin", page.items.map(row).join(""));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  };
  form.addEventListener("submit", (ev) => { ev.preventDefault(); body.innerHTML = ""; load(false).catch(ctx.fail); });
  more.addEventListener("click", () => load(true).catch(ctx.fail));
  view.querySelector("#verify").addEventListener("click", async () => {
    const v = await api("/v1/audit/verify").catch(ctx.fail);
    if (!v) return;
    view.querySelector("#verdict").innerHTML = v.intact
      ? `<p class="verdict ok">The chain is intact: ${esc(v.rows)} rows.</p>`
      : `<div class="verdict no"><strong>The chain is broken:</strong><ul>${v.problems.map((p) => `<li>${esc(p)}</li>`).join("")}</ul></div>`;
  });
  await load(false);
}

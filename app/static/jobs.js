// The jobs page: filters, a table that updates live, the GDPR deadline of every erasure.
import {api} from "./api.js";
import {due, date, esc, progressCell, short, stateBadge} from "./format.js";
import {Live} from "./live.js";

const REFRESH_MS = 5000;
const KINDS = {forget_identity: "erasure", rebalance_attribute: "rebalance"};

function row(job, models) {
  const d = due(job);
  const model = models.get(job.model_id);
  return `<tr data-job="${esc(job.id)}" data-state="${esc(job.state)}">
    <td data-label="Subject"><div><a href="#/jobs/${encodeURIComponent(job.id)}">${esc(job.subject_ref)}</a>
      <div class="sub">job ${short(job.id)}</div></div></td>
    <td data-label="Kind">${esc(KINDS[job.kind] || job.kind)}</td>
    <td data-label="State" class="state">${stateBadge(job.state)}</td>
    <td data-label="Progress" class="progress">${progressCell(job)}</td>
    <td data-label="GDPR due" class="due ${d.cls}" title="${esc(d.title)}">${esc(d.text)}</td>
    <td data-label="Model">${esc(model ? model.name : short(job.model_id))}${job.version ? ` → v${esc(job.version)}` : ""}</td>
    <td data-label="Submitted">${esc(date(job.created_at))}</td></tr>`;
}

const FILTERS = `<form class="filters" id="filters">
  <label>State <select name="status"><option value="">any</option><option>queued</option><option>running</option>
    <option>succeeded</option><option>failed</option><option>cancelled</option></select></label>
  <label>Kind <select name="kind"><option value="">any</option><option value="forget_identity">erasure</option>
    <option value="rebalance_attribute">rebalance</option></select></label>
  <span class="hint">Updates live. An erasure is due one calendar month after it was submitted (GDPR Art. 12(3)).</span>
</form>`;

export async function jobsPage(view, ctx) {
  view.innerHTML = `<h1>Jobs</h1>${FILTERS}
    <table class="cards jobs"><thead><tr><th>Subject</th><th>Kind</th><th>State</th><th>Progress</th>
    <th>GDPR due</th><th>Model</th><th>Submitted</th></tr></thead><tbody id="job-rows"></tbody></table>
    <p id="jobs-empty" class="empty" hidden>No jobs match.</p>
    <button id="more" type="button" class="quiet" hidden>Show older jobs</button>`;
  const form = view.querySelector("#filters");
  const body = view.querySelector("#job-rows");
  const models = new Map((await api("/v1/models")).items.map((m) => [m.id, m]));
  let shown = 50;
  const render = (job) => {
    const old = body.querySelector(`tr[data-job="${CSS.escape(job.id)}"]`);
    if (old) old.outerHTML = row(job, models);
  };
  const live = new Live(render);
  const load = async () => {
    const filters = new URLSearchParams({limit: String(shown)});
    for (const [name, value] of new FormData(form)) if (value) filters.set(name, value);
    const page = await api(`/v1/jobs?${filters}`);
    body.innerHTML = page.items.map((job) => row(job, models)).join("");
    view.querySelector("#jobs-empty").hidden = page.items.length > 0;
    view.querySelector("#more").hidden = !page.next_cursor || shown >= 200;
    page.items.forEach((job) => live.watch(job));
  };
  form.addEventListener("change", () => load().catch(ctx.fail));
  view.querySelector("#more").addEventListener("click", () => { shown = Math.min(200, shown + 50); load().catch(ctx.fail); });
  await load();
  const timer = setInterval(() => load().catch(ctx.fail), REFRESH_MS);
  return () => { clearInterval(timer); live.stop(); };
}

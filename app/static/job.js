// One job: what was asked, where it stands (live), its GDPR deadline, uploads, and its report.
import {api} from "./api.js";
import {TERMINAL, date, due, esc, progressCell, stateBadge} from "./format.js";
import {Live} from "./live.js";
import {reportSection} from "./report.js";

function facts(job) {
  const d = due(job);
  const rows = [["Kind", job.kind], ["Subject (your ticket)", job.subject_ref], ["Job id", job.id],
    ["Model", `${job.model_id}${job.base_version ? ` (from v${job.base_version})` : ""}`],
    ["Version produced", job.version ? `v${job.version}` : "—"], ["Submitted", date(job.created_at)],
    ["Started", date(job.started_at)], ["Finished", date(job.finished_at)], ["Attempts", job.attempts]];
  const cells = rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  return `<dl class="facts">${cells}<dt>GDPR due</dt><dd class="${d.cls}">${esc(d.text)}</dd>
    <dt>Parameters</dt><dd><code>${esc(JSON.stringify(job.parameters))}</code></dd></dl>`;
}

function uploads(job) {
  if (!(job.uploads || []).length) return "";
  const rows = job.uploads.map((u) => `<tr><td>${esc(u.field)}</td><td>${esc(u.name)}</td>
    <td><code title="${esc(u.sha256)}">${esc(u.sha256.slice(0, 12))}</code></td><td>${esc(u.excluded_reason || "")}</td></tr>`).join("");
  return `<h2>Uploaded images</h2><p class="hint">The images themselves are deleted when the job ends; their SHA-256s stay.</p>
    <div class="scroll"><table class="numbers"><thead><tr><th>field</th><th>name</th><th>SHA-256</th><th>left out</th></tr></thead>
    <tbody>${rows}</tbody></table></div>`;
}

function head(job, me) {
  const cancel = !TERMINAL.includes(job.state) && me.role !== "auditor"
    ? `<button type="button" id="cancel" class="danger">Cancel this job</button>` : "";
  const error = job.error ? `<p class="error-box">${esc(job.error)}</p>` : "";
  return `<p class="crumbs"><a href="#/jobs">← Jobs</a></p>
    <h1>${esc(job.subject_ref)} ${stateBadge(job.state)}</h1>${error}
    <div class="card wide">${progressCell(job)}</div>${cancel}`;
}

async function webhooks(el, job) {
  if (!job.callback_url) return;
  const events = (await api(`/v1/jobs/${encodeURIComponent(job.id)}/webhooks`)).items;
  const rows = events.map((e) => `<tr><td><code>${esc(e.event_type)}</code></td><td>${stateBadge(e.state === "delivered" ? "succeeded" : e.state === "failed" ? "failed" : "queued")} ${esc(e.state)}</td>
    <td>${e.deliveries.map((d) => `${esc(d.status_code ?? "no answer")}${d.error && !d.status_code ? ` (${esc(d.error)})` : ""}`).join(", ") || "not sent yet"}</td>
    <td>${esc(date(e.delivered_at || e.next_attempt_at))}</td></tr>`).join("");
  el.innerHTML = `<h2>Webhooks</h2><p class="hint">Signed POSTs to <code>${esc(job.callback_url)}</code>, retried until a 2xx answer.</p>
    <div class="scroll"><table class="numbers"><thead><tr><th>event</th><th>state</th><th>answers, in order</th><th>delivered / next try</th></tr></thead>
    <tbody>${rows || '<tr><td colspan="4" class="empty">No event yet.</td></tr>'}</tbody></table></div>`;
}

export async function jobPage(view, ctx, jobId) {
  let job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
  view.innerHTML = `<div id="job-head"></div><div class="grid2"><section><h2>Request</h2><div id="job-facts"></div></section>
    <section id="job-uploads"></section></div><section id="job-webhooks"></section><h2>Report</h2><section id="job-report"></section>`;
  const draw = () => {
    view.querySelector("#job-head").innerHTML = head(job, ctx.me);
    view.querySelector("#job-facts").innerHTML = facts(job);
    view.querySelector("#job-uploads").innerHTML = uploads(job);
    const cancel = view.querySelector("#cancel");
    if (cancel) cancel.onclick = async () => {
      job = await api(`/v1/jobs/${encodeURIComponent(job.id)}:cancel`, {method: "POST"}).catch(ctx.fail) || job;
      draw();
    };
  };
  draw();
  await reportSection(view.querySelector("#job-report"), job);
  webhooks(view.querySelector("#job-webhooks"), job).catch(ctx.fail);
  const live = new Live((snapshot) => {
    const ended = !TERMINAL.includes(job.state) && TERMINAL.includes(snapshot.state);
    job = snapshot;
    draw();
    if (ended) reportSection(view.querySelector("#job-report"), job).catch(ctx.fail);
    if (ended) webhooks(view.querySelector("#job-webhooks"), job).catch(ctx.fail);
  });
  live.watch(job);
  return () => live.stop();
}

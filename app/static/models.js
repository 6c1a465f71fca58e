// Models and their version chains: which job made each version, the erasures each carries, which is current,
// downloads, and for admins promotion and rollback (moving back past an erasure needs a reason and is audited).
import {api, ApiError, blob, saveBlob} from "./api.js";
import {date, esc, short} from "./format.js";

// Every erasure a version carries (each later version carries all earlier ones: they form one chain).
function carried(v) {
  const erasures = v.erasures || [];
  if (!erasures.length) return '<p class="hint erasures">carries no erasure</p>';
  const items = erasures.map((e) => `<li><strong>${esc(e.subject_ref)}</strong> · job
    <a href="#/jobs/${encodeURIComponent(e.job_id)}">${short(e.job_id)}</a> · v${esc(e.version)} · ${esc(date(e.erased_at, false))}</li>`).join("");
  return `<details class="erasures"><summary>carries ${erasures.length} erasure${erasures.length === 1 ? "" : "s"}</summary>
    <ul>${items}</ul></details>`;
}

function node(model, v, me) {
  const current = v.version === model.current_version;
  const made = v.job_id ? `made by job <a href="#/jobs/${encodeURIComponent(v.job_id)}">${short(v.job_id)}</a>` : "the uploaded base model";
  const promote = me.role === "admin" && !current
    ? `<button type="button" class="quiet" data-promote="${v.version}">${v.version < model.current_version ? "Roll back to" : "Make"} v${v.version}${v.version < model.current_version ? "" : " current"}</button>` : "";
  const download = me.role !== "operator" ? `<button type="button" class="quiet" data-download="${v.version}">Download</button>` : "";
  return `<li class="version ${current ? "current" : ""}">
    <div class="vhead"><strong>v${esc(v.version)}</strong>${current ? ' <span class="badge succeeded">current</span>' : ""}
      ${v.parent ? `<span class="sub">child of v${esc(v.parent)}</span>` : ""}</div>
    <div class="sub">${made}</div>
    <div class="sub">${esc(date(v.created_at))} · <code title="${esc(v.sha256)}">${esc(v.sha256.slice(0, 12))}</code>${v.promoted ? "" : " · never promoted"}${v.remember_revision ? ` · remember set r${esc(v.remember_revision)}` : ""}</div>
    ${carried(v)}
    <div class="actions">${download}${promote}</div></li>`;
}

function card(model, versions, me) {
  const chain = versions.map((v) => node(model, v, me)).join('<li class="arrow" aria-hidden="true">→</li>');
  return `<section class="card model" data-model="${esc(model.id)}">
    <h2>${esc(model.name)} <span class="sub">${short(model.id)} · ${esc(model.image_size)}² × ${esc(model.channels)} · ${esc(model.n_bits)} bits</span></h2>
    <p class="hint">Current version: <strong>v${esc(model.current_version)}</strong>.${model.require_promotion
      ? " New versions become current only when an admin promotes them." : " Each successful job's version becomes current."}</p>
    <ol class="chain">${chain}</ol><div class="promote-panel"></div></section>`;
}

function rollbackForm(err, version) {
  const undone = (err.details || []).map((e) => `<li>v${esc(e.version)}: erasure of <strong>${esc(e.subject_ref)}</strong>
    (job <a href="#/jobs/${encodeURIComponent(e.job_id)}">${short(e.job_id)}</a>)</li>`).join("");
  return `<div class="warn-box"><p><strong>Rolling back to v${esc(version)} would bring back people who were erased:</strong></p>
    <ul>${undone}</ul><p class="hint">Their photos stay deleted: the older checkpoint is served, and the next job still starts
    from the newest version.</p><label>Reason (kept in the audit log) <textarea name="reason" rows="2" required></textarea></label>
    <button type="button" class="danger" data-force="${esc(version)}">Roll back anyway</button>
    <button type="button" class="quiet" data-dismiss>Keep the current version</button></div>`;
}

async function promote(ctx, section, model, version, force) {
  const panel = section.querySelector(".promote-panel");
  const reason = force ? (panel.querySelector("textarea") || {}).value || "" : undefined;
  if (force && !reason.trim()) return ctx.toast("Give a reason for the rollback.");
  try {
    await api(`/v1/models/${encodeURIComponent(model.id)}/versions/${version}:promote`,
      {method: "POST", json: force ? {force: true, reason} : {}});
    ctx.toast(`v${version} of ${model.name} is now current.`);
    ctx.reload();
  } catch (e) {
    if (e instanceof ApiError && e.code === "erasure_rollback") panel.innerHTML = rollbackForm(e, version);
    else ctx.fail(e);
  }
}

async function download(model, version) {
  const path = `/v1/models/${encodeURIComponent(model.id)}/versions/${version}/checkpoint`;
  const link = await api(`${path}?link=true`);
  if (link.url) window.location.assign(link.url);  // presigned (S3): straight from the store
  else saveBlob(await blob(path), `${model.name}-v${version}.safetensors`);
}

export async function modelsPage(view, ctx) {
  const models = (await api("/v1/models")).items;
  const chains = await Promise.all(models.map((m) => api(`/v1/models/${encodeURIComponent(m.id)}/versions`)));
  view.innerHTML = `<div class="models-page"><h1>Models</h1><p class="hint">Each job on a model starts from its newest version, so the versions form
    one chain and every erasure carries into every later version.</p>
    ${models.map((m, i) => card(m, chains[i].items, ctx.me)).join("") || '<p class="empty">No models registered yet.</p>'}</div>`;
  view.firstElementChild.addEventListener("click", (ev) => {
    const section = ev.target.closest("[data-model]");
    if (!section) return;
    const model = models.find((m) => m.id === section.dataset.model);
    const t = ev.target.dataset;
    if (t.promote) promote(ctx, section, model, Number(t.promote), false);
    if (t.force) promote(ctx, section, model, Number(t.force), true);
    if (t.dismiss !== undefined) section.querySelector(".promote-panel").innerHTML = "";
    if (t.download) download(model, Number(t.download)).catch(ctx.fail);
  });
}

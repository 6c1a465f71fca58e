// A job's audit report on its page: the verdict, the numbers, the per-image table and the figures.
import {api, ApiError, saveBlob} from "./api.js";
import {esc, num} from "./format.js";

const SETS = {forget: "D_F, the images to forget", forget_holdout: "D'_F, more images of the person",
  remember: "D_R, remember set", remember_holdout: "other people's held-out images",
  remember_unseen: "D_R^id, people never trained on", remember_nearest: "D_R^NN, the most similar people"};

function verdict(r) {
  const s = r.stopping || {};
  const ok = s.criterion_met === true;
  return `<div class="verdict ${ok ? "ok" : "no"}"><strong>${ok ? "Certified: the stop criterion is met and confirmed"
    : "Not certified: the stop criterion was not met"}</strong>
    after ${esc(s.iterations ?? "?")} iterations${s.reason ? ` (${esc(s.reason)})` : ""}${
    s.max_abs_d !== undefined ? `; max |d| ${num(s.max_abs_d, 3)}` : ""}.</div>`;
}

function setsTable(m) {
  const names = Object.keys(SETS).filter((k) => (m.mean_quantile || {})[k] || (m.bpd_shift_sigma || {})[k] !== undefined);
  if (!names.length) return "";
  const rows = names.map((k) => {
    const q = (m.mean_quantile || {})[k] || {};
    return `<tr><td>${esc(SETS[k])}</td><td class="num">${num(q.before)}</td><td class="num">${num(q.after)}</td>
      <td class="num">${num((m.quantile_drop || {})[k])}</td><td class="num">${num((m.bpd_shift_sigma || {})[k], 2)}</td></tr>`;
  }).join("");
  return `<table class="numbers"><thead><tr><th>Set</th><th>mean quantile before</th><th>after</th><th>quantile drop</th>
    <th>bpd shift (σ_R)</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function measures(r) {
  const m = r.metrics || {};
  const pairs = [["BPD of the remember set", m.bpd_remember],
    ["Fréchet distance of samples" + (m.frechet_distance ? ` (${esc(m.frechet_distance.feature_space)})` : ""), m.frechet_distance],
    ["Attribute share among samples", m.attribute_share]];
  const rows = pairs.filter(([, v]) => v).map(([label, v]) =>
    `<tr><td>${label}</td><td class="num">${num(v.before)}</td><td class="num">${num(v.after)}</td><td>${
      v.target !== undefined ? "target " + num(v.target, 3) : ""}</td></tr>`);
  if (m.ks_normality) rows.push(`<tr><td>KS normality of remember NLLs</td><td></td><td class="num">D ${num(m.ks_normality.statistic, 3)}</td>
    <td>p ${num(m.ks_normality.p_value, 3)}</td></tr>`);
  if ((r.timing || {}).wall_seconds !== undefined) rows.push(`<tr><td>Wall time</td><td></td><td class="num">${num(r.timing.wall_seconds, 1)} s</td>
    <td>${esc(r.timing.device || "")}</td></tr>`);
  return rows.length ? `<table class="numbers"><thead><tr><th>Measure</th><th>before</th><th>after</th><th></th></tr></thead>
    <tbody>${rows.join("")}</tbody></table>` : "";
}

function images(r) {
  const items = (r.inputs || {}).forget || [];
  if (!items.length) return "";
  const rows = items.map((x, i) => `<tr class="${x.excluded ? "excluded" : ""}"><td>${i + 1}</td>
    <td><code title="${esc(x.sha256)}">${esc(String(x.sha256 || "").slice(0, 12))}</code></td>
    <td class="num">${num(x.bpd_before, 3)}</td><td class="num">${num(x.bpd_after, 3)}</td>
    <td class="num">${num(x.quantile_before)}</td><td class="num">${num(x.quantile_after)}</td><td class="num">${num(x.d, 2)}</td>
    <td>${x.excluded ? "left out: " : ""}${esc(x.reason || "")}</td></tr>`).join("");
  return `<h3>Forget images</h3><div class="scroll"><table class="numbers"><thead><tr><th>#</th><th>SHA-256</th><th>bpd before</th>
    <th>bpd after</th><th>quantile before</th><th>after</th><th>d</th><th>note</th></tr></thead><tbody>${rows}</tbody></table></div>`;
}

// The figures live in the HTML report as PNG data URIs: take those (and their captions) only.
function figures(html) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  return [...doc.querySelectorAll("figure")].map((fig) => {
    const img = fig.querySelector("img");
    const src = img ? img.getAttribute("src") || "" : "";
    if (!src.startsWith("data:image/png;base64,")) return "";
    const caption = (fig.querySelector("figcaption") || {}).textContent || "";
    return `<figure><img src="${esc(src)}" alt="${esc(caption)}"><figcaption>${esc(caption)}</figcaption></figure>`;
  }).join("");
}

export async function reportSection(el, job) {
  const base = `/v1/jobs/${encodeURIComponent(job.id)}`;
  let r;
  try {
    r = await api(`${base}/report`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      el.innerHTML = `<p class="empty">No report yet: a report is written when the job ends (now ${esc(job.state)}).</p>`;
      return;
    }
    throw e;
  }
  const html = await api(`${base}/report.html`).catch(() => "");
  el.innerHTML = `${verdict(r)}${setsTable(r.metrics || {})}${measures(r)}${images(r)}
    <h3>Figures</h3><div class="figures">${figures(html) || '<p class="empty">This report has no figures.</p>'}</div>
    <p class="actions"><button type="button" id="show-html" class="quiet">Show the full HTML report</button>
    <button type="button" id="get-json" class="quiet">Download JSON</button>
    <button type="button" id="get-html" class="quiet">Download HTML</button></p><div id="full-report"></div>`;
  el.querySelector("#get-json").onclick = () => saveBlob(new Blob([JSON.stringify(r, null, 2)], {type: "application/json"}), `${job.id}.json`);
  el.querySelector("#get-html").onclick = () => saveBlob(new Blob([html], {type: "text/html"}), `${job.id}.html`);
  el.querySelector("#show-html").onclick = () => {
    // A sandboxed frame: the report's markup cannot run anything nor reach this page or its key.
    const frame = Object.assign(document.createElement("iframe"), {title: "HTML report", srcdoc: html});
    frame.setAttribute("sandbox", "");
    el.querySelector("#full-report").replaceChildren(frame);
  };
}

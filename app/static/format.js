// Formatting shared by the pages: escaping, dates, the GDPR deadline, progress.
export const TERMINAL = ["succeeded", "failed", "cancelled"];
const DAY = 86400000;

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

export function date(iso, withTime = true) {
  if (!iso) return "—";
  const d = new Date(iso);
  const opts = withTime ? {dateStyle: "medium", timeStyle: "short"} : {dateStyle: "medium"};
  return d.toLocaleString(undefined, opts);
}

export function num(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value !== "number") return esc(value);
  return Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3) ? value.toExponential(2) : value.toFixed(digits);
}

export const short = (id) => esc(String(id || "").slice(0, 8));

export function stateBadge(state) {
  return `<span class="badge ${esc(state)}">${esc(state)}</span>`;
}

// GDPR Art. 12(3): an erasure is due one calendar month after it was received (due_at, from the API).
// Only a succeeded erasure meets it; a failed or cancelled one still owes the person an answer.
export function due(job, now = Date.now()) {
  if (!job.due_at) return {text: "—", cls: "", title: "only erasure requests have a deadline"};
  const at = new Date(job.due_at).getTime();
  const day = date(job.due_at, false);
  if (job.state === "succeeded") {
    const inTime = new Date(job.finished_at || job.created_at).getTime() <= at;
    return {text: `${inTime ? "erased in time" : "erased late"} · due ${day}`, cls: inTime ? "" : "overdue", title: ""};
  }
  const open = TERMINAL.includes(job.state) ? "not erased · " : "";
  const days = Math.ceil((at - now) / DAY);
  if (days < 0) return {text: `${open}overdue by ${-days} day${days === -1 ? "" : "s"} · ${day}`, cls: "overdue", title: ""};
  return {text: `${open}${day} · ${days} day${days === 1 ? "" : "s"} left`, cls: days <= 7 || open ? "soon" : "", title: ""};
}

function eta(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return ` · about ${Math.round(seconds)} s left`;
  return ` · about ${Math.round(seconds / 60)} min left`;
}

// A finished job reads as done at 100 %: most runs stop early, when the stop criterion is met.
export function progress(job) {
  const p = job.progress || {};
  const it = p.iteration || 0;
  const cap = p.max_iterations || 0;
  const phase = p.phase ? `${p.phase} · ` : "";
  if (job.state === "succeeded") return {pct: 100, label: `100% · done in ${it} iterations`};
  if (job.state === "queued") return {pct: 0, label: "waiting for a worker"};
  const pct = cap ? Math.min(99, Math.floor((100 * it) / cap)) : 0;
  if (job.state === "running") return {pct, label: `${phase}iteration ${it} of at most ${cap}${eta(p.eta_seconds)}`};
  return {pct, label: `${job.state} at iteration ${it}`};
}

export function progressCell(job) {
  const {pct, label} = progress(job);
  const d = (job.progress || {}).max_abs_d;
  const extra = d === null || d === undefined || job.state === "queued" ? "" : ` · max |d| ${num(d, 3)}`;
  return `<div><div class="bar ${esc(job.state)}"><progress max="100" value="${pct}" aria-label="progress">${pct}%</progress></div>
    <div class="plabel">${esc(label)}${extra}</div></div>`;
}

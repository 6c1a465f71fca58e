// The dashboard shell: sign-in with an API key, a router over the URL fragment, errors in one place.
import {api, clearKey, getKey, setKey} from "./api.js";
import {auditPage} from "./audit.js";
import {esc} from "./format.js";
import {jobPage} from "./job.js";
import {jobsPage} from "./jobs.js";
import {modelsPage} from "./models.js";

const $ = (id) => document.getElementById(id);
const ctx = {me: null, fail, toast, reload: route};
let leave = null;

function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

function fail(error) {
  toast(error && error.message ? error.message : String(error));
}

function signedIn(me) {
  ctx.me = me;
  $("signin").hidden = true;
  $("nav").hidden = $("who").hidden = false;
  $("who-name").textContent = me.name;
  $("who-role").textContent = me.role;
}

function signedOut(message = "") {
  clearKey();
  ctx.me = null;
  route.count++;  // a page still loading is not shown
  if (leave) leave();
  leave = null;
  $("view").innerHTML = "";
  $("nav").hidden = $("who").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  $("key").focus();
}

// Each navigation renders into a fresh element, shown only if no later navigation began meanwhile.
async function route() {
  if (!ctx.me) return;
  const mine = ++route.count;
  if (leave) leave();
  leave = null;
  const [page, id] = (location.hash.replace(/^#\/?/, "") || "jobs").split("/");
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
  $("view").innerHTML = '<p class="empty">Loading…</p>';
  const view = document.createElement("div");
  let done = null;
  try {
    if (page === "jobs" && id) done = await jobPage(view, ctx, decodeURIComponent(id));
    else if (page === "models") done = await modelsPage(view, ctx);
    else if (page === "audit") done = await auditPage(view, ctx);
    else done = await jobsPage(view, ctx);
  } catch (e) {
    view.innerHTML = `<p class="error-box">${esc(e.message)}</p>`;
  }
  if (mine !== route.count) {
    if (done) done();
    return;
  }
  leave = done;
  $("view").replaceChildren(view);
}
route.count = 0;

async function start(key) {
  setKey(key);
  try {
    signedIn(await api("/v1/whoami"));
    await route();
  } catch (e) {
    signedOut(e.status === 401 ? "That key is unknown or revoked." : e.message);
  }
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("key").value.trim();
  $("key").value = "";
  if (key) start(key);
});
$("signout").addEventListener("click", () => signedOut());
window.addEventListener("hashchange", route);
window.addEventListener("taming:unauthorized", () => signedOut("The key stopped working (revoked?). Sign in again."));
if (getKey()) start(getKey()); else signedOut();

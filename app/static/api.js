// The JSON API, with the key of this tab (sessionStorage; sent as a header, never put in a URL).
const KEY = "taming-key";

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
    this.details = error.details;
  }
}

function headers(extra = {}) {
  return {Authorization: "Bearer " + (getKey() || ""), ...extra};
}

export async function api(path, {method = "GET", json} = {}) {
  const init = {method, headers: headers()};
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (response.status === 401) window.dispatchEvent(new CustomEvent("taming:unauthorized"));
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export async function blob(path) {
  const response = await fetch(path, {headers: headers()});
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response.blob();
}

// Server-sent events read with fetch(): EventSource cannot send the Authorization header.
// Calls onJob with every job snapshot; resolves when the job ends or the stream closes.
export async function follow(jobId, onJob, signal) {
  const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`,
    {headers: headers({Accept: "text/event-stream"}), signal});
  if (!response.ok || !response.body) throw new ApiError(response.status, null);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (event === "end") return;
      if (data) onJob(JSON.parse(data));
    }
  }
}

export function saveBlob(data, name) {
  const url = URL.createObjectURL(data);
  const link = Object.assign(document.createElement("a"), {href: url, download: name});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Live job updates: a server-sent-event stream per active job (a few at a time: a browser allows six
// connections to one server), polling for the rest and whenever a stream fails.
import {api, follow} from "./api.js";
import {TERMINAL} from "./format.js";

const MAX_STREAMS = 3;
const POLL_MS = 3000;

export class Live {
  constructor(onJob) {
    this.onJob = onJob;
    this.streams = new Map();
    this.polled = new Set();
    this.timer = setInterval(() => this.poll(), POLL_MS);
  }

  watch(job) {
    if (TERMINAL.includes(job.state) || this.streams.has(job.id)) return;
    if (this.streams.size >= MAX_STREAMS) {
      this.polled.add(job.id);
      return;
    }
    this.polled.delete(job.id);
    const control = new AbortController();
    this.streams.set(job.id, control);
    follow(job.id, (snapshot) => this.onJob(snapshot), control.signal)
      .then(() => api(`/v1/jobs/${encodeURIComponent(job.id)}`).then((last) => this.onJob(last)))
      .catch(() => { if (!control.signal.aborted) this.polled.add(job.id); })
      .finally(() => this.streams.delete(job.id));
  }

  async poll() {
    for (const id of [...this.polled]) {
      try {
        const job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
        if (TERMINAL.includes(job.state)) this.polled.delete(id);
        this.onJob(job);
      } catch {
        this.polled.delete(id);
      }
    }
  }

  stop() {
    clearInterval(this.timer);
    for (const control of this.streams.values()) control.abort();
    this.streams.clear();
    this.polled.clear();
  }
}

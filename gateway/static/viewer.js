"use strict";
// logbroker's web log viewer: no build step, no framework. One EventSource per job page, one
// cursor shared by the initial load and the live stream (docs/design.md §10.5), rendering batched per frame
// and at most MAX_LINES lines per step panel in the DOM (docs/design.md §10.9).

const MAX_LINES = 500;
const MAX_LOADED = 5000;
const app = document.getElementById("app");
const connBadge = document.getElementById("conn");
const jobTitle = document.getElementById("job-title");
let view = null;

const enc = encodeURIComponent;
const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + enc(token) : url);
async function api(path) {
  const resp = await fetch(withToken(path));
  if (!resp.ok) {
    const err = new Error(`${resp.status} ${path}`);
    err.status = resp.status;
    throw err;
  }
  return resp.json();
}
function successor(id) {
  const [ms, seq] = id.split("-");
  return `${ms}-${BigInt(seq) + 1n}`;
}
function setConn(state) {
  connBadge.className = "conn " + state;
  connBadge.textContent = state;
}

class JobList {
  constructor() {
    jobTitle.textContent = "jobs";
    setConn("idle");
    this.timer = null;
    this.load();
  }
  async load() {
    try {
      const data = await api("/v1/jobs?limit=100");
      const table = document.createElement("table");
      table.className = "jobs";
      table.innerHTML = "<tr><th>job</th><th>name</th><th>type</th><th>status</th><th>entries</th><th>updated</th></tr>";
      for (const j of data.jobs) {
        const row = table.insertRow();
        const link = document.createElement("a");
        link.href = "#/jobs/" + enc(j.job);
        link.textContent = j.job;
        row.insertCell().append(link);
        for (const v of [j.name, j.type, j.status, j.entries, j.updated_ms && new Date(j.updated_ms).toLocaleString()]) {
          row.insertCell().textContent = v ?? "";
        }
      }
      app.replaceChildren(table);
    } catch (e) {
      app.textContent = "cannot list jobs: " + e.message;
    }
    this.timer = setTimeout(() => this.load(), 5000);
  }
  close() {
    clearTimeout(this.timer);
  }
}

class StepPanel {
  constructor(view, name) {
    this.view = view;
    this.name = name;
    this.total = 0;
    this.cap = MAX_LINES;
    this.oldest = null;
    this.workers = new Set();
    const node = document.getElementById("step-tpl").content.firstElementChild.cloneNode(true);
    this.node = node;
    this.lines = node.querySelector(".lines");
    this.badge = node.querySelector(".badge");
    this.statusNode = node.querySelector(".step-status");
    this.workerSelect = node.querySelector(".worker-filter");
    this.earlier = node.querySelector(".earlier");
    node.dataset.step = name ?? "";
    node.querySelector(".step-name").textContent = name ?? "(job)";
    const dl = node.querySelector(".download");
    dl.href = withToken(`/v1/jobs/${enc(view.job)}/logs?format=ndjson` + (name ? `&step=${enc(name)}` : ""));
    dl.setAttribute("download", `${view.job}${name ? "-" + name : ""}.ndjson`);
    for (const box of node.querySelectorAll(".lv")) {
      box.addEventListener("change", () => this.lines.classList.toggle("hide-" + box.value, !box.checked));
    }
    this.workerSelect.addEventListener("change", () => this.applyWorkerFilter());
    this.earlier.addEventListener("click", () => this.loadEarlier());
    view.container.append(node);
  }
  setStatus(status) {
    if (status) this.statusNode.textContent = status;
  }
  addWorker(worker) {
    if (!worker || this.workers.has(worker)) return;
    this.workers.add(worker);
    const option = document.createElement("option");
    option.value = option.textContent = worker;
    this.workerSelect.append(option);
  }
  lineNode(e) {
    const div = document.createElement("div");
    div.className = `line ${e.level} ${e.kind}`;
    div.dataset.id = e.id;
    div.dataset.line = e.line;
    div.dataset.worker = e.worker ?? "";
    const n = document.createElement("span");
    n.className = "n";
    n.textContent = e.line;
    div.append(n);
    if (e.worker) {
      const w = document.createElement("span");
      w.className = "w";
      w.textContent = e.worker;
      div.append(w);
    }
    div.append(e.msg);
    const only = this.workerSelect.value;
    if (only && e.worker !== only) div.classList.add("filtered");
    return div;
  }
  append(entries) {
    const atBottom = this.lines.scrollTop + this.lines.clientHeight >= this.lines.scrollHeight - 4;
    const frag = document.createDocumentFragment();
    for (const e of entries.slice(-this.cap)) frag.append(this.lineNode(e));
    this.lines.append(frag);
    while (this.lines.childElementCount > this.cap) this.lines.firstElementChild.remove();
    this.oldest = this.lines.firstElementChild ? this.lines.firstElementChild.dataset.id : this.oldest;
    this.updateControls();
    if (atBottom) this.lines.scrollTop = this.lines.scrollHeight;
  }
  prepend(entries) {
    const frag = document.createDocumentFragment();
    for (const e of entries) frag.append(this.lineNode(e));
    this.lines.prepend(frag);
    if (entries.length) this.oldest = entries[0].id;
    this.updateControls();
  }
  updateControls() {
    // older lines exist beyond what the DOM holds: offer them, up to MAX_LOADED per panel
    this.earlier.hidden = this.total <= this.lines.childElementCount || this.cap >= MAX_LOADED;
    this.badge.textContent = this.total;
  }
  async page(before) {
    const q = `order=desc&limit=${MAX_LINES}&before=${before}` + (this.name ? `&step=${enc(this.name)}` : "");
    const data = await api(`/v1/jobs/${enc(this.view.job)}/logs?${q}`);
    if (data.gap) this.view.notice.textContent = `entries before ${data.gap.first_available} were removed by retention`;
    const entries = data.entries.filter((e) => (e.step ?? null) === this.name).reverse();
    for (const e of entries) this.addWorker(e.worker);
    return entries;
  }
  async loadEarlier() {
    if (!this.oldest) return;
    this.cap = Math.min(MAX_LOADED, this.cap + MAX_LINES);
    this.prepend(await this.page(this.oldest));
  }
  applyWorkerFilter() {
    const only = this.workerSelect.value;
    for (const line of this.lines.children) line.classList.toggle("filtered", !!only && line.dataset.worker !== only);
  }
}

class JobView {
  constructor(job) {
    this.job = job;
    this.panels = new Map();
    this.queue = [];
    this.scheduled = false;
    this.lastId = "";
    this.ended = false;
    this.closed = false;
    this.source = null;
    this.retryTimer = null;
    jobTitle.textContent = job;
    this.container = document.createElement("div");
    this.notice = document.createElement("div");
    this.notice.className = "notice";
    app.replaceChildren(this.notice, this.container);
    this.start();
  }
  panel(step) {
    let p = this.panels.get(step);
    if (!p) this.panels.set(step, (p = new StepPanel(this, step)));
    return p;
  }
  async start() {
    setConn("idle");
    let meta = null;
    try {
      meta = await api(`/v1/jobs/${enc(this.job)}`);
    } catch (e) {
      if (e.status !== 404) this.notice.textContent = e.message; // 404: the job does not exist yet: wait for it
    }
    this.lastId = meta?.last_id ?? "";
    if (meta) {
      jobTitle.textContent = `${this.job} ${meta.name ? "“" + meta.name + "”" : ""} ${meta.status ?? ""}`;
      const steps = Object.entries(meta.steps).sort((a, b) => (a[1].first_id < b[1].first_id ? -1 : 1));
      if (meta.job_entries) this.panel(null).total = meta.job_entries;
      for (const [name, s] of steps) {
        const p = this.panel(name);
        p.total = s.entries;
        p.setStatus(s.status);
        for (const w of Object.keys(s.workers ?? {})) p.addWorker(w);
      }
      const before = successor(this.lastId);
      await Promise.all([...this.panels.values()].map(async (p) => p.append(await p.page(before))));
      if (meta.end_id) {
        // ended before we came: everything is loaded, and the stream would only answer 204
        this.ended = true;
        setConn("ended");
        return;
      }
    }
    this.follow();
  }
  follow() {
    if (this.closed || this.ended) return;
    const url = `/v1/jobs/${enc(this.job)}/stream` + (this.lastId ? `?after=${this.lastId}` : "");
    const es = new EventSource(withToken(url));
    this.source = es;
    es.onopen = () => setConn("live");
    es.onmessage = (ev) => this.receive(ev);
    es.addEventListener("end", (ev) => {
      this.receive(ev);
      this.ended = true;
      es.close();
      setConn("ended");
    });
    es.addEventListener("reset", () => {
      // the job's stored data was lost and it starts over: what this page shows is gone
      this.close();
      view = new JobView(this.job);
      view.notice.textContent = "this job's stored entries were lost (Redis came back without them): showing it again from its start";
    });
    es.addEventListener("gap", (ev) => {
      const gap = JSON.parse(ev.data);
      this.notice.textContent = `entries before ${gap.first_available} were removed by retention`;
      this.lastId = ev.lastEventId || this.lastId;
    });
    es.onerror = () => {
      if (this.ended || this.closed) return;
      setConn("reconnecting");
      if (es.readyState === EventSource.CLOSED) {
        // the browser gave up (HTTP error, proxy down): resume ourselves from the last id we saw
        this.retryTimer = setTimeout(() => this.follow(), 1000);
      }
    };
  }
  receive(ev) {
    const e = JSON.parse(ev.data);
    this.lastId = e.id;
    this.queue.push(e);
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.render());
    }
  }
  render() {
    this.scheduled = false;
    const byStep = new Map();
    for (const e of this.queue.splice(0)) {
      const p = this.panel(e.step ?? null);
      p.total += 1;
      p.addWorker(e.worker);
      if ((e.kind === "status" && !e.worker) || e.kind === "end") p.setStatus(e.status);
      if (e.job_name && !jobTitle.textContent.includes(e.job_name)) jobTitle.textContent = `${this.job} “${e.job_name}”`;
      if (!byStep.has(p)) byStep.set(p, []);
      byStep.get(p).push(e);
    }
    for (const [p, entries] of byStep) p.append(entries);
  }
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
  }
}

function route() {
  if (view) view.close();
  const m = location.hash.match(/^#\/jobs\/(.+)$/);
  view = m ? new JobView(decodeURIComponent(m[1])) : new JobList();
}
window.addEventListener("hashchange", route);
route();

// The stagewise dashboard: plain DOM and fetch, no framework.
//
// Every piece of data comes from POST /rpc (the same JSON-RPC API as any client) with the bearer
// token the user typed, kept in sessionStorage.  Task data is user input: it only ever reaches the
// page through textContent / text nodes (see el()), never through innerHTML.
"use strict";

const TOKEN_KEY = "stagewise.token";
const STATUSES = ["IDLE", "QUEUED", "RUNNING", "WAITING", "SUSPENDED", "FINISHED", "FAILED", "CANCELED"];
const TERMINAL = new Set(["FINISHED", "FAILED", "CANCELED"]);
const TASK_POLL_MS = 1000;
const EXECUTORS_POLL_MS = 2000;
const TASKS_POLL_MS = 3000;
const OVERVIEW_POLL_MS = 10000;
const LIMITS_POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#4a8fd8", "#d8544a", "#49a86a", "#e0a03a", "#8a5cc8", "#3ab0b8", "#c85c9a", "#7a7a7a"];

let timer = null; // the pending refresh of the current view
let generation = 0; // bumped on every navigation: work started for an older view is dropped

// ------------------------------------------------------------------------------------------ RPC

class AuthError extends Error {}

class RpcError extends Error {
  constructor(error) {
    super(error.message || "error " + error.code);
    this.code = error.code;
    this.data = error.data;
  }
}

let rpcId = 0;

async function rpc(method, params) {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const body = JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method, params: params || {} });
  const resp = await fetch("rpc", { method: "POST", headers, body, cache: "no-store", credentials: "omit" });
  if (resp.status === 401) throw new AuthError("the manager wants a valid API token");
  let doc;
  try {
    doc = await resp.json();
  } catch {
    throw new Error("HTTP " + resp.status + " from /rpc");
  }
  if (doc && doc.error) throw new RpcError(doc.error);
  if (!doc || !("result" in doc)) throw new Error("HTTP " + resp.status + ": not a JSON-RPC reply");
  return doc.result;
}

// ------------------------------------------------------------------------------------------ DOM

// el("a", {href: "#/x", class: "c"}, "text", childNode, ...): strings become text nodes.
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const $ = (sel) => document.querySelector(sel);

function badge(status) {
  return el("span", { class: "badge", "data-status": status || "" }, status || "?");
}

function pad(n) {
  return String(n).padStart(2, "0");
}

function fmtTime(t) {
  if (t === null || t === undefined) return "—";
  const d = new Date(t * 1000);
  return (
    d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
    pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds())
  );
}

function fmtAgo(t) {
  if (t === null || t === undefined) return "—";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return s.toFixed(1) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return fmtTime(t);
}

function fmtDur(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "—";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + "m" + pad(Math.floor(s % 60)) + "s";
  return Math.floor(s / 3600) + "h" + pad(Math.floor((s % 3600) / 60)) + "m";
}

function json(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function stop() {
  if (timer !== null) clearTimeout(timer);
  timer = null;
}

// Render `nodes` as the page, unless the user has navigated away meanwhile.
function render(gen, ...nodes) {
  if (gen !== generation) return false;
  $("#main").replaceChildren(...nodes.flat());
  return true;
}

// Turn a failed call into the login form (401) or the error banner.
function failed(gen, err) {
  if (gen !== generation) return;
  if (err instanceof AuthError) {
    stop();
    loginView(gen, sessionStorage.getItem(TOKEN_KEY) ? "That token was refused." : "");
  } else {
    showError(err instanceof RpcError ? "error " + err.code + ": " + err.message : String(err.message || err));
  }
}

// ------------------------------------------------------------------------------------------ login

function loginView(gen, note) {
  const input = el("input", {
    type: "password", id: "token", name: "token", autocomplete: "current-password",
    required: true, placeholder: "API token",
  });
  const form = el(
    "form", { id: "login", class: "card narrow" },
    el("h2", {}, "Sign in"),
    el("p", { class: "muted" },
      "This manager wants a bearer token (one of STAGEWISE_API_TOKENS). It is kept in this tab's " +
      "session storage and sent with every request to /rpc."),
    note ? el("p", { class: "warn" }, note) : null,
    el("label", { for: "token" }, "Token"), input,
    el("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    route();
  });
  if (render(gen, form)) input.focus();
  $("#signout").hidden = true;
}

function afterAuth() {
  $("#signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  if ($("#info").textContent) return;
  rpc("system.info").then(
    (i) => { $("#info").textContent = "namespace " + i.namespace + " · v" + i.version; },
    () => {},
  );
}

// ------------------------------------------------------------------------------------------ tasks list

const FILTERS = ["status", "app", "tags", "group", "parent", "since", "sort", "max_results"];

function listParams(q) {
  const p = {};
  for (const key of ["status", "app", "group", "parent", "since", "sort", "cursor"]) {
    const v = (q.get(key) || "").trim();
    if (v) p[key] = v;
  }
  const tags = (q.get("tags") || "").split(",").map((t) => t.trim()).filter(Boolean);
  if (tags.length) p.tags = tags;
  p.max_results = parseInt(q.get("max_results") || "", 10) || 50;
  return p;
}

function filterForm(q) {
  const field = (label, input) => el("label", {}, el("span", {}, label), input);
  const text = (name, placeholder) =>
    el("input", { name, value: q.get(name) || "", placeholder, autocomplete: "off" });
  const select = (name, options) => {
    const s = el("select", { name }, options.map(([v, t]) => el("option", { value: v }, t)));
    s.value = q.get(name) || options[0][0];
    return s;
  };
  const form = el(
    "form", { id: "filters", class: "filters" },
    field("Status", select("status", [["", "any"], ...STATUSES.map((s) => [s, s])])),
    field("App", text("app", "any")),
    field("Tags", text("tags", "a, b (all)")),
    field("Group", text("group", "any")),
    field("Parent", text("parent", "children of (id)")),
    field("Updated since", text("since", "ISO 8601 or UNIX s")),
    field("Sort", select("sort", [["desc", "newest first"], ["asc", "oldest first"]])),
    field("Per page", el("input", {
      name: "max_results", type: "number", min: 1, max: 1000, value: q.get("max_results") || 50,
    })),
    el("div", { class: "buttons" },
      el("button", { type: "submit", id: "apply" }, "Apply"),
      el("button", { type: "button", id: "reset", onclick: () => { location.hash = "#/tasks"; } }, "Reset")),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const out = new URLSearchParams();
    const data = new FormData(form);
    for (const key of FILTERS) {
      const v = String(data.get(key) || "").trim();
      if (v && !(key === "sort" && v === "desc") && !(key === "max_results" && v === "50")) out.set(key, v);
    }
    const hash = "#/tasks" + (out.toString() ? "?" + out : "");
    if (location.hash === hash) route();
    else location.hash = hash;
  });
  return form;
}

function goToTask() {
  const input = el("input", { name: "id", id: "goto-id", placeholder: "task id", autocomplete: "off" });
  return el("form", { id: "goto", class: "goto",
    onsubmit: (ev) => {
      ev.preventDefault();
      const id = input.value.trim();
      if (id) location.hash = "#/task/" + encodeURIComponent(id);
    } },
  input, el("button", { type: "submit" }, "Open"));
}

async function tasksView(gen, q) {
  const form = filterForm(q);
  let shown = false;
  const refresh = async () => {
    let page;
    try {
      page = await rpc("tasks.list", listParams(q));
    } catch (err) {
      if (!shown && !(err instanceof AuthError)) render(gen, el("h2", {}, "Tasks"), goToTask(), form);
      failed(gen, err);
      if (gen === generation && !(err instanceof AuthError)) timer = setTimeout(refresh, TASKS_POLL_MS * 2);
      return;
    }
    if (gen !== generation) return;
    afterAuth();
    showError("");
    const [table, pager] = tasksTable(page, q);
    if (!shown) {
      shown = render(gen, el("h2", {}, "Tasks"), goToTask(), form, table, pager);
    } else {
      $("#tasks").replaceWith(table); // the list refreshes itself; the form keeps what is typed
      $("#pager").replaceWith(pager);
    }
    timer = setTimeout(refresh, TASKS_POLL_MS);
  };
  await refresh();
}

function tasksTable(page, q) {
  const rows = page.items.map((t) =>
    el("tr", { "data-id": t.id },
      el("td", { class: "id" }, el("a", { href: "#/task/" + encodeURIComponent(t.id) }, t.id)),
      el("td", {}, t.app),
      el("td", {}, badge(t.status), heldBy(t)),
      el("td", { class: "num" }, t.stage + " / " + t.stages),
      el("td", {}, (t.tags || []).map((tag) => el("span", { class: "tag" }, tag))),
      el("td", { title: fmtTime(t.updated) }, fmtTime(t.updated)),
      el("td", { class: "err" }, t.error ? t.error.code : "")));
  const table = el("table", { id: "tasks", "data-query": q.toString() },
    el("thead", {}, el("tr", {}, ["ID", "App", "Status", "Stage", "Tags", "Updated", "Error"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7, class: "muted empty" }, "No tasks match."))));
  const pager = el("div", { class: "pager", id: "pager" });
  if (q.get("cursor")) {
    const first = new URLSearchParams(q);
    first.delete("cursor");
    pager.append(el("a", { class: "button", href: "#/tasks" + (first.toString() ? "?" + first : ""), id: "first-page" }, "« First page"));
  }
  if (page.next_cursor) {
    const next = new URLSearchParams(q);
    next.set("cursor", page.next_cursor);
    pager.append(el("a", { class: "button", href: "#/tasks?" + next, id: "next-page" }, "Next page »"));
  }
  return [table, pager];
}

// A QUEUED task held back by a limit key (flow control): the key, linked to the Limits view.
function heldBy(t) {
  if (!t.blocked_by) return null;
  return el("span", { class: "held", title: "held back by the limit key " + t.blocked_by },
    " held by ", el("a", { href: "#/limits?key=" + encodeURIComponent(t.blocked_by) }, el("code", {}, t.blocked_by)));
}

// ------------------------------------------------------------------------------------------ one task

function stageRows(task) {
  const results = task.results || [];
  return (task.commands || []).map((cmd, i) => {
    let kind, what, params = null;
    if ("method" in cmd) {
      kind = "method";
      what = [el("code", {}, cmd.method)];
      if (cmd.timeout !== undefined) what.push(el("span", { class: "muted" }, " timeout " + cmd.timeout + " s"));
      if (cmd.if !== undefined) what.push(el("div", { class: "muted" }, "if ", el("code", {}, JSON.stringify(cmd.if))));
      params = cmd.params;
    } else if ("timer" in cmd) {
      kind = "timer";
      what = cmd.timer + " s";
    } else if ("children" in cmd) {
      kind = "children";
      const c = cmd.children || {};
      what = [c.map !== undefined ? el("span", {}, "map ", el("code", {}, c.map)) : (c.tasks || []).length + " tasks",
        el("span", { class: "muted" }, " on failure " + (c.on_failure || "fail"))];
      params = c.map !== undefined ? c.task : c.tasks;
    } else {
      kind = "message";
      const m = cmd.message || {};
      what = m.timeout === undefined ? "waits for tasks.send"
        : "timeout " + m.timeout + " s, then " + (m.on_timeout || "continue");
    }
    const done = i < results.length;
    const current = i === task.stage && !TERMINAL.has(task.status);
    return el("tr", { class: current ? "current" : "", "data-stage": i },
      el("td", { class: "num" }, String(i)),
      el("td", {}, el("span", { class: "kind kind-" + kind }, kind)),
      el("td", {}, what),
      el("td", {}, params === null || params === undefined ? el("span", { class: "muted" }, "—") : json(params)),
      el("td", {}, done ? json(results[i]) : el("span", { class: "muted" }, current ? "in progress" : "—")));
  });
}

function summary(task) {
  const items = [
    ["App", task.app],
    ["Stage", task.stage + " / " + task.stages],
    ["Run", task.job_id ? el("code", {}, task.job_id) : "—"],
    ["Attempt", String(task.attempt)],
    ["Retries", task.retries + " of " + task.max_retries],
    ["Executor", task.executor_id || "—"],
    ["Created", fmtTime(task.created)],
    ["Updated", fmtTime(task.updated)],
    ["Next run", fmtTime(task.next_run)],
    ["Wait deadline", fmtTime(task.wait_deadline)],
    ["Exec deadline", fmtTime(task.exec_deadline)],
    ["Group", task.group || "—"],
    ["Tags", (task.tags || []).length ? task.tags.map((t) => el("span", { class: "tag" }, t)) : "—"],
    ["Priority", String(task.priority)],
    ["Locked", task.locked ? "yes" : "no"],
  ];
  if (task.parent) {
    items.push(["Parent", el("a", { href: "#/task/" + encodeURIComponent(task.parent.id), id: "parent-link" },
      task.parent.id + " (stage " + task.parent.stage + ")")]);
  }
  if (task.cron) items.push(["Cron", task.cron + " (" + task.tz + ")"]);
  if (task.blocked_by) items.push(["Held by", heldBy(task)]);
  if ((task.limits || []).length) {
    items.push(["Limits", task.limits.map((l) => el("div", {}, el("code", {}, l.key), " ",
      [l.concurrency ? l.concurrency + " at once" : null, l.rate ? l.rate + " per " + (l.per || 1) + " s" : null]
        .filter(Boolean).join(", ")))]);
  }
  if (task.debounce) items.push(["Debounce", el("code", {}, task.debounce.key)]);
  if (task.cleaned) items.push(["Cleaned", "yes"]);
  return el("dl", { class: "summary" }, items.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
}

function attemptsTable(attempts) {
  const rows = attempts.map((a, n) =>
    el("tr", {},
      el("td", { class: "num" }, String(n + 1)),
      el("td", { class: "num" }, String(a.stage)),
      el("td", {}, el("code", {}, a.job_id || "—")),
      el("td", {}, a.executor_id || "—"),
      el("td", {}, fmtTime(a.started)),
      el("td", {}, fmtTime(a.ended)),
      el("td", {}, el("span", { class: "outcome", "data-outcome": a.outcome || "" }, a.outcome || "running")),
      el("td", { class: "err" }, a.error ? (a.error.code || "") + (a.error.message ? ": " + a.error.message : "") : "")));
  return el("table", { id: "attempts" },
    el("thead", {}, el("tr", {}, ["#", "Stage", "Run", "Executor", "Started", "Ended", "Outcome", "Error"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 8, class: "muted empty" }, "No attempts yet."))));
}

// What a WAITING task waits for, with the time left (recomputed every second by the page).
function waitText(task) {
  if (task.status !== "WAITING") return "";
  const cmd = (task.commands || [])[task.stage] || {};
  const left = task.wait_deadline ? Math.max(0, task.wait_deadline - Date.now() / 1000) : null;
  if ("timer" in cmd) return "Timer: resumes in " + fmtDur(left) + ".";
  if ("children" in cmd) {
    const c = task.children;
    return c ? "Waiting for its children: " + c.ended + " of " + c.total + " ended." : "Starting its children.";
  }
  const m = cmd.message || {};
  let text = "Waiting for a message: send it with  stagewise task send " + task.id + " '<JSON>'  (or tasks.send).";
  if (left !== null) text += " Times out in " + fmtDur(left) + ", then " + (m.on_timeout === "fail" ? "fails." : "goes on.");
  return text;
}

// The current run, stage by stage: each attempt as a bar on one time axis (its start and
// duration), and the wait the task is in now.
function timeline(task, attempts) {
  const mine = attempts.filter((a) => a.job_id === task.job_id && typeof a.started === "number");
  const now = Date.now() / 1000;
  const t0 = mine.length ? Math.min(...mine.map((a) => a.started)) : null;
  const t1 = Math.max(now, ...mine.map((a) => a.ended || now));
  const span = t0 === null ? 1 : Math.max(t1 - t0, 0.001);
  const rows = mine.map((a) => {
    const end = typeof a.ended === "number" ? a.ended : now;
    const left = ((a.started - t0) / span) * 100;
    const width = Math.max(((end - a.started) / span) * 100, 0.5);
    const bar = el("span", { class: "tl-bar", "data-outcome": a.outcome || "running" });
    bar.style.left = left.toFixed(2) + "%"; // through CSSOM: the page's CSP refuses style attributes
    bar.style.width = width.toFixed(2) + "%";
    return el("div", { class: "tl-row", "data-stage": a.stage },
      el("span", { class: "tl-label" }, "stage " + a.stage),
      el("span", { class: "tl-track" }, bar),
      el("span", { class: "tl-text" }, fmtDur(end - a.started) + " · " + (a.outcome || "running")));
  });
  return el("div", { id: "timeline" },
    rows.length ? rows : el("p", { class: "muted" }, "No attempt in this run yet."),
    el("p", { id: "wait-note", class: "wait-note", hidden: task.status !== "WAITING" }, waitText(task)));
}

// A parent's latest children stage (fan-out): counts by status, and a link to each child.
function childrenSection(task) {
  const c = task.children;
  const counts = Object.entries(c.by_status || {}).sort()
    .map(([st, n]) => el("span", { class: "child-count" }, badge(st), " " + n));
  const links = (c.ids || []).map((id) => el("a", { href: "#/task/" + encodeURIComponent(id), class: "child" }, id));
  return el("section", { id: "children" },
    el("h3", {}, "Children of stage " + c.stage),
    el("p", {}, c.ended + " of " + c.total + " ended (on failure: " + c.on_failure + ") ", ...counts, " ",
      el("a", { href: "#/tasks?parent=" + encodeURIComponent(task.id), id: "children-list" }, "list them")),
    el("details", { id: "children-links" }, el("summary", {}, c.total + " children"), el("div", { class: "children" }, links)));
}

function taskBody(task, attempts) {
  const live = !TERMINAL.has(task.status);
  const parts = [
    el("div", { class: "status-line" },
      el("span", { id: "task-status" }, badge(task.status)),
      el("span", { class: "muted", id: "live" }, live ? "live · refreshing every second" : "final")),
    task.description ? el("p", { class: "description" }, task.description) : null,
  ];
  if (task.error) {
    const e = task.error;
    parts.push(el("div", { class: "error-box", id: "task-error" },
      el("strong", {}, e.code || "ERROR"), e.stage !== undefined ? " at stage " + e.stage : "",
      e.type ? " (" + e.type + ")" : "", el("div", {}, e.message || ""),
      e.traceback ? el("pre", { class: "traceback", id: "task-traceback" }, e.traceback) : null));
  }
  parts.push(
    el("p", { id: "no-executor", class: "warning", hidden: true }),
    summary(task),
    el("h3", {}, "Timeline"),
    timeline(task, attempts),
    task.children ? childrenSection(task) : null,
    el("h3", {}, "Stages"),
    el("table", { id: "stages" },
      el("thead", {}, el("tr", {}, ["#", "Kind", "What", "Params", "Result"].map((h) => el("th", {}, h)))),
      el("tbody", {}, stageRows(task))),
    el("h3", {}, "Attempts"),
    attemptsTable(attempts),
    el("details", { id: "kws" }, el("summary", {}, "Input (kws)"), json(task.kws)));
  if (task.meta && Object.keys(task.meta).length) {
    parts.push(el("details", {}, el("summary", {}, "Meta"), json(task.meta)));
  }
  return parts;
}

function actionBar(id, refresh) {
  const note = el("span", { id: "action-note", class: "muted", role: "status" });
  const from = el("select", { id: "restart-from", title: "restart from" },
    el("option", { value: "first" }, "from the first stage"),
    el("option", { value: "current" }, "from the current stage"));
  const act = async (op, label, extra) => {
    if (!window.confirm(label + " task " + id + "?")) return;
    note.textContent = label + "…";
    try {
      const [res] = await rpc("tasks." + op, { ids: [id], dry_run: false, ...extra });
      if (res.error) note.textContent = label + ": " + res.error;
      else if (!res.changed) note.textContent = label + ": nothing to do (" + res.status + ")";
      else note.textContent = label + ": now " + res.status;
    } catch (err) {
      note.textContent = "";
      failed(generation, err);
    }
    refresh();
  };
  const bar = el("div", { class: "actions" },
    el("button", { type: "button", id: "btn-cancel", class: "danger", onclick: () => act("cancel", "Cancel", {}) }, "Cancel"),
    el("button", { type: "button", id: "btn-unlock", onclick: () => act("unlock", "Unlock", {}) }, "Unlock"),
    el("button", { type: "button", id: "btn-restart", onclick: () => act("restart", "Restart", { from: from.value }) }, "Restart"),
    from, note);
  bar.update = (task) => { // enable what the task's status allows
    const terminal = TERMINAL.has(task.status);
    $("#btn-cancel").disabled = terminal;
    $("#btn-unlock").disabled = task.status !== "RUNNING";
    $("#btn-restart").disabled = !terminal;
    from.disabled = !terminal;
  };
  return bar;
}

function taskView(gen, id) {
  const body = el("div", { id: "task-body" }, el("p", { class: "muted" }, "Loading…"));
  let last = null; // what was rendered: re-render only on change (keeps <details> and scroll)
  let bar = null;
  let seq = 0; // the latest refresh: an older one still in flight neither renders nor reschedules
  const tick = async () => {
    const mine = ++seq;
    stop();
    let task, attempts;
    try {
      [task, attempts] = await Promise.all([rpc("tasks.get", { id }), rpc("tasks.attempts", { id })]);
    } catch (err) {
      if (gen !== generation || mine !== seq) return;
      if (err instanceof RpcError && bar === null) { // e.g. 1001 TASK_NOT_FOUND, or an id that cannot be one
        const title = err.code === 1001 ? "Task not found" : "Cannot show this task";
        return render(gen, el("p", {}, el("a", { href: "#/tasks" }, "« Tasks")), el("h2", {}, title),
          el("p", { class: "muted" }, el("code", {}, id), ": ", err.message));
      }
      failed(gen, err);
      if (!(err instanceof AuthError)) timer = setTimeout(tick, TASK_POLL_MS * 3);
      return;
    }
    if (gen !== generation || mine !== seq) return;
    afterAuth();
    showError("");
    if (bar === null) {
      bar = actionBar(id, () => { if (gen === generation) tick(); });
      render(gen, el("p", {}, el("a", { href: "#/tasks" }, "« Tasks")), el("h2", { class: "id" }, id), bar, body);
    }
    const key = JSON.stringify([task, attempts]);
    if (key !== last) {
      last = key;
      const open = !!$("#kws") && $("#kws").open;
      const kidsOpen = !!$("#children-links") && $("#children-links").open;
      // replaceChildren would write a null (a section the task does not have) as the text "null"
      body.replaceChildren(...taskBody(task, attempts).flat().filter((n) => n !== null && n !== undefined && n !== false));
      if (open) $("#kws").open = true;
      if (kidsOpen && $("#children-links")) $("#children-links").open = true;
      bar.update(task);
    }
    const note = $("#wait-note");
    if (note) note.textContent = waitText(task); // the countdown moves on every tick
    await warnIfNoExecutor(task);
    if (gen !== generation || mine !== seq) return;
    if (!TERMINAL.has(task.status)) timer = setTimeout(tick, TASK_POLL_MS);
  };
  tick();
}

// Work that waits for an executor while none of its app is alive would wait for ever: say so.
async function warnIfNoExecutor(task) {
  const box = $("#no-executor");
  if (!box) return;
  let none = false;
  if (task.status === "QUEUED" || task.status === "SUSPENDED") {
    try {
      none = !(await rpc("executors.list")).some((e) => e.app === task.app);
    } catch {
      none = false; // the task view's own refresh reports errors
    }
  }
  box.hidden = !none;
  box.textContent = none ? "No live executor serves app " + task.app + ": start one with  stagewise executor MODULE:APP." : "";
}

// ------------------------------------------------------------------------------------------ overview

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// A line chart of `series` ({name: [value or null per point]}) over the times `t` (UNIX s):
// plain SVG, one polyline per series, the largest value on the axis, a legend under it.
function chart(id, title, t, series, fmt) {
  const names = Object.keys(series).filter((n) => series[n].some((v) => v !== null && v !== undefined));
  const box = el("figure", { class: "chart", id },
    el("figcaption", {}, title));
  if (!t.length || !names.length) {
    box.append(el("p", { class: "muted empty" }, "No data in the last hour yet."));
    return box;
  }
  const W = 520, H = 140, L = 48, B = 18;
  const max = Math.max(...names.flatMap((n) => series[n].filter((v) => typeof v === "number")), 0) || 1;
  const x = (i) => L + (t.length === 1 ? (W - L) / 2 : (i / (t.length - 1)) * (W - L - 4));
  const y = (v) => H - B - (v / max) * (H - B - 8);
  const plot = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "plot", role: "img", "aria-label": title });
  plot.append(svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }));
  plot.append(svg("text", { x: L - 6, y: 14, "text-anchor": "end", class: "tick" }, fmt(max)));
  plot.append(svg("text", { x: L - 6, y: H - B, "text-anchor": "end", class: "tick" }, fmt(0)));
  const clock = (ts) => { const d = new Date(ts * 1000); return pad(d.getHours()) + ":" + pad(d.getMinutes()); };
  plot.append(svg("text", { x: L, y: H - 2, class: "tick" }, clock(t[0])));
  plot.append(svg("text", { x: W, y: H - 2, "text-anchor": "end", class: "tick" }, clock(t[t.length - 1])));
  const legend = el("div", { class: "legend" });
  names.forEach((n, i) => {
    const color = PALETTE[i % PALETTE.length];
    const points = series[n].map((v, j) => (typeof v === "number" ? x(j).toFixed(1) + "," + y(v).toFixed(1) : null));
    // a gap (null) ends a line: draw each run of points as its own polyline
    let run = [];
    for (const p of [...points, null]) {
      if (p !== null) { run.push(p); continue; }
      if (run.length === 1) plot.append(svg("circle", { cx: run[0].split(",")[0], cy: run[0].split(",")[1], r: 2, fill: color }));
      if (run.length > 1) plot.append(svg("polyline", { points: run.join(" "), fill: "none", stroke: color, "stroke-width": 1.8, "data-series": n }));
      run = [];
    }
    const last = series[n].filter((v) => typeof v === "number").pop();
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = color; // CSSOM: the page's CSP refuses style attributes
    legend.append(el("span", { class: "key" }, swatch, n + " ", el("span", { class: "muted" }, last === undefined ? "" : fmt(last))));
  });
  box.append(plot, legend);
  return box;
}

async function overviewView(gen) {
  let hist, apps;
  try {
    [hist, apps] = await Promise.all([rpc("stats.history"), rpc("apps.list")]);
  } catch (err) {
    failed(gen, err);
    if (gen === generation && !(err instanceof AuthError)) timer = setTimeout(() => overviewView(gen), OVERVIEW_POLL_MS);
    return;
  }
  afterAuth();
  showError("");
  const count = (v) => String(Math.round(v));
  const secs = (v) => fmtDur(v);
  const rows = apps.map((a) =>
    el("tr", { "data-app": a.app, class: a.queued && !a.executors ? "stranded" : "" },
      el("td", {}, el("a", { href: "#/tasks?app=" + encodeURIComponent(a.app) }, a.app)),
      el("td", { class: "num" }, String(a.queued)),
      el("td", { class: "num" }, String(a.running)),
      el("td", { class: "num" }, String(a.waiting)),
      el("td", { class: "num" }, String(a.failed_last_hour)),
      el("td", {}, a.lag === null ? "—" : fmtDur(a.lag)),
      el("td", { class: "num" }, String(a.executors)),
      el("td", { class: "paused" }, a.paused_until ? "until " + fmtTime(a.paused_until) + " " : "",
        pauseButton(a, () => overviewView(gen)))));
  const stranded = apps.filter((a) => a.queued && !a.executors).map((a) => a.app);
  const perMinute = hist.every ? " per " + (hist.every >= 60 ? Math.round(hist.every / 60) + " min" : hist.every + " s") : "";
  const charts = el("div", { class: "charts" },
    chart("chart-finished", "Finished" + perMinute, hist.t, hist.finished, count),
    chart("chart-failed", "Failed" + perMinute, hist.t, hist.failed, count),
    chart("chart-queued", "Queued, per app", hist.t, hist.queued, count),
    chart("chart-lag", "Lag (oldest queued task), per app", hist.t, hist.lag, secs),
    chart("chart-p50", "Stage duration p50, per method", hist.t, hist.p50, secs),
    chart("chart-p95", "Stage duration p95, per method", hist.t, hist.p95, secs));
  const ok = render(gen, el("h2", {}, "Overview"),
    stranded.length ? el("p", { class: "warning", id: "stranded" },
      "Queued work and no live executor for: " + stranded.join(", ") + ". Start one with  stagewise executor MODULE:APP.") : null,
    el("table", { id: "apps" },
      el("thead", {}, el("tr", {}, ["App", "Queued", "Running", "Waiting", "Failed (1 h)", "Lag", "Executors", "Paused"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 8, class: "muted empty" }, "No apps yet.")))),
    el("h3", {}, "The last hour"), charts);
  if (ok) timer = setTimeout(() => overviewView(gen), OVERVIEW_POLL_MS);
}

// Pause (until resumed) or resume an app's claims (apps.pause / apps.resume); `after` redraws.
function pauseButton(a, after) {
  const paused = !!a.paused_until;
  const label = paused ? "Resume" : "Pause";
  return el("button", { type: "button", class: paused ? "resume-app" : "pause-app danger",
    onclick: async () => {
      if (!window.confirm(label + " app " + a.app + "?")) return;
      try {
        await rpc(paused ? "apps.resume" : "apps.pause", { app: a.app });
      } catch (err) {
        failed(generation, err);
      }
      stop();
      after();
    } }, label);
}

// ------------------------------------------------------------------------------------------ limits

// The limit keys asked for lately (limits.list): tasks running under each, held back by it, its
// pause; ?key=K looks one key up (limits.get), seen or not.
async function limitsView(gen, q) {
  let list;
  const key = q.get("key");
  try {
    list = await rpc("limits.list", { max_results: 200 });
    if (key && !list.some((l) => l.key === key)) list.unshift(await rpc("limits.get", { key }));
  } catch (err) {
    failed(gen, err);
    if (gen === generation && !(err instanceof AuthError)) timer = setTimeout(() => limitsView(gen, q), LIMITS_POLL_MS * 2);
    return;
  }
  afterAuth();
  showError("");
  const rows = list.map((l) =>
    el("tr", { "data-key": l.key, class: l.key === key ? "current" : "" },
      el("td", {}, el("code", {}, l.key)),
      el("td", { class: "num" }, String(l.running)),
      el("td", { class: "num" }, String(l.held)),
      el("td", {}, l.paused_until ? "until " + fmtTime(l.paused_until) : "—"),
      el("td", {}, l.seen ? fmtAgo(l.seen) : "—")));
  const table = el("table", { id: "limits" },
    el("thead", {}, el("tr", {}, ["Key", "Running", "Held", "Paused", "Last asked"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 5, class: "muted empty" }, "No limit key asked for yet."))));
  if (render(gen, el("h2", {}, "Limits"), table)) {
    timer = setTimeout(() => limitsView(gen, q), LIMITS_POLL_MS);
  }
}

// ------------------------------------------------------------------------------------------ executors

async function executorsView(gen) {
  let list;
  try {
    list = await rpc("executors.list");
  } catch (err) {
    failed(gen, err);
    if (gen === generation && !(err instanceof AuthError)) timer = setTimeout(() => executorsView(gen), EXECUTORS_POLL_MS * 2);
    return;
  }
  afterAuth();
  showError("");
  const rows = list.map((e) =>
    el("tr", { "data-id": e.id },
      el("td", {}, el("code", {}, e.id)),
      el("td", {}, e.app),
      el("td", {}, e.host || "—"),
      el("td", { class: "num" }, e.pid === null ? "—" : String(e.pid)),
      el("td", {}, fmtTime(e.started)),
      el("td", {}, fmtAgo(e.last_ping)),
      el("td", { class: "num" }, String(e.running))));
  const table = el("table", { id: "executors" },
    el("thead", {}, el("tr", {}, ["ID", "App", "Host", "PID", "Started", "Last ping", "Running"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7, class: "muted empty" }, "No live executors."))));
  if (render(gen, el("h2", {}, "Executors"), table)) {
    timer = setTimeout(() => executorsView(gen), EXECUTORS_POLL_MS);
  }
}

// ------------------------------------------------------------------------------------------ routing

function route() {
  stop();
  showError("");
  const gen = ++generation;
  const hash = location.hash.replace(/^#/, "") || "/overview";
  const qpos = hash.indexOf("?");
  const path = qpos < 0 ? hash : hash.slice(0, qpos);
  const query = new URLSearchParams(qpos < 0 ? "" : hash.slice(qpos + 1));
  const section = path.startsWith("/task/") ? "tasks" : path.slice(1);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === section);
  if (path.startsWith("/task/")) {
    let id;
    try {
      id = decodeURIComponent(path.slice("/task/".length));
    } catch {
      id = path.slice("/task/".length);
    }
    document.title = id + " · stagewise";
    taskView(gen, id);
  } else if (path === "/overview") {
    document.title = "overview · stagewise";
    overviewView(gen);
  } else if (path === "/limits") {
    document.title = "limits · stagewise";
    limitsView(gen, query);
  } else if (path === "/executors") {
    document.title = "executors · stagewise";
    executorsView(gen);
  } else {
    document.title = "tasks · stagewise";
    tasksView(gen, query);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("#info").textContent = "";
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});

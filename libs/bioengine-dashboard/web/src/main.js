// The BioEngine dashboard: reads the public bioengine-worker API with the viewer's own token.
import { hyphaWebsocketClient } from "hypha-rpc";
import { setUsage, usageChart } from "./charts.js";
import { badge, bytes, card, duration, el, empty, errorText, json, num, row, stat, table, time } from "./dom.js";

const TOKEN_KEY = "bioengine-dashboard-token";
const REFRESH_MS = 5000;
const LOG_LINES = 20;

const state = {
  config: null,
  serverUrl: null,
  server: null,
  worker: null,
  user: null,
  isAdmin: false,
  status: null,
  apps: null,
  appsError: null,
  datasets: null,
  datasetsError: null,
  statusError: null,
  panel: "overview",
  timer: null,
  charts: null,
  openDetails: new Set(),
  confirmStop: null,
  actions: {},
  refreshedAt: null,
};

const $ = (id) => document.getElementById(id);

// Replace a panel's content; null and false children (parts that do not apply) are left out.
function fill(panel, ...children) {
  panel.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function say(text, kind = "info") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = !text;
}

// ---- start: config, then the stored token (if any) or the sign-in form ------------------------
async function main() {
  try {
    // _mode=random: Hypha picks one when several gateway replicas registered the page.
    const response = await fetch("./config.json?_mode=random", { cache: "no-store" });
    if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
    state.config = await response.json();
  } catch (error) {
    say(`Cannot load the dashboard's configuration: ${errorText(error)}`, "error");
    return;
  }
  const marker = `/${state.config.workspace}/apps/`;
  const href = window.location.href.split(/[?#]/)[0];
  const cut = href.indexOf(marker);
  state.serverUrl = cut > 0 ? href.slice(0, cut) : window.location.origin;
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      say("Paste a token, or continue without one.", "error");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    signIn(token);
  });
  $("anonymous").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    signIn(null);
  });
  $("logout").addEventListener("click", signOut);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => showPanel(button.dataset.panel));
  }
  const stored = sessionStorage.getItem(TOKEN_KEY);
  if (stored) signIn(stored);
  else showLogin("Sign in to see the worker.");
}

function showLogin(text, kind = "info") {
  $("login").hidden = false;
  $("tabs").hidden = true;
  $("panels").hidden = true;
  $("logout").hidden = true;
  $("worker-state").hidden = true;
  $("whoami").textContent = "";
  say(text, kind);
  $("token").focus();
}

async function signIn(token) {
  $("login").hidden = true;
  say("Connecting to the Hypha server...");
  try {
    const server = await hyphaWebsocketClient.connectToServer({
      server_url: state.serverUrl,
      ...(token ? { token } : {}),
      logger: null,
      method_timeout: 60,
    });
    state.server = server;
    const user = (server.config && server.config.user) || {};
    state.user = user;
    say("Finding the worker...");
    state.worker = await server.getService(state.config.worker_service_id);
    state.isAdmin = Boolean(await state.worker.check_access());
  } catch (error) {
    await disconnect();
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(`Sign-in failed: ${errorText(error)}`, "error");
    return;
  }
  const who = state.user.is_anonymous ? "anonymous" : state.user.email || state.user.id || "unknown user";
  $("whoami").textContent = `${who}${state.isAdmin ? " (admin)" : ""}`;
  $("whoami").dataset.admin = String(state.isAdmin);
  $("logout").hidden = false;
  $("tabs").hidden = false;
  $("panels").hidden = false;
  document.body.classList.toggle("admin", state.isAdmin);
  say("Loading the worker's status...");
  showPanel(state.panel);
  await refresh();
}

async function disconnect() {
  clearTimeout(state.timer);
  state.timer = null;
  if (state.server) {
    try {
      await state.server.disconnect();
    } catch (_error) {
      // already gone
    }
  }
  state.server = null;
  state.worker = null;
}

async function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  await disconnect();
  state.status = state.apps = state.datasets = null;
  for (const panel of document.querySelectorAll(".panel")) fill(panel);
  if (state.charts) {
    for (const chart of Object.values(state.charts)) chart.destroy();
    state.charts = null;
  }
  state.chartsBox = null;
  showLogin("Signed out.");
}

function showPanel(name) {
  state.panel = name;
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.panel === name);
    button.setAttribute("aria-selected", String(button.dataset.panel === name));
  }
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== `panel-${name}`;
  render();
}

// ---- data ----------------------------------------------------------------------------------------
async function refresh() {
  clearTimeout(state.timer);
  if (!state.worker) return;
  const worker = state.worker;
  const [status, apps, datasets] = await Promise.allSettled([
    worker.get_status(),
    worker.get_app_status({ logs_tail: state.isAdmin ? LOG_LINES : 0, _rkwargs: true }),
    worker.list_datasets(),
  ]);
  if (worker !== state.worker) return; // signed out meanwhile
  state.statusError = status.status === "rejected" ? errorText(status.reason) : null;
  if (status.status === "fulfilled") state.status = status.value;
  state.appsError = apps.status === "rejected" ? errorText(apps.reason) : null;
  if (apps.status === "fulfilled") state.apps = apps.value || {};
  state.datasetsError = datasets.status === "rejected" ? errorText(datasets.reason) : null;
  if (datasets.status === "fulfilled") state.datasets = datasets.value || {};
  state.refreshedAt = Date.now();
  if (state.statusError) {
    say(`The worker did not answer: ${state.statusError} (retrying every ${REFRESH_MS / 1000} s)`, "error");
    await findWorkerAgain();
  }
  else say(`Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`, "ok");
  render();
  state.timer = setTimeout(refresh, REFRESH_MS);
}

// A restarted gateway registers under a new client id: ask the page's config.json for it again.
async function findWorkerAgain() {
  try {
    const response = await fetch("./config.json?_mode=random", { cache: "no-store" });
    if (!response.ok) return;
    const config = await response.json();
    if (config.worker_service_id === state.config.worker_service_id || !state.server) return;
    state.worker = await state.server.getService(config.worker_service_id);
    state.config = config;
  } catch (_error) {
    // still down: the next refresh tries again
  }
}

function render() {
  const status = state.status;
  const header = $("worker-state");
  if (status) {
    header.hidden = false;
    header.textContent = status.is_ready ? "ready" : "not ready";
    header.className = `badge ${status.is_ready ? "ok" : "bad"}`;
  }
  const panel = $(`panel-${state.panel}`);
  if (!panel || !state.worker) return;
  if (!status) {
    fill(panel, el("p", { class: "empty", text: state.statusError ? `No status: ${state.statusError}` : "Loading..." }));
    return;
  }
  const renderers = { overview: renderOverview, cluster: renderCluster, slurm: renderSlurm, apps: renderApps, datasets: renderDatasets };
  renderers[state.panel](panel, status);
}

// ---- overview ----------------------------------------------------------------------------------
function renderOverview(panel, status) {
  const reasons = status.not_ready_reasons || [];
  const summary = el(
    "div",
    { class: "stats" },
    stat("Worker", status.is_ready ? "ready" : "not ready", { "data-field": "ready" }),
    stat("BioEngine version", status.bioengine_version || "-", { "data-field": "version" }),
    stat("Mode", status.worker_mode || "-", { "data-field": "mode" }),
    stat("Ray version", status.ray_version || "-"),
    stat("Uptime", duration(status.service_uptime), { "data-field": "uptime" }),
    stat("Ready since", status.ready_since ? time(status.ready_since) : "-"),
    stat("Workspace", status.workspace || "-"),
  );
  const rows = Object.entries(status.services || {}).map(([name, entry]) => {
    const s = entry.status || {};
    const up = Boolean(entry.up);
    return row({ "data-service": name, "data-up": String(up) }, [
      name,
      entry.service_id || "-",
      badge(up ? "up" : "down", up ? "ok" : "bad"),
      up ? badge(s.ready ? "ready" : "not ready", s.ready ? "ok" : "warn") : "-",
      s.version || "-",
      up ? duration(s.uptime) : "-",
      entry.error || (s.hypha && s.hypha.last_error) || "",
    ]);
  });
  const gateway = row({ "data-service": "gateway", "data-up": "true" }, [
    "gateway",
    state.config.worker_service_id,
    badge("up", "ok"),
    badge(status.is_ready ? "ready" : "not ready", status.is_ready ? "ok" : "warn"),
    status.bioengine_version || "-",
    duration(status.service_uptime),
    "",
  ]);
  fill(panel,
    card("Worker", summary),
    reasons.length
      ? card("Why it is not ready", el("ul", { class: "reasons" }, reasons.map((r) => el("li", { text: r }))))
      : null,
    card("Services", table(["Service", "Service id", "State", "Readiness", "Version", "Uptime", "Error"], [gateway, ...rows], { id: "services-table" })),
  );
}

// ---- cluster -----------------------------------------------------------------------------------
function usagePoints(rayCluster, usedKey, totalKey) {
  const history = (rayCluster.usage_history || []).map((p) => ({ at: p.at, used: p[usedKey], total: p[totalKey] }));
  const c = rayCluster.cluster || {};
  if (rayCluster.sampled_at && (!history.length || history[history.length - 1].at < rayCluster.sampled_at)) {
    history.push({ at: rayCluster.sampled_at, used: c[usedKey], total: c[totalKey] });
  }
  return history;
}

const CHARTS = [
  ["cpu", "CPU used", "CPUs", "used_cpu", "total_cpu"],
  ["gpu", "GPU used", "GPUs", "used_gpu", "total_gpu"],
  ["memory", "Memory used", "GiB", "used_memory_gb", "total_memory_gb"],
];

// The charts' element lives across refreshes (Chart.js keeps its canvases); made once.
function chartsBox() {
  if (state.chartsBox) return state.chartsBox;
  const box = el("div", { class: "charts" });
  state.canvases = {};
  for (const [key, title] of CHARTS) {
    const canvas = el("canvas", { "aria-label": `${title} over the last hour`, role: "img" });
    state.canvases[key] = canvas;
    box.append(el("div", { class: "chart card", "data-chart": key }, el("h3", { text: `${title}, last hour` }), el("div", { class: "chart-box" }, canvas)));
  }
  state.chartsBox = box;
  return box;
}

function renderCluster(panel, status) {
  const rc = status.ray_cluster;
  if (!rc) {
    fill(panel, empty("The cluster service has not reported yet."));
    return;
  }
  const c = rc.cluster || {};
  const summary = el(
    "div",
    { class: "stats" },
    stat("CPUs used", `${num(c.used_cpu)} / ${num(c.total_cpu)}`, { "data-field": "cpu" }),
    stat("GPUs used", `${num(c.used_gpu)} / ${num(c.total_gpu)}`, { "data-field": "gpu" }),
    stat("Memory used", `${num(c.used_memory_gb)} / ${num(c.total_memory_gb)} GiB`, { "data-field": "memory" }),
    stat("Object store", `${num(c.used_object_store_memory_gb)} / ${num(c.total_object_store_memory_gb)} GiB`),
    stat("GPUs", rc.gpus || "-"),
    stat("Head", rc.head_address || "-"),
    stat("Sampled", rc.sampled_at ? time(rc.sampled_at) : "-"),
  );
  const nodes = Object.entries(rc.nodes || {}).map(([id, n]) =>
    row({ "data-node": id }, [
      el("code", { title: id, text: id.slice(0, 12) }),
      n.node_ip || "-",
      n.head ? "head" : "worker",
      badge(n.alive ? "alive" : "dead", n.alive ? "ok" : "bad"),
      `${num(n.used_cpu)} / ${num(n.total_cpu)}`,
      `${num(n.used_gpu)} / ${num(n.total_gpu)}`,
      `${num(n.used_memory_gb)} / ${num(n.total_memory_gb)} GiB`,
      n.accelerator_type && n.accelerator_type !== "NA" ? n.accelerator_type : "-",
      n.slurm_job_id || "-",
    ]),
  );
  const demand = (rc.pending_demand || []).map((d) =>
    row({ "data-demand": d.source }, [json(d.resources), String(d.count), d.source]),
  );
  const charts = chartsBox();
  fill(panel,
    rc.error ? el("p", { class: "message error inline", text: `Cluster: ${rc.error}` }) : null,
    card("Cluster", summary),
    charts,
    card("Nodes", nodes.length ? table(["Node", "IP", "Role", "State", "CPU", "GPU", "Memory", "Accelerator", "SLURM job"], nodes, { id: "nodes-table" }) : empty("No nodes.")),
    card("Pending demand", demand.length ? table(["Resources", "Count", "Source"], demand, { id: "demand-table" }) : empty("Nothing is waiting for resources.")),
  );
  if (!state.charts) {
    state.charts = Object.fromEntries(CHARTS.map(([key, title, unit]) => [key, usageChart(state.canvases[key], title, unit)]));
  }
  const now = rc.sampled_at || Date.now() / 1000;
  for (const [key, , , used, total] of CHARTS) {
    const points = usagePoints(rc, used, total);
    setUsage(state.charts[key], points, now);
    // No GPUs in the last hour: no GPU chart (the summary says "no GPUs").
    if (key === "gpu") charts.querySelector('[data-chart="gpu"]').hidden = !points.some((p) => p.total > 0);
  }
  charts.dataset.points = String(state.charts.cpu.data.datasets[0].data.length);
}

// ---- SLURM -------------------------------------------------------------------------------------
function details(key, summary, body) {
  const node = el("details", { "data-key": key, open: state.openDetails.has(key) }, el("summary", { text: summary }), body);
  node.addEventListener("toggle", () => (node.open ? state.openDetails.add(key) : state.openDetails.delete(key)));
  return node;
}

function renderSlurm(panel, status) {
  const rc = status.ray_cluster || {};
  const slurm = rc.slurm;
  if (!slurm) {
    fill(panel, card("SLURM", empty(`This worker runs in ${status.worker_mode || "an unknown"} mode: it submits no SLURM jobs.`)));
    return;
  }
  const w = slurm.worker || {};
  const summary = el(
    "div",
    { class: "stats" },
    stat("Live jobs", `${slurm.live_jobs} (min ${slurm.min_workers}, max ${slurm.max_workers})`, { "data-field": "live-jobs" }),
    stat("One worker job", `${w.cpus} CPUs, ${w.memory_gb} GiB, ${w.gpus} GPUs, ${w.time_limit}`),
    stat("Partition", w.partition || "default"),
    stat("Rounds", `${slurm.rounds} (last ${slurm.last_round_at ? time(slurm.last_round_at) : "-"})`),
    stat("Backoff", slurm.backoff && slurm.backoff.retry_in_s ? `retry in ${slurm.backoff.retry_in_s} s` : "none"),
  );
  const jobs = (slurm.jobs || []).map((j) =>
    row({ "data-job": j.job_id, "data-state": j.state }, [
      j.job_id,
      badge(j.state, j.state === "running" ? "ok" : j.lost ? "bad" : "warn"),
      j.reason || "-",
      j.node || "-",
      duration(j.age_s),
      j.ray_node_id ? el("code", { title: j.ray_node_id, text: j.ray_node_id.slice(0, 12) }) : "-",
    ]),
  );
  const decisions = [...(slurm.decisions || [])].reverse().map((d) =>
    row({ "data-decision": d.action }, [
      time(d.at),
      badge(d.action, d.action === "submit" ? "ok" : d.action === "cancel" || d.action === "lost" ? "warn" : ""),
      d.message,
      details(`decision-${d.at}-${d.action}`, "inputs", el("pre", { text: json(d.inputs) })),
    ]),
  );
  const script = slurm.job_script
    ? el("pre", { class: "script", id: "job-script", text: slurm.job_script })
    : empty(state.isAdmin ? "No job script yet (the Ray head is not up)." : "The job script is shown to admins.");
  fill(panel,
    slurm.error ? el("p", { class: "message error inline", text: `SLURM: ${slurm.error}` }) : null,
    slurm.blocked ? el("p", { class: "message error inline", text: `Submission blocked: ${json(slurm.blocked)}` }) : null,
    card("SLURM", summary),
    card("Jobs", jobs.length ? table(["Job", "State", "Reason", "Node", "Age", "Ray node"], jobs, { id: "jobs-table" }) : empty("No jobs of this worker.")),
    card("Recent scaling decisions", decisions.length ? table(["When", "Action", "Why", "Inputs"], decisions, { id: "decisions-table" }) : empty("No decisions yet.")),
    card("Job script (not submitted: what sbatch would receive)", script),
  );
}

// ---- apps --------------------------------------------------------------------------------------
async function appAction(appId, action) {
  state.actions[appId] = { text: action === "stop" ? "Stopping..." : "Redeploying...", kind: "info" };
  render();
  try {
    if (action === "stop") {
      const result = await state.worker.stop_app({ application_id: appId, _rkwargs: true });
      state.actions[appId] = { text: result.message || result.status, kind: "ok" };
    } else {
      const app = state.apps[appId] || {};
      const args = { artifact_id: app.artifact_id, application_id: appId, _rkwargs: true };
      if (app.version && app.version !== "latest") args.version = app.version;
      await state.worker.deploy_app(args);
      state.actions[appId] = { text: "Redeploy submitted; an unchanged running app is left as it is.", kind: "ok" };
    }
  } catch (error) {
    state.actions[appId] = { text: `${action} failed: ${errorText(error)}`, kind: "error" };
  }
  await refresh();
}

function appCard(appId, app) {
  const st = app.status || "UNKNOWN";
  const kind = st === "RUNNING" ? "ok" : /FAIL|UNHEALTHY/.test(st) ? "bad" : "warn";
  const deployments = Object.entries(app.deployments || {}).map(([name, d]) =>
    row({ "data-deployment": name }, [
      name,
      badge(d.status || "-", d.status === "HEALTHY" ? "ok" : /UNHEALTHY|FAIL/.test(d.status || "") ? "bad" : "warn"),
      Object.entries(d.replica_states || {}).map(([k, v]) => `${v} ${k}`).join(", ") || "none",
      d.message || "",
    ]),
  );
  const logs = [];
  for (const [name, d] of Object.entries(app.deployments || {})) {
    for (const [replica, entry] of Object.entries(d.logs || {})) {
      const lines = [];
      for (const [stream, value] of Object.entries(entry || {})) {
        if (Array.isArray(value)) lines.push(...value.map((l) => (stream === "stdout" ? l : `[${stream}] ${l}`)));
        else if (stream === "error") lines.push(`[error] ${value}`);
      }
      logs.push(details(`logs-${appId}-${replica}`, `${name} / ${replica} (${entry.state || "-"}): last ${lines.length} lines`, el("pre", { class: "logs", text: lines.join("\n") || "(empty)" })));
    }
  }
  const service = (app.service_ids || [])[0] || {};
  const methods = app.available_methods || [];
  const action = state.actions[appId];
  const confirming = state.confirmStop === appId;
  const buttons = state.isAdmin
    ? el(
        "div",
        { class: "actions" },
        el("button", {
          type: "button",
          class: confirming ? "danger" : "secondary",
          "data-action": "stop",
          text: confirming ? "Click again to stop" : "Stop",
          onclick: () => {
            if (state.confirmStop === appId) {
              state.confirmStop = null;
              appAction(appId, "stop");
            } else {
              state.confirmStop = appId;
              render();
              setTimeout(() => {
                if (state.confirmStop === appId) {
                  state.confirmStop = null;
                  render();
                }
              }, 5000);
            }
          },
        }),
        app.artifact_id
          ? el("button", { type: "button", class: "secondary", "data-action": "redeploy", text: "Redeploy", onclick: () => appAction(appId, "redeploy") })
          : null,
      )
    : null;
  return el(
    "article",
    { class: "card app", "data-app": appId, "data-status": st },
    el("div", { class: "app-head" }, el("h3", { text: app.display_name || appId }), badge(st, kind), buttons),
    el("p", { class: "muted", text: `${appId} - ${app.artifact_id || "no artifact"} (${app.version || "-"}); started ${time(app.start_time)}` }),
    action ? el("p", { class: `message inline ${action.kind}`, "data-role": "action", text: action.text }) : null,
    app.reason ? el("p", { class: "message error inline", "data-role": "reason", text: app.reason }) : null,
    app.message ? el("p", { class: "app-message", text: app.message }) : null,
    el("p", {}, el("strong", { text: "Methods: " }), methods.length ? methods.join(", ") : "none listed"),
    el("p", {}, el("strong", { text: "Service: " }), el("code", { text: service.websocket_service_id || "not registered" })),
    deployments.length ? table(["Deployment", "State", "Replicas", "Message"], deployments) : empty("No deployments reported."),
    logs.length ? el("div", { class: "logs-box" }, logs) : null,
  );
}

function renderApps(panel) {
  const apps = state.apps || {};
  const ids = Object.keys(apps).sort();
  fill(panel,
    state.appsError ? el("p", { class: "message error inline", text: `Apps: ${state.appsError}` }) : null,
    ids.length ? el("div", { class: "apps" }, ids.map((id) => appCard(id, apps[id]))) : card("Apps", empty(state.apps ? "No apps are deployed on this worker." : "Loading...")),
  );
  for (const id of Object.keys(state.actions)) if (!(id in apps) && state.actions[id].kind === "ok") panel.prepend(el("p", { class: "message inline ok", text: `${id}: ${state.actions[id].text}` }));
}

// ---- datasets ----------------------------------------------------------------------------------
function renderDatasets(panel, status) {
  const datasets = state.datasets || {};
  const ds = ((status.services || {}).datasets || {}).status || {};
  const httpUrl = ds.http_url;
  // Sizes only where the API gives them (list_datasets has no size today).
  const sized = Object.values(datasets).some((d) => d.size_bytes !== undefined);
  const rows = Object.entries(datasets)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([id, d]) => {
      const url = httpUrl ? `${httpUrl}/data/${encodeURIComponent(id)}/` : null;
      return row({ "data-dataset": id }, [
        el("strong", { text: d.name || id }),
        d.description || "",
        d.public ? badge("public", "ok") : badge("restricted", ""),
        (d.zarr_stores || []).join(", ") || "-",
        ...(sized ? [d.size_bytes !== undefined ? bytes(d.size_bytes) : "-"] : []),
        url ? el("code", { class: "url", text: url }) : "-",
      ]);
    });
  const headers = ["Dataset", "Description", "Access", "Zarr stores", ...(sized ? ["Size"] : []), "Access URL"];
  fill(panel,
    state.datasetsError ? el("p", { class: "message error inline", text: `Datasets: ${state.datasetsError}` }) : null,
    card(
      "Datasets you may read",
      rows.length ? table(headers, rows, { id: "datasets-table" }) : empty(state.datasets ? "No dataset is readable with this token." : "Loading..."),
      el("p", { class: "muted", text: "Open a store with bioengine-datasets-client: HttpZarrStore(f\"{access URL}{store}\", token=...)." }),
    ),
  );
}

window.addEventListener("error", (event) => say(`Page error: ${event.message}`, "error"));
window.addEventListener("unhandledrejection", (event) => say(`Page error: ${errorText(event.reason)}`, "error"));
main();

// Small DOM helpers. Every text from the worker goes in as textContent, never as HTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function table(headers, rows, attrs = {}) {
  const head = el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h }))));
  for (const tr of rows) {
    [...tr.children].forEach((td, i) => td.setAttribute("data-title", headers[i] || ""));
  }
  const body = el("tbody", {}, rows);
  return el("div", { class: "table-wrap" }, el("table", attrs, head, body));
}

export function row(attrs, cells) {
  return el(
    "tr",
    attrs,
    cells.map((cell) => (cell instanceof Node && cell.tagName === "TD" ? cell : el("td", {}, cell))),
  );
}

export function badge(text, kind) {
  return el("span", { class: `badge ${kind || ""}`.trim(), text });
}

export function card(title, ...children) {
  return el("div", { class: "card" }, el("h3", { text: title }), ...children);
}

export function stat(label, value, attrs = {}) {
  return el("div", { class: "stat", ...attrs }, el("div", { class: "stat-label", text: label }), el("div", { class: "stat-value", text: value }));
}

export function empty(text) {
  return el("p", { class: "empty", text });
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return "-";
  let s = Math.max(0, Math.round(Number(seconds)));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

export function time(epochSeconds) {
  if (!epochSeconds || typeof epochSeconds !== "number") return "-";
  return new Date(epochSeconds * 1000).toLocaleString();
}

export function num(value, digits = 2) {
  if (value === null || value === undefined || value === "NA") return "-";
  const n = Number(value);
  return Number.isFinite(n) ? String(Math.round(n * 10 ** digits) / 10 ** digits) : String(value);
}

export function bytes(value) {
  if (value === null || value === undefined) return "-";
  let n = Number(value);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

// The one line of a remote error: hypha-rpc puts the remote traceback in the message.
export function errorText(error) {
  const text = String((error && error.message) || error || "unknown error");
  const lines = text.split("\n").map((l) => l.trim()).filter(Boolean);
  const last = [...lines].reverse().find((l) => /^[A-Za-z_.]*(Error|Exception|Denied|NotFound|Unavailable|Failed)\b.*:/.test(l));
  return (last || lines[lines.length - 1] || text).slice(0, 500);
}

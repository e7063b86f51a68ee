// The PromptFence log viewer. Metadata and sealed blobs come from the server; the admin's private
// key is read from a local file into this tab and used here only (see hpke.js). Every piece of
// record content is inserted with textContent, never as HTML.

import { KeyFileError, OpenError, loadPrivateKey, openRecord } from "./hpke.js";

const $ = (sel) => document.querySelector(sel);
const FILTERS = ["since", "until", "user", "group", "app", "app_type", "operation", "topic", "min_confidence",
  "action", "dlp_match", "prompt_captured", "conversation_id"];
const PALETTE = ["#2457c5", "#b3261e", "#2e7d32", "#a15c00", "#6b3fa0", "#00838f", "#c2185b", "#5d4037", "#546e7a"];
const ACTION_COLOURS = { block: "#b3261e", warn: "#a15c00", redact: "#6b3fa0", log: "#4b5563", allow: "#2e7d32" };

let key = null; // { privateKey: CryptoKey, publicKey, keyId } while loaded
let currentConversation = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function when(ts) {
  const d = new Date(ts * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function topicsText(meta) {
  const entries = Object.entries(meta.topics || {}).filter(([, v]) => v.confidence !== "none");
  return entries.map(([name, v]) => `${name}:${v.confidence}`).join(", ") || "-";
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function query() {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = $(`#f-${name}`).value.trim();
    if (!value) continue;
    if (name === "since" || name === "until") params.set(name, String(new Date(value).getTime() / 1000));
    else params.set(name, value);
  }
  return params;
}

function fill(select, values) {
  const keep = select.value;
  for (const option of [...select.options].slice(1)) option.remove();
  for (const value of values) select.append(el("option", { value }, value));
  select.value = values.includes(keep) ? keep : "";
}

async function loadFacets() {
  const facets = await api("/api/facets");
  for (const name of ["app", "app_type", "operation", "action"]) fill($(`#f-${name}`), facets[name]);
  const topics = ["PII", "CREDENTIALS", "SOURCE_CODE", "CUSTOMER_DATA", "FINANCIAL", "PII_REQUEST", "MALICIOUS_CODE", "JAILBREAK"];
  fill($("#f-topic"), [...new Set([...facets.topic, ...topics])]);
  for (const name of ["user", "group"]) {
    const list = $(`#dl-${name}`);
    list.replaceChildren(...facets[name].map((v) => el("option", { value: v })));
  }
}

async function loadRecords() {
  const params = query();
  params.set("limit", "200");
  const data = await api(`/api/records?${params}`);
  const body = $("#records tbody");
  body.replaceChildren();
  for (const rec of data.records) {
    const m = rec.metadata;
    const action = m.decision.action;
    const row = el("tr", { "data-record-id": rec.record_id, "data-conversation-id": m.conversation_id || "" },
      el("td", {}, when(m.timestamp)),
      el("td", {}, m.user),
      el("td", {}, m.app),
      el("td", {}, m.operation),
      el("td", { class: `action action-${action}` }, m.answer_status === "pending" ? `${action} (answer pending)` : action),
      el("td", {}, topicsText(m)),
      el("td", {}, m.conversation_id || "-"));
    row.addEventListener("click", () => openConversation(m.conversation_id, rec.record_id));
    body.append(row);
  }
  $("#list-status").textContent = `${data.total} record(s) match${data.total > data.records.length ? `; showing the newest ${data.records.length}` : ""}.`;
}

async function loadChart() {
  const params = query();
  params.set("by", $("#chart-by").value);
  params.set("bucket", $("#chart-bucket").value);
  const data = await api(`/api/stats?${params}`);
  drawChart(data);
}

function drawChart(data) {
  const box = $("#chart");
  box.replaceChildren();
  const names = Object.keys(data.series);
  if (!data.buckets.length) { box.append(el("p", { class: "hint" }, "No records in this range.")); return; }
  const W = 900, H = 200, left = 36, bottom = 24, top = 8;
  const totals = data.buckets.map((_, i) => names.reduce((n, name) => n + data.series[name][i], 0));
  const max = Math.max(1, ...totals);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Counts by ${data.by}` });
  const slot = (W - left) / data.buckets.length;
  const barW = Math.max(2, Math.min(40, slot * 0.7));
  const scale = (H - bottom - top) / max;
  chart.append(svg("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, stroke: "#999" }));
  for (const tick of [0, Math.ceil(max / 2), max]) {
    const y = H - bottom - tick * scale;
    const label = svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#5d6875" });
    label.textContent = String(tick);
    chart.append(label);
  }
  const colour = (name, i) => (data.by === "action" && ACTION_COLOURS[name]) || PALETTE[i % PALETTE.length];
  data.buckets.forEach((t, bi) => {
    let y = H - bottom;
    const x = left + bi * slot + (slot - barW) / 2;
    names.forEach((name, ni) => {
      const n = data.series[name][bi];
      if (!n) return;
      const h = n * scale;
      y -= h;
      const rect = svg("rect", { x, y, width: barW, height: h, fill: colour(name, ni), "data-series": name });
      const title = svg("title");
      title.textContent = `${when(t)}: ${name} ${n}`;
      rect.append(title);
      chart.append(rect);
    });
    if (data.buckets.length <= 12 || bi % Math.ceil(data.buckets.length / 12) === 0) {
      const label = svg("text", { x: x + barW / 2, y: H - 8, "text-anchor": "middle", "font-size": 10, fill: "#5d6875" });
      label.textContent = data.bucket_s >= 86400 ? when(t).slice(5, 10) : when(t).slice(5, 16);
      chart.append(label);
    }
  });
  box.append(chart);
  box.append(el("div", { class: "legend" }, ...names.map((name, i) =>
    el("span", {}, swatch(colour(name, i)), `${name} (${data.series[name].reduce((a, b) => a + b, 0)})`))));
}

function swatch(colour) {
  const node = el("span", { class: "swatch" });
  node.style.background = colour; // CSSOM, not a style attribute: allowed by the page's CSP
  return node;
}

async function refresh() {
  showError("");
  try {
    await Promise.all([loadRecords(), loadChart()]);
  } catch (err) {
    showError(`Could not load records: ${err.message}`);
  }
}

async function openConversation(conversationId, recordId) {
  showError("");
  let records;
  try {
    if (conversationId) records = (await api(`/api/conversations/${encodeURIComponent(conversationId)}`)).records;
    else records = [await api(`/api/records/${encodeURIComponent(recordId)}`)];
  } catch (err) {
    showError(`Could not load the conversation: ${err.message}`);
    return;
  }
  currentConversation = { conversationId, recordId, records };
  await renderConversation();
}

async function renderConversation() {
  if (!currentConversation) return;
  const { conversationId, records } = currentConversation;
  const panel = $("#conversation");
  panel.hidden = false;
  $("#conv-title").textContent = conversationId ? `Conversation ${conversationId} (${records.length} record(s))` : `Record ${records[0].record_id}`;
  $("#conv-key-hint").textContent = key ? `Decrypted in this browser with key ${key.keyId}.` : "Load your private key to read the prompts and answers.";
  const list = $("#conv-records");
  list.replaceChildren();
  for (const rec of records) list.append(await renderTurn(rec));
  panel.scrollIntoView({ block: "start" });
}

async function renderTurn(rec) {
  const m = rec.metadata;
  const action = m.decision.action;
  const item = el("li", { class: "turn", "data-record-id": rec.record_id },
    el("div", { class: "meta" },
      `${when(m.timestamp)} · ${m.user}${m.groups.length ? ` (${m.groups.join(", ")})` : ""} · ${m.app} ${m.operation} · `,
      el("span", { class: `action action-${action}` }, action),
      ` · topics ${topicsText(m)} · rules ${m.decision.rule_ids.join(", ") || "-"} · record ${rec.record_id}`));
  if (!key) {
    item.append(el("div", { class: "msg msg-user" }, el("span", { class: "who" }, "user"), `(sealed: ${m.prompt_chars} characters)`));
  } else {
    try {
      const payload = await openRecord(key, rec);
      item.append(el("div", { class: "msg msg-user" }, el("span", { class: "who" }, "user"), payload.prompt));
      for (const name of payload.attachments || []) item.append(el("div", { class: "attachment" }, `attachment: ${name}`));
      if (action === "block") {
        item.append(el("div", { class: "msg msg-blocked" }, el("span", { class: "who" }, "promptfence"), "Blocked: the prompt did not reach the app."));
      } else if (payload.response !== null && payload.response !== undefined) {
        item.append(el("div", { class: "msg msg-assistant" }, el("span", { class: "who" }, "assistant"), payload.response));
      } else {
        const missing = m.answer_status === "pending"
          ? "(answer pending: recorded when the prompt was sent; no answer recorded yet)"
          : m.answer_status === "upstream_error" ? "(the app answered with an error)" : "(answer not captured)";
        item.append(el("div", { class: "msg msg-assistant" }, el("span", { class: "who" }, "assistant"), missing));
      }
    } catch (err) {
      const message = err instanceof OpenError ? err.message : `Could not open this record: ${err.message}`;
      item.append(el("p", { class: "decrypt-error", role: "alert" }, message));
    }
  }
  item.append(feedbackBar(rec));
  return item;
}

function feedbackBar(rec) {
  const topics = Object.entries(rec.metadata.topics || {}).filter(([, v]) => v.confidence !== "none").map(([t]) => t);
  const bar = el("div", { class: "feedback" }, topics.length ? "Feedback:" : "No topic detected.");
  for (const topic of topics) {
    for (const [verdict, label] of [["false_positive", "false positive"], ["true_positive", "true positive"]]) {
      bar.append(el("button", {
        type: "button", "data-topic": topic, "data-verdict": verdict,
        onclick: async (event) => {
          const button = event.currentTarget;
          try {
            await api(`/api/records/${encodeURIComponent(rec.record_id)}/feedback`, {
              method: "POST", headers: { "Content-Type": "application/json", "X-PromptFence-Viewer": "1" },
              body: JSON.stringify({ topic, verdict, reporter: "viewer" }),
            });
            button.textContent = `${topic} ${label}: recorded`;
            button.disabled = true;
          } catch (err) {
            showError(`Feedback not recorded: ${err.message}`);
          }
        },
      }, `${topic}: ${label}`));
    }
  }
  return bar;
}

async function onKeyFile(event) {
  const file = event.target.files[0];
  event.target.value = ""; // the File object is not kept either
  if (!file) return;
  const status = $("#key-status");
  try {
    key = await loadPrivateKey(await file.text());
    status.textContent = `Key ${key.keyId} loaded in this tab only (never uploaded).`;
    status.className = "ok";
    $("#forget-key").hidden = false;
  } catch (err) {
    key = null;
    status.textContent = err instanceof KeyFileError ? err.message : `Could not load the key: ${err.message}`;
    status.className = "bad";
  }
  await renderConversation();
}

function forgetKey() {
  key = null;
  $("#key-status").textContent = "Key forgotten: metadata only.";
  $("#key-status").className = "";
  $("#forget-key").hidden = true;
  renderConversation();
}

async function main() {
  $("#key-file").addEventListener("change", onKeyFile);
  $("#forget-key").addEventListener("click", forgetKey);
  $("#filters").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  $("#filters").addEventListener("reset", () => setTimeout(refresh, 0));
  $("#chart-by").addEventListener("change", () => loadChart().catch((err) => showError(err.message)));
  $("#chart-bucket").addEventListener("change", () => loadChart().catch((err) => showError(err.message)));
  $("#conv-close").addEventListener("click", () => { $("#conversation").hidden = true; currentConversation = null; });
  try {
    await loadFacets();
  } catch (err) {
    showError(`Could not load the log: ${err.message}`);
  }
  await refresh();
  document.body.dataset.ready = "true";
}

main();

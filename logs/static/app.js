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
  const entries = [...Object.entries(meta.topics || {}), ...Object.entries(meta.custom_topics || {})]
    .filter(([, v]) => v.confidence !== "none");
  return entries.map(([name, v]) => `${name}:${v.confidence}`).join(", ") || "-";
}

// Runs that stand for the whole inspection: when one failed, no detector ran (fail-closed).
const WHOLE_INSPECTION_RUNS = ["inspector", "extractor"];

function inspectionFailure(meta) {
  for (const name of WHOLE_INSPECTION_RUNS) {
    const error = (meta.detector_errors || {})[name];
    if (error) return `${error.status || "failed"}: ${error.error || name}`;
  }
  return null;
}

/** "topics PII:high", or "inspection failed: <reason>" when nothing could be inspected. */
function topicsSummary(meta) {
  const topics = topicsText(meta);
  const failure = inspectionFailure(meta);
  if (topics === "-" && failure) return `inspection failed: ${failure}`;
  return `topics ${topics}`;
}

/** "pii.US_SSN" -> "US_SSN", "secret.aws_access_key" -> "aws_access_key". */
function kindLabel(kind) {
  const dot = kind.indexOf(".");
  return dot >= 0 ? kind.slice(dot + 1) : kind;
}

function findingLabel(f) {
  return `${kindLabel(f.kind)} ${Number(f.score).toFixed(2)}`;
}

/**
 * The text with each finding's span marked. Spans are code-point offsets (Python's), so the text
 * is cut by code points, not UTF-16 units. Overlapping findings split the text at every edge; a
 * piece names every finding over it, and the piece where a finding ends carries its label
 * (shown by CSS, so the text itself stays exactly the decrypted text).
 */
function highlighted(text, findings) {
  const cps = Array.from(text);
  const spans = (findings || [])
    .filter((f) => Array.isArray(f.span) && f.span[1] > f.span[0] && f.span[0] < cps.length)
    .map((f) => ({ start: f.span[0], end: Math.min(f.span[1], cps.length), f }));
  const frag = document.createDocumentFragment();
  if (!spans.length) { frag.append(text); return frag; }
  const cuts = [...new Set([0, cps.length, ...spans.flatMap((s) => [s.start, s.end])])].sort((a, b) => a - b);
  for (let i = 0; i < cuts.length - 1; i++) {
    const [a, b] = [cuts[i], cuts[i + 1]];
    const piece = cps.slice(a, b).join("");
    const over = spans.filter((s) => s.start <= a && s.end >= b);
    if (!over.length) { frag.append(piece); continue; }
    const ending = over.filter((s) => s.end === b).map((s) => findingLabel(s.f));
    const attrs = {
      class: "finding",
      "data-kinds": [...new Set(over.map((s) => s.f.kind))].join(" "),
      title: over.map((s) => `${findingLabel(s.f)} (${s.f.topic}, ${s.f.detector})`).join("; "),
    };
    if (ending.length) attrs["data-label"] = ending.join(", ");
    frag.append(el("mark", attrs, piece));
  }
  return frag;
}

/** Findings, detectors (latency, failures), rules, the user's message, what was undone, neighbours. */
function evidence(rec, feedback) {
  const m = rec.metadata;
  const box = el("div", { class: "evidence" });
  const findings = m.findings || [];
  box.append(el("h3", {}, "Evidence"));
  const failure = inspectionFailure(m);
  if (failure) box.append(el("p", { class: "inspection-failed" }, `inspection failed: ${failure}`));
  const flist = el("ul", { class: "findings" });
  for (const f of findings) {
    const where = Array.isArray(f.span) ? `characters ${f.span[0]}-${f.span[1]}` : "no location";
    flist.append(el("li", { "data-kind": f.kind },
      el("strong", {}, findingLabel(f)), ` ${f.topic} · ${f.detector} · ${where} · ${f.explanation || ""}`));
  }
  box.append(el("div", { class: "ev-row" }, el("span", { class: "ev-key" }, "findings"),
    findings.length ? flist : el("span", {}, "none")));
  const table = el("table", { class: "detectors" },
    el("thead", {}, el("tr", {}, el("th", {}, "detector"), el("th", {}, "status"), el("th", {}, "ms"), el("th", {}, "reason"))));
  const tbody = el("tbody");
  const errors = m.detector_errors || {};
  const times = m.detector_ms || {};
  const names = [...new Set([...(m.detectors_run || []), ...Object.keys(errors)])];
  for (const name of names) {
    const error = errors[name];
    tbody.append(el("tr", { class: error ? "detector-failed" : "detector-ok", "data-detector": name },
      el("td", {}, name), el("td", {}, error ? error.status : "ok"),
      el("td", {}, times[name] === undefined ? "-" : Number(times[name]).toFixed(1)),
      el("td", {}, error ? error.error || "-" : "")));
  }
  table.append(tbody);
  box.append(el("div", { class: "ev-row" }, el("span", { class: "ev-key" }, "detectors"),
    names.length ? table : el("span", {}, "none ran")));
  const decision = m.decision || {};
  box.append(el("div", { class: "ev-row" }, el("span", { class: "ev-key" }, "decision"),
    `${decision.action} · rules ${(decision.rule_ids || []).join(", ") || "-"} · policy ${decision.policy || "-"}` +
    (decision.reason ? ` · ${decision.reason}` : "") + (decision.outcome ? ` · ${decision.outcome}` : "")));
  if (decision.message) {
    box.append(el("div", { class: "ev-row" }, el("span", { class: "ev-key" }, "user saw"),
      el("span", { class: "user-message" }, decision.message)));
  }
  if (m.shadow) {
    const differs = m.shadow.action !== null && m.shadow.action !== decision.action;
    box.append(el("div", { class: differs ? "ev-row shadow shadow-differs" : "ev-row shadow" }, el("span", { class: "ev-key" }, "shadow"),
      m.shadow.action === null ? `shadow policy failed (${m.shadow.error || "error"}); not enforced`
        : `${m.shadow.action} · rules ${(m.shadow.rules || []).join(", ") || "-"} · policy ${m.shadow.policy || "-"}` +
          (differs ? " · differs from the enforced decision (not enforced)" : " · agrees")));
  }
  for (const f of m.custom_findings || []) {
    box.append(el("div", { class: "ev-row custom-topic" }, el("span", { class: "ev-key" }, "custom topic"),
      `${f.name} ${Number(f.score).toFixed(2)} · ${f.detector} · ${f.explanation || ""}`));
  }
  if (m.rescan) {
    box.append(el("div", { class: "ev-row rescan" }, el("span", { class: "ev-key" }, "re-scan"),
      `${m.rescan.action} · rules ${(m.rescan.rules || []).join(", ") || "-"} · ${when(m.rescan.at)} · ${m.rescan.marked}`));
  }
  const undone = (m.obfuscation || []).map((o) => (o.count > 1 ? `${o.kind} x${o.count}` : o.kind));
  if (undone.length || (m.transforms || []).length) {
    box.append(el("div", { class: "ev-row" }, el("span", { class: "ev-key" }, "undone"),
      (undone.length ? undone : m.transforms).join(", ")));
  }
  if ((m.inspection_notes || []).length) {
    box.append(el("div", { class: "ev-row" }, el("span", { class: "ev-key" }, "notes"), m.inspection_notes.join("; ")));
  }
  for (const n of m.neighbours || []) {
    box.append(el("div", { class: "ev-row neighbour" }, el("span", { class: "ev-key" }, "neighbour"),
      `centroid ${n.id} (similarity ${Number(n.similarity).toFixed(2)}) moved ${n.topic} by ${Number(n.delta) >= 0 ? "+" : ""}${Number(n.delta).toFixed(2)} (${n.reason})`));
  }
  for (const r of feedback || []) {
    box.append(el("div", { class: "ev-row feedback-report" }, el("span", { class: "ev-key" }, "feedback"),
      `${r.topic} ${String(r.verdict).replace("_", " ")} by ${r.reporter} (${r.source})${r.note ? `: ${r.note}` : ""}`));
  }
  return box;
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
      el("td", {}, topicsSummary(m).replace(/^topics /, "")),
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
  if (data.by === "topic") {
    box.append(el("p", { class: "hint chart-note" }, data.min_confidence === "low"
      ? "Counting topics of low confidence and above."
      : `Counting topics of ${data.min_confidence} confidence and above; choose Min. confidence: low to count low ones too.`));
  }
}

function swatch(colour) {
  const node = el("span", { class: "swatch" });
  node.style.background = colour; // CSSOM, not a style attribute: allowed by the page's CSP
  return node;
}

async function refresh() {
  showError("");
  try {
    await Promise.all([loadRecords(), loadChart(), loadShadow()]);
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
  const list = $("#conv-records");
  list.replaceChildren();
  let opened = 0;
  for (const rec of records) {
    const turn = await renderTurn(rec);
    if (turn.opened) opened += 1;
    list.append(turn.item);
  }
  const hint = $("#conv-key-hint");
  const status = $("#key-status");
  if (!key) {
    hint.textContent = "Load your private key to read the prompts and answers.";
    hint.className = "hint";
  } else if (opened === 0) {
    // The honest state: the key is in the tab, but it opens nothing shown here.
    const sealedTo = [...new Set(records.flatMap((r) => Object.keys(r.sealed || {})))].sort().join(", ") || "no key";
    const text = `The key ${key.keyId} does not open ${records.length === 1 ? "this record" : "these records"}: sealed to key id ${sealedTo}. Load the private key of one of those.`;
    hint.textContent = text;
    hint.className = "hint bad";
    status.textContent = `${text} (The key stays in this tab; it is never uploaded.)`;
    status.className = "bad";
  } else {
    hint.textContent = `Decrypted in this browser with key ${key.keyId}` +
      (opened < records.length ? ` (${opened} of ${records.length} records; the others are sealed to other keys).` : ".");
    hint.className = "hint";
    status.textContent = `Key ${key.keyId} loaded in this tab only (never uploaded).`;
    status.className = "ok";
  }
  panel.scrollIntoView({ block: "start" });
}

function shareBubble(m) {
  return el("div", { class: "msg msg-share" }, el("span", { class: "who" }, "user shared a conversation"),
    `shared conversation ${m.conversation_id || "(id not in the request)"}`);
}

async function renderTurn(rec) {
  const m = rec.metadata;
  const action = m.decision.action;
  const share = m.operation === "Share";
  const failure = inspectionFailure(m);
  const item = el("li", { class: "turn", "data-record-id": rec.record_id },
    el("div", { class: "meta" },
      `${when(m.timestamp)} · ${m.user}${m.groups.length ? ` (${m.groups.join(", ")})` : ""} · ${m.app} ${m.operation} · `,
      el("span", { class: `action action-${action}` }, action),
      ` · `, el("span", { class: failure ? "topics inspection-failed" : "topics" }, topicsSummary(m)),
      ` · rules ${m.decision.rule_ids.join(", ") || "-"} · record ${rec.record_id}`));
  let opened = null;
  if (share) item.append(shareBubble(m));
  if (!key) {
    if (!share || m.prompt_chars) {
      item.append(el("div", { class: "msg msg-user" }, el("span", { class: "who" }, "user"), `(sealed: ${m.prompt_chars} characters)`));
    }
  } else {
    try {
      const payload = await openRecord(key, rec);
      opened = true;
      if (!share || payload.prompt) {
        item.append(el("div", { class: "msg msg-user" }, el("span", { class: "who" }, "user"), highlighted(payload.prompt, m.findings)));
      }
      if (payload.justification !== undefined && payload.justification !== null) {
        item.append(el("div", { class: "justification" }, el("span", { class: "who" }, "justification"), payload.justification));
      }
      for (const name of payload.attachments || []) item.append(el("div", { class: "attachment" }, `attachment: ${name}`));
      if (action === "block") {
        const why = failure ? ` (inspection failed: ${failure})` : "";
        item.append(el("div", { class: "msg msg-blocked" }, el("span", { class: "who" }, "promptfence"), `Blocked: the prompt did not reach the app${why}.`));
      } else if (payload.response !== null && payload.response !== undefined) {
        item.append(el("div", { class: "msg msg-assistant" }, el("span", { class: "who" }, "assistant"), payload.response));
      } else {
        const missing = m.answer_status === "pending"
          ? "(answer pending: recorded when the prompt was sent; no answer recorded yet)"
          : m.answer_status === "upstream_error" ? "(the app answered with an error)" : "(answer not captured)";
        item.append(el("div", { class: "msg msg-assistant" }, el("span", { class: "who" }, "assistant"), missing));
      }
    } catch (err) {
      opened = false;
      const message = err instanceof OpenError ? err.message : `Could not open this record: ${err.message}`;
      item.append(el("p", { class: "decrypt-error", role: "alert" }, message));
    }
  }
  let reports = [];
  try {
    reports = (await api(`/api/records/${encodeURIComponent(rec.record_id)}/feedback`)).reports;
  } catch { /* feedback is extra evidence; the record shows without it */ }
  item.append(evidence(rec, reports));
  item.append(feedbackBar(rec));
  return { item, opened };
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

// Where the shadow policy set would have decided otherwise: counts per change, rule, app, group.
async function loadShadow() {
  const data = await api(`/api/shadow-diff?${query().toString()}`);
  const panel = $("#shadow-panel");
  panel.hidden = !data.with_shadow;
  if (!data.with_shadow) return;
  $("#shadow-summary").textContent =
    `${data.disagreements} of ${data.with_shadow} records with a shadow decision would have been decided differently` +
    (data.shadow_errors ? ` (${data.shadow_errors} shadow evaluation errors)` : "") + ". Shadow decisions are never enforced.";
  const box = $("#shadow-counts");
  box.replaceChildren();
  for (const [title, counts] of [["change", data.by_change], ["rule", data.by_rule], ["app", data.by_app], ["group", data.by_group]]) {
    const entries = Object.entries(counts || {});
    if (!entries.length) continue;
    const list = el("ul", { class: `shadow-by shadow-by-${title}` });
    for (const [name, count] of entries) list.append(el("li", {}, `${name}: ${count}`));
    box.append(el("div", { class: "shadow-group" }, el("h3", {}, `by ${title}`), list));
  }
}

// The proxy's drift alarm (an app changed its wire format): one line per operation in alarm.
async function loadDrift() {
  const data = await api("/api/drift");
  const box = $("#drift");
  box.replaceChildren();
  const alarms = (data.operations || []).filter((op) => op.alarm);
  for (const op of alarms) {
    box.append(el("div", { class: "drift-alarm" },
      `Drift alarm: ${op.operation} (${op.app}): ${Math.round(op.recent_rate * 100)}% of recent traffic not understood ` +
      `(extraction failed ${op.extraction_failed}, decode errors ${op.decode_errors}, unknown shapes ${op.unknown_shapes}, ` +
      `unmapped text ${op.unmapped_text}). Prompts or answers of this operation may be passing uninspected; see promptfence apps status.`));
  }
  box.hidden = alarms.length === 0;
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
  loadDrift().catch(() => {});
  await refresh();
  document.body.dataset.ready = "true";
}

main();

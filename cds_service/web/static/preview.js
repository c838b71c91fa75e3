// legmove-cds card preview: a CDS client in the browser (CDS Hooks 2.0: discovery, hook call, feedback).
// Plain JavaScript, no build step. Card text is chart-derived: it is inserted as text nodes only.
"use strict";

const $ = (id) => document.getElementById(id);
// the service root: the page lives at <root>/preview, so the service may sit behind a path prefix
const BASE = window.location.pathname.replace(/\/preview\/?$/, "");
let services = [];

function uuid4() {
  // crypto.randomUUID needs a secure context; getRandomValues does not
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "hint";
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  return { ok: response.ok, status: response.status, body: await response.json().catch(() => null) };
}

async function postJson(url, body) {
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
  return { ok: response.ok, status: response.status, body: parsed };
}

function diagnostics(body) {
  if (body && Array.isArray(body.issue)) return body.issue.map((i) => i.diagnostics || i.code).join("; ");
  return "no details";
}

// ---- a small, safe Markdown subset: paragraphs, "- " lists, **bold**, *italic*, `code`, \escapes ----

const INLINE = /\\([\\`*_{}[\]()#+\-.!])|\*\*(.+?)\*\*|\*(.+?)\*|`([^`]+)`/g;

const ENTITIES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0" };

function decodeEntities(text) {
  // Markdown shows &lt; as "<": the service escapes HTML in chart text, the page shows the characters (as text)
  return text.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (whole, name) => {
    if (name[0] === "#") {
      const code = name[1].toLowerCase() === "x" ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
      return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : whole;
    }
    return ENTITIES[name.toLowerCase()] ?? whole;
  });
}

function inline(text) {
  const out = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    out.append(decodeEntities(text.slice(last, m.index)));
    if (m[1] !== undefined) out.append(m[1]);
    else if (m[2] !== undefined) out.append(el("strong", {}, inline(m[2])));
    else if (m[3] !== undefined) out.append(el("em", {}, inline(m[3])));
    else out.append(el("code", {}, m[4]));  // code spans keep entities as written (CommonMark)
    last = m.index + m[0].length;
  }
  out.append(decodeEntities(text.slice(last)));
  return out;
}

function markdown(text) {
  const out = document.createDocumentFragment();
  for (const block of String(text).split(/\n{2,}/)) {
    let list = null;
    let para = null;
    for (const line of block.split("\n")) {
      if (/^\s*[-*] /.test(line)) {
        para = null;
        if (!list) { list = el("ul"); out.append(list); }
        list.append(el("li", {}, inline(line.replace(/^\s*[-*] /, ""))));
      } else {
        list = null;
        if (!para) { para = el("p"); out.append(para); } else { para.append(el("br")); }
        para.append(inline(line));
      }
    }
  }
  return out;
}

function safeUrl(url) {
  return typeof url === "string" && /^https?:\/\//i.test(url) ? url : null;
}

// ---- feedback (CDS Hooks 2.0, Feedback) ----

async function sendFeedback(serviceId, item) {
  item.outcomeTimestamp = new Date().toISOString();
  const answer = await postJson(`${BASE}/cds-services/${encodeURIComponent(serviceId)}/feedback`, { feedback: [item] });
  return answer.ok ? "feedback sent" : `feedback refused (${answer.status}: ${diagnostics(answer.body)})`;
}

// ---- cards ----

function renderCard(card, serviceId) {
  const indicator = ["info", "warning", "critical"].includes(card.indicator) ? card.indicator : "info";
  const node = el("article", { class: `card indicator-${indicator}`, "data-card-uuid": card.uuid || "" });
  node.append(el("h2", {}, el("span", { class: "badge" }, indicator), card.summary || ""));
  if (card.detail) node.append(el("div", { class: "detail" }, markdown(card.detail)));
  const source = card.source || {};
  const sourceLine = el("p", { class: "source" }, "Source: ");
  const sourceUrl = safeUrl(source.url);
  sourceLine.append(sourceUrl ? el("a", { href: sourceUrl, target: "_blank", rel: "noopener noreferrer" },
    source.label || sourceUrl) : (source.label || ""));
  node.append(sourceLine);

  const note = el("p", { class: "feedback-note" });
  const actionView = el("pre", { class: "action-view", hidden: true });
  const suggestions = el("div", { class: "suggestions" });
  for (const suggestion of card.suggestions || []) {
    const button = el("button", { type: "button", class: suggestion.isRecommended ? "recommended" : "",
      "data-suggestion-uuid": suggestion.uuid || "" }, suggestion.label || "suggestion");
    button.addEventListener("click", async () => {
      // show what an EHR would apply: every action of the suggestion, as FHIR
      actionView.textContent = JSON.stringify(suggestion.actions || [], null, 2);
      actionView.hidden = false;
      if (card.selectionBehavior === "at-most-one") suggestions.querySelectorAll("button").forEach((b) => { b.disabled = true; });
      note.textContent = `Accepted "${suggestion.label}": ` + await sendFeedback(serviceId,
        { card: card.uuid, outcome: "accepted", acceptedSuggestions: [{ id: suggestion.uuid }] });
    });
    suggestions.append(button);
  }
  if (suggestions.childElementCount) node.append(suggestions);

  const links = (card.links || []).filter((l) => safeUrl(l.url));
  if (links.length) {
    node.append(el("p", { class: "links" }, ...links.flatMap((l) => [
      el("a", { href: l.url, target: "_blank", rel: "noopener noreferrer" }, l.label || l.url), " "])));
  }

  const dismiss = el("button", { type: "button", class: "dismiss" }, "Dismiss");
  const override = el("div", { class: "override", hidden: true });
  const reasons = el("select", { class: "override-reason", ariaLabel: "override reason" },
    el("option", { value: "" }, "(no reason given)"));
  (card.overrideReasons || []).forEach((r, i) => reasons.append(el("option", { value: String(i) }, r.display || r.code)));
  const confirm = el("button", { type: "button", class: "confirm" }, "Send dismissal");
  override.append("Why? ", reasons, " ", confirm);
  dismiss.addEventListener("click", () => { override.hidden = false; });
  confirm.addEventListener("click", async () => {
    const item = { card: card.uuid, outcome: "overridden" };
    if (reasons.value !== "") item.overrideReason = { reason: card.overrideReasons[Number(reasons.value)] };
    confirm.disabled = true;
    node.classList.add("dismissed");
    note.textContent = "Dismissed: " + await sendFeedback(serviceId, item);
  });
  node.append(dismiss, override, actionView, note);

  const explanation = (card.extension || {})["org.legmove-cds.explanation"];
  if (explanation) {
    const why = el("details", { class: "why" }, el("summary", {}, `Why this card: rule ${explanation.rule}`));
    const facts = el("ul");
    if (explanation.ruleTitle) facts.append(el("li", {}, `Rule ${explanation.rule}: ${explanation.ruleTitle}`));
    if (explanation.citation) facts.append(el("li", {}, `Citation: ${explanation.citation}`));
    if ((explanation.findings || []).length) facts.append(el("li", {}, `Findings: ${explanation.findings.join(", ")}`));
    if ((explanation.resources || []).length) facts.append(el("li", {}, `Resources: ${explanation.resources.join(", ")}`));
    why.append(facts, el("pre", {}, JSON.stringify(card.extension, null, 2)));
    node.append(why);
  }
  return node;
}

// ---- the form ----

function source() { return document.querySelector("input[name=source]:checked").value; }
function draftChoice() { return document.querySelector("input[name=draft]:checked").value; }

function syncForm() {
  $("example-fields").hidden = source() !== "example";
  $("fhir-fields").hidden = source() !== "fhir";
  const option = $("example").selectedOptions[0];
  $("example-description").textContent = option ? option.dataset.description : "";
  $("draft-fields").hidden = $("hook").value === "patient-view";
  $("medication-fields").hidden = draftChoice() !== "medication";
  $("procedure-fields").hidden = draftChoice() !== "procedure";
}

let searchTimer = null;
function searchMedications() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const text = $("medication-search").value.trim();
    const answer = text ? await getJson(`${BASE}/preview/medications?q=${encodeURIComponent(text)}`) : { body: { medications: [] } };
    const select = $("medication");
    select.replaceChildren(...(answer.body ? answer.body.medications : []).map((m) =>
      el("option", { value: m.rxcui }, `${m.name} (RxNorm ${m.rxcui})`)));
  }, 200);
}

async function drafts(patientId, exampleContext) {
  const choice = draftChoice();
  if (choice === "example") {
    const bundle = (exampleContext && exampleContext.draftOrders) || { entry: [] };
    return (bundle.entry || []).map((e) => e.resource).filter(Boolean);
  }
  const query = choice === "medication" ? `rxnorm=${encodeURIComponent($("medication").value)}`
    : `procedure=${encodeURIComponent($("procedure").value)}`;
  if (choice === "medication" && !$("medication").value) throw new Error("search for a medication and pick one");
  const answer = await getJson(`${BASE}/preview/draft?${query}&patient=${encodeURIComponent(patientId)}`);
  if (!answer.ok) throw new Error(diagnostics(answer.body));
  return [answer.body];
}

async function run(event) {
  event.preventDefault();
  $("cards").replaceChildren();
  const hook = $("hook").value;
  const service = services.find((s) => s.hook === hook);
  if (!service) { setStatus(`discovery lists no service for ${hook}`, true); return; }
  setStatus(`Calling ${service.id}…`);
  const body = { hook, hookInstance: uuid4(), context: {} };
  let exampleContext = null;
  try {
    if (source() === "example") {
      const answer = await postJson(`${BASE}/preview/example-call`, { example: $("example").value, templates: service.prefetch || {} });
      if (!answer.ok) throw new Error(diagnostics(answer.body));
      exampleContext = answer.body.context;
      body.context = { userId: exampleContext.userId, patientId: exampleContext.patientId };
      body.prefetch = answer.body.prefetch;
    } else {
      const server = $("fhir-server").value.trim();
      const patientId = $("patient-id").value.trim();
      if (!server || !patientId) throw new Error("enter the FHIR server base URL and the patient id");
      body.context = { userId: "Practitioner/preview", patientId };
      body.fhirServer = server;
      const token = $("fhir-token").value;
      if (token) {
        body.fhirAuthorization = { access_token: token, token_type: "Bearer", expires_in: 300,
          scope: "patient/*.read", subject: "legmove-cds-preview", patient: patientId };
      }
    }
    if (hook !== "patient-view") {
      const orders = await drafts(body.context.patientId, exampleContext);
      body.context.draftOrders = { resourceType: "Bundle", type: "collection", entry: orders.map((r) => ({ resource: r })) };
      if (hook === "order-select") {
        const own = draftChoice() === "example" && exampleContext && Array.isArray(exampleContext.selections);
        body.context.selections = own ? exampleContext.selections : orders.map((r) => `${r.resourceType}/${r.id}`);
      }
    }
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  const answer = await postJson(`${BASE}/cds-services/${encodeURIComponent(service.id)}`, body);
  if (!answer.ok) { setStatus(`${service.id} answered ${answer.status}: ${diagnostics(answer.body)}`, true); return; }
  const cards = (answer.body && answer.body.cards) || [];
  setStatus(`${cards.length} card(s) from ${service.id} (${hook}) for Patient/${body.context.patientId}`);
  $("cards").replaceChildren(...cards.map((card) => renderCard(card, service.id)));
}

async function start() {
  document.querySelectorAll("input[name=source], input[name=draft]").forEach((i) => i.addEventListener("change", syncForm));
  $("hook").addEventListener("change", syncForm);
  $("example").addEventListener("change", () => {
    const option = $("example").selectedOptions[0];
    if (option) $("hook").value = option.dataset.hook;
    syncForm();
  });
  $("medication-search").addEventListener("input", searchMedications);
  $("call-form").addEventListener("submit", run);
  const first = $("example").selectedOptions[0];
  if (first) $("hook").value = first.dataset.hook;
  syncForm();
  const answer = await getJson(`${BASE}/cds-services`);
  if (!answer.ok) { setStatus(`discovery answered ${answer.status}`, true); return; }
  services = answer.body.services || [];
  document.body.dataset.ready = "true";
  setStatus(`Discovery lists ${services.length} services. Pick a patient and a hook.`);
}

document.addEventListener("DOMContentLoaded", start);

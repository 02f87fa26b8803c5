// tracklane debugger: a live, filterable list of what the collector receives.
//
// Plain modern JavaScript (an ES module, no framework, no build step). Why no library: the
// page is one view whose only demanding part is a list of up to hundreds of thousands of
// rows; a fixed-height virtualised list (below, about 60 lines) renders only the ~40
// visible rows, which is what a list component of any framework would do, and the rest is
// a form bound to the URL and a JSON pretty-printer. Measured with 50,000 stored events
// (bench/debugger_scroll.py, figures in docs/debugger.md): first rows in 0.6 to 1.8 s on a
// loaded 2-core machine, and a median scroll frame of 16.7 ms, the same as an idle page;
// the page's own JavaScript is about a tenth of the CPU profile. A framework would add a
// vendored file and its updates without a measured gain. Every value from the collector
// reaches the page through textContent, never as HTML. (Browsers cap an element's height
// near 33 million px, so one list holds about a million rows: far more than a page loads.)

import { highlighted, parseExact, sendCommand, text, toJSON } from "./payload.js";

const ROW_HEIGHT = 28; // px, must match --row in debugger.css
const OVERSCAN = 12; // rows rendered above and below the visible ones
const FIRST_PAGE = 500; // newest events loaded on open
const HISTORY_PAGE = 1000; // older events loaded per step while scrolling back
const POLL_MS = 400; // live feed: events appear within a second of arriving
const FILTERS = ["type", "event", "user", "source", "status", "q"];
const API = "/debugger/api/";

const $ = (id) => document.getElementById(id);
const list = $("list");
const spacer = $("spacer");
const form = $("filters");

const state = {
  filters: {},
  events: [], // newest first
  rejects: [], // newest first
  view: [], // the merged list shown, newest first
  rejectedShown: 0, // how many items of view are refusals
  eventsAfter: 0,
  rejectsAfter: 0,
  eventsDone: false,
  loadingOlder: false,
  paused: false,
  pending: [], // items that arrived while paused, in arrival order
  rejectsLog: null, // the collector's refusal log id: a new one restarts refusal seqs
  selected: null, // key of the open item
  generation: 0, // bumped when the filters change; stale answers are dropped
  names: new Set(),
  sources: new Set(),
  pool: [],
};

// ---- items ---------------------------------------------------------------------------

function nameOf(message) {
  switch (message.type) {
    case "track":
      return text(message.event);
    case "page":
    case "screen":
      return [message.category, message.name].filter((v) => v).map(text).join(" / ");
    case "group":
      return text(message.groupId);
    case "alias":
      return `${text(message.previousId)} → ${text(message.userId)}`;
    case "identify":
      return text(message.traits && (message.traits.email ?? message.traits.name));
    default:
      return "";
  }
}

// The slot for routing: per-destination statuses, shown when the API's item carries them
// as "deliveries" (a list of {destination, status, attempts, lastError}, or an object keyed
// by destination). Read beside the event, never from it: a sender could put any field in
// its own message.
function deliveriesOf(entry) {
  const found = entry.deliveries;
  if (!found) return [];
  if (Array.isArray(found)) return found;
  return Object.entries(found).map(([destination, value]) =>
    typeof value === "object" && value !== null ? { destination, ...value } : { destination, status: value },
  );
}

function statusOf(entry) {
  const deliveries = deliveriesOf(entry);
  if (!deliveries.length) return "stored";
  const counts = {};
  for (const d of deliveries) counts[d.status] = (counts[d.status] || 0) + 1;
  return Object.entries(counts).map(([status, n]) => `${n} ${status}`).join(", ");
}

function eventItem(entry) {
  const event = entry.event;
  return {
    key: "e" + entry.seq,
    kind: "event",
    seq: entry.seq,
    time: event.receivedAt,
    type: text(event.type),
    name: nameOf(event),
    user: text(event.userId ?? event.anonymousId),
    source: entry.source,
    status: statusOf(entry),
    entry,
  };
}

function rejectItem(record) {
  const message = record.payload && typeof record.payload === "object" ? record.payload : {};
  return {
    key: "r" + record.seq,
    kind: "rejected",
    seq: record.seq,
    time: record.receivedAt,
    type: typeof message.type === "string" ? message.type : "",
    name: nameOf(message) || record.path,
    user: text(message.userId ?? message.anonymousId),
    source: record.source,
    status: "rejected: " + record.kind,
    entry: record,
  };
}

// Newer first: by receive time, then by kind and seq.
function newer(a, b) {
  if (a.time !== b.time) return a.time > b.time;
  return a.seq > b.seq;
}

function rebuildView() {
  const status = state.filters.status;
  const events = status === "rejected" ? [] : state.events;
  let rejects = status === "accepted" ? [] : state.rejects;
  if (!state.eventsDone && events.length) {
    // Refusals older than the loaded history wait until history reaches them.
    const oldest = events[events.length - 1].time;
    rejects = rejects.filter((r) => r.time >= oldest);
  }
  if (!rejects.length) {
    state.view = events; // shared, not copied: paging through history stays O(page)
    state.rejectedShown = 0;
    return;
  }
  const view = new Array(events.length + rejects.length);
  let i = 0;
  let j = 0;
  for (let k = 0; k < view.length; k++) {
    if (j >= rejects.length || (i < events.length && !newer(rejects[j], events[i]))) view[k] = events[i++];
    else view[k] = rejects[j++];
  }
  state.view = view;
  state.rejectedShown = j;
}

// Position of an item in the view (-1 if not there); only keyboard moves and the payload
// view ask, so a scan beats keeping an index of every row up to date.
function positionOf(key) {
  return key === null ? -1 : state.view.findIndex((item) => item.key === key);
}

// ---- the virtualised list ------------------------------------------------------------

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

function shortTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso || "";
  const time = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return time;
  return `${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${time}`;
}

function makeRow() {
  const row = document.createElement("div");
  row.className = "row";
  row.setAttribute("role", "option");
  for (const cls of ["time", "type", "name", "user", "source", "status"]) {
    const cell = document.createElement("span");
    cell.className = cls;
    row.append(cell);
  }
  spacer.append(row);
  return row;
}

function fillRow(row, item, position) {
  row.style.transform = `translateY(${position * ROW_HEIGHT}px)`;
  if (row.dataset.key !== item.key) {
    row.dataset.key = item.key;
    row.id = "row-" + item.key;
    row.classList.toggle("rejected", item.kind === "rejected");
    const [time, type, name, user, source, status] = row.children;
    time.textContent = shortTime(item.time);
    time.title = item.time || "";
    type.textContent = item.type;
    name.textContent = item.name;
    name.title = item.name;
    user.textContent = item.user;
    user.title = item.user;
    source.textContent = item.source;
    status.textContent = item.status;
  }
  const selected = String(item.key === state.selected);
  if (row.getAttribute("aria-selected") !== selected) row.setAttribute("aria-selected", selected);
  if (row.hidden) row.hidden = false;
}

let frameRequested = false;
function render() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(() => {
    frameRequested = false;
    renderNow();
  });
}

function renderNow() {
  const total = state.view.length;
  spacer.style.height = `${total * ROW_HEIGHT}px`;
  const top = list.scrollTop;
  const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
  const last = Math.min(total, Math.ceil((top + list.clientHeight) / ROW_HEIGHT) + OVERSCAN);
  // Row element for position p is pool[p % pool.length]: while an item stays in view it
  // keeps its element, so a scroll step rewrites only the rows that came into view.
  const pool = state.pool;
  while (pool.length < last - first) pool.push(makeRow());
  const used = new Set();
  for (let position = first; position < last; position++) {
    const row = pool[position % pool.length];
    fillRow(row, state.view[position], position);
    used.add(row);
  }
  for (const row of pool) if (!used.has(row) && !row.hidden) row.hidden = true;
  $("empty").hidden = total > 0;
  const rejected = state.rejectedShown;
  const more = state.eventsDone ? "" : "+ older on scroll";
  $("counts").textContent = `${total - rejected} events · ${rejected} rejected ${more}`;
  if (state.selected && !$("detail").hidden) {
    list.setAttribute("aria-activedescendant", "row-" + state.selected);
  } else list.removeAttribute("aria-activedescendant");
  if (!state.eventsDone && last > total - 200) loadOlder();
}

list.addEventListener("scroll", render, { passive: true });
window.addEventListener("resize", render);

// ---- talking to the collector --------------------------------------------------------

async function api(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const response = await fetch(API + path + "?" + query, { headers: { Accept: "application/json" } });
  const body = parseExact(await response.text());
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function serverFilters() {
  const { type, event, user, source, q } = state.filters;
  return { type, event, user, source, q };
}

function setLive(ok, message) {
  const live = $("live");
  live.className = "live " + (ok ? "on" : "off");
  live.textContent = message;
}

function remember(items) {
  for (const item of items) {
    if (item.kind === "event" && item.type === "track" && item.name && state.names.size < 500) {
      if (!state.names.has(item.name)) {
        state.names.add(item.name);
        const option = document.createElement("option");
        option.value = item.name;
        $("event-names").append(option);
      }
    }
    if (item.source && !state.sources.has(item.source)) {
      state.sources.add(item.source);
      const option = document.createElement("option");
      option.value = item.source;
      $("source-names").append(option);
    }
  }
}

async function reload() {
  const generation = ++state.generation;
  Object.assign(state, {
    events: [],
    rejects: [],
    pending: [],
    eventsAfter: 0,
    rejectsAfter: 0,
    eventsDone: false,
    loadingOlder: false,
  });
  updatePauseButton();
  rebuildView();
  list.scrollTop = 0;
  render();
  const status = state.filters.status;
  const filters = serverFilters();
  try {
    const [events, rejects] = await Promise.all([
      status === "rejected" ? { events: [] } : api("events", { ...filters, limit: FIRST_PAGE }),
      status === "accepted" ? { rejected: [] } : api("rejected", { ...filters, limit: 1000 }),
    ]);
    if (generation !== state.generation) return;
    state.events = events.events.map(eventItem);
    state.rejects = rejects.rejected.map(rejectItem);
    state.eventsAfter = state.events.length ? state.events[0].seq : 0;
    state.rejectsAfter = state.rejects.length ? state.rejects[0].seq : 0;
    state.rejectsLog = rejects.log ?? null;
    state.eventsDone = status === "rejected" || state.events.length < FIRST_PAGE;
    remember(state.events);
    remember(state.rejects);
    rebuildView();
    render();
    if (state.selected) showDetail(state.selected);
    setLive(true, "live");
  } catch (error) {
    if (generation !== state.generation) return;
    setLive(false, `cannot read events: ${error.message}`);
    setTimeout(() => generation === state.generation && reload(), 2000);
    return;
  }
  poll(generation);
}

async function poll(generation) {
  while (generation === state.generation) {
    const status = state.filters.status;
    const filters = serverFilters();
    let full = false;
    try {
      const [events, rejects] = await Promise.all([
        status === "rejected" ? { events: [] } : api("events", { ...filters, after: state.eventsAfter, limit: 1000 }),
        status === "accepted" ? { rejected: [] } : api("rejected", { ...filters, after: state.rejectsAfter, limit: 1000 }),
      ]);
      if (generation !== state.generation) return;
      if (rejects.log && state.rejectsLog && rejects.log !== state.rejectsLog) {
        reload(); // the collector restarted: its refusal numbering began again
        return;
      }
      state.rejectsLog = rejects.log ?? state.rejectsLog;
      const fresh = [...events.events.map(eventItem), ...rejects.rejected.map(rejectItem)];
      if (events.events.length) state.eventsAfter = events.events[events.events.length - 1].seq;
      if (rejects.rejected.length) state.rejectsAfter = rejects.rejected[rejects.rejected.length - 1].seq;
      full = events.events.length === 1000 || rejects.rejected.length === 1000;
      if (fresh.length) arrived(fresh);
      setLive(true, state.paused ? "paused" : "live");
    } catch (error) {
      if (generation !== state.generation) return;
      setLive(false, `offline: ${error.message}`);
    }
    if (!full) await new Promise((resolve) => setTimeout(resolve, document.hidden ? 2000 : POLL_MS));
  }
}

// New items (oldest first, as the cursor gives them) reach the top of the list.
function arrived(fresh) {
  const events = fresh.filter((item) => item.kind === "event").reverse();
  const rejects = fresh.filter((item) => item.kind === "rejected").reverse();
  remember(fresh);
  if (state.paused) {
    state.pending.push(...fresh);
    updatePauseButton();
    return;
  }
  prepend(events, rejects);
}

function prepend(events, rejects) {
  const before = state.view.length;
  state.events = events.concat(state.events);
  state.rejects = rejects.concat(state.rejects);
  rebuildView();
  if (list.scrollTop > 0) list.scrollTop += (state.view.length - before) * ROW_HEIGHT; // keep the rows in place
  render();
}

async function loadOlder() {
  if (state.loadingOlder || state.eventsDone || !state.events.length) return;
  state.loadingOlder = true;
  const generation = state.generation;
  try {
    const oldest = state.events[state.events.length - 1].seq;
    const page = await api("events", { ...serverFilters(), before: oldest, limit: HISTORY_PAGE });
    if (generation !== state.generation) return;
    const older = page.events.map(eventItem);
    for (const item of older) state.events.push(item);
    state.eventsDone = older.length < HISTORY_PAGE;
    remember(older);
    rebuildView();
  } catch (error) {
    setLive(false, `cannot load older events: ${error.message}`);
  } finally {
    if (generation === state.generation) {
      state.loadingOlder = false;
      render();
    }
  }
}

// ---- pause and resume ----------------------------------------------------------------

function updatePauseButton() {
  const button = $("pause");
  button.setAttribute("aria-pressed", String(state.paused));
  const waiting = state.pending.length;
  button.textContent = state.paused ? `Resume (${waiting} new)` : "Pause";
  button.dataset.pending = String(waiting);
}

function togglePause() {
  state.paused = !state.paused;
  if (!state.paused && state.pending.length) {
    const fresh = state.pending;
    state.pending = [];
    prepend(
      fresh.filter((item) => item.kind === "event").reverse(),
      fresh.filter((item) => item.kind === "rejected").reverse(),
    );
  }
  setLive(true, state.paused ? "paused" : "live");
  updatePauseButton();
}

$("pause").addEventListener("click", togglePause);

// ---- filters and the URL -------------------------------------------------------------

function filtersFromURL() {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const name of FILTERS) filters[name] = params.get(name) || "";
  return filters;
}

function showFilters() {
  for (const name of FILTERS) form.elements[name].value = state.filters[name];
}

function applyFilters() {
  const filters = {};
  for (const name of FILTERS) filters[name] = form.elements[name].value.trim();
  if (FILTERS.every((name) => filters[name] === state.filters[name])) return;
  state.filters = filters;
  const params = new URLSearchParams();
  for (const name of FILTERS) if (filters[name]) params.set(name, filters[name]);
  const search = params.toString();
  history.replaceState(null, "", location.pathname + (search ? "?" + search : ""));
  reload();
}

let typing = 0;
form.addEventListener("input", (e) => {
  clearTimeout(typing);
  typing = setTimeout(applyFilters, e.target.tagName === "SELECT" ? 0 : 250);
});
form.addEventListener("change", applyFilters);
form.addEventListener("submit", (e) => {
  e.preventDefault();
  applyFilters();
});
form.addEventListener("reset", () => setTimeout(applyFilters, 0));
window.addEventListener("popstate", () => {
  state.filters = filtersFromURL();
  showFilters();
  reload();
});

// ---- the payload view ----------------------------------------------------------------

function timeRow(label, value, note) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = value ? `${value}${note ? "  " + note : ""}` : "—";
  $("times").append(dt, dd);
}

function skew(sent, received) {
  const ms = Date.parse(received) - Date.parse(sent);
  return Number.isNaN(ms) ? "" : `(clock ${ms >= 0 ? "+" : ""}${ms} ms)`;
}

function selectedItem() {
  const position = positionOf(state.selected);
  return position < 0 ? null : state.view[position];
}

function copyTarget(item) {
  if (item.kind === "event") return item.entry.event;
  return item.entry.payload ?? item.entry.excerpt ?? null;
}

function showDetail(key) {
  state.selected = key;
  const item = selectedItem();
  const detail = $("detail");
  if (!item) {
    detail.hidden = true;
    return;
  }
  detail.hidden = false;
  if (detail.dataset.key !== item.key) detail.scrollTop = 0;
  detail.dataset.key = item.key;
  $("copied").textContent = "";
  $("times").replaceChildren();
  const reason = $("reason");
  if (item.kind === "rejected") {
    const r = item.entry;
    $("detail-title").textContent = `Rejected (${r.kind}): ${item.name || r.path}`;
    reason.hidden = false;
    reason.textContent =
      `${r.reason}\nHTTP ${r.status} on POST ${r.path}` +
      (r.index !== null ? `, message ${r.index} of the batch` : "") +
      ` · source ${r.source}` +
      (r.remote ? ` · from ${r.remote}` : "") +
      (r.userAgent ? ` · ${r.userAgent}` : "");
    timeRow("Received", r.receivedAt);
  } else {
    const event = item.entry.event;
    $("detail-title").textContent = `${item.type}${item.name ? " · " + item.name : ""}`;
    reason.hidden = true;
    timeRow("Sent", event.sentAt, event.sentAt ? skew(event.sentAt, event.receivedAt) : "(no sentAt)");
    timeRow("Received", event.receivedAt);
    timeRow("Corrected", event.timestamp, "(receivedAt − (sentAt − timestamp))");
    timeRow("Client's timestamp", event.originalTimestamp);
    timeRow("Source", item.source);
  }
  showDeliveries(item);
  refreshDeliveries(item, key);
  const target = copyTarget(item);
  const payload = $("payload");
  payload.replaceChildren(typeof target === "string" ? target : highlighted(target));
  const command = $("send-command");
  const sendable = target && typeof target === "object" && typeof target.type === "string";
  command.textContent = sendable ? sendCommand(target) : "(not a message that can be sent)";
  $("copy-send").disabled = !sendable;
  render();
}

// With routing, the statuses the list carried may be old: ask for them again on opening.
async function refreshDeliveries(item, key) {
  if (item.kind !== "event" || !item.entry.deliveries) return;
  try {
    const body = await api(`events/${item.entry.seq}/deliveries`, {});
    item.entry.deliveries = body.deliveries;
  } catch {
    return; // the list's statuses stay shown
  }
  if (state.selected === key) showDeliveries(item);
  render();
}

function showDeliveries(item) {
  const box = $("deliveries");
  box.replaceChildren();
  const deliveries = item.kind === "event" ? deliveriesOf(item.entry) : [];
  if (!deliveries.length) {
    box.textContent =
      item.kind === "event"
        ? "Delivery per destination: none reported for this event (shown here once routing is configured)."
        : "Not stored, so not delivered to any destination.";
    return;
  }
  const table = document.createElement("table");
  const head = table.insertRow();
  for (const title of ["destination", "status", "attempts", "last error"]) {
    const th = document.createElement("th");
    th.textContent = title;
    head.append(th);
  }
  for (const d of deliveries) {
    const row = table.insertRow();
    const status = d.nextAttempt ? `${d.status} (next attempt ${d.nextAttempt})` : d.status;
    for (const value of [d.destination, status, d.attempts, d.lastError ?? d.error]) {
      row.insertCell().textContent = text(value);
    }
  }
  box.append(table);
}

function closeDetail() {
  state.selected = null;
  $("detail").hidden = true;
  render();
  list.focus();
}

async function copy(textToCopy, label) {
  try {
    await navigator.clipboard.writeText(textToCopy);
  } catch {
    // Not a secure context (e.g. reached over a LAN address): the older route still works.
    const area = document.createElement("textarea");
    area.value = textToCopy;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  $("copied").textContent = `${label} copied`;
}

$("copy-json").addEventListener("click", () => {
  const item = selectedItem();
  if (!item) return;
  const target = copyTarget(item);
  copy(typeof target === "string" ? target : toJSON(target, "  "), "JSON");
});
$("copy-send").addEventListener("click", () => copy($("send-command").textContent, "Command"));
$("close").addEventListener("click", closeDetail);

// ---- mouse and keyboard --------------------------------------------------------------

list.addEventListener("click", (e) => {
  const row = e.target.closest(".row");
  if (row && row.dataset.key) {
    showDetail(row.dataset.key);
    list.focus();
  }
});

function moveTo(position) {
  if (!state.view.length) return;
  const target = Math.max(0, Math.min(state.view.length - 1, position));
  const top = target * ROW_HEIGHT;
  if (top < list.scrollTop) list.scrollTop = top;
  else if (top + ROW_HEIGHT > list.scrollTop + list.clientHeight) {
    list.scrollTop = top + ROW_HEIGHT - list.clientHeight;
  }
  showDetail(state.view[target].key);
}

list.addEventListener("keydown", (e) => {
  const current = positionOf(state.selected);
  const page = Math.max(1, Math.floor(list.clientHeight / ROW_HEIGHT) - 1);
  const moves = {
    ArrowDown: current + 1,
    j: current + 1,
    ArrowUp: current - 1,
    k: current - 1,
    PageDown: current + page,
    PageUp: current - page,
    Home: 0,
    End: state.view.length - 1,
  };
  if (e.key in moves && !e.ctrlKey && !e.metaKey && !e.altKey) {
    e.preventDefault();
    moveTo(Math.max(0, moves[e.key]));
  } else if (e.key === "Enter" && state.selected) {
    e.preventDefault();
    $("payload").focus();
  }
});

document.addEventListener("keydown", (e) => {
  const editing = e.target.closest && e.target.closest("input, select, textarea");
  if (e.key === "Escape") {
    if (editing) {
      e.preventDefault(); // a search field would clear itself: leave the filter as typed
      e.target.blur();
      list.focus();
    } else if (state.selected) closeDetail();
    return;
  }
  if (editing || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "/") {
    e.preventDefault();
    form.elements.q.focus();
  } else if (e.key === "p") {
    e.preventDefault();
    togglePause();
  }
});

// ---- start ---------------------------------------------------------------------------

state.filters = filtersFromURL();
showFilters();
reload();
list.focus();

// The key browser: a page of GET /v1/kv at a time, by prefix, kept up to date by the changes the
// page watches (a changed row in place; a key that sorts into the page reloads the page).
import { editing, editorSaw, openEditor } from "./editor.js";
import { NeedsToken, api, errorMessage, tokenGiven } from "./session.js";
import { $, cell, expiresText, expiryDetail, flash, preview, shortVersion } from "./view.js";

const PAGE_SIZE = 50;
const RELOAD_DEBOUNCE_MS = 250;

let prefix = "";
let cursors = [null]; // the `after` of each page seen so far; cursors[page] is this page's
let page = 0;
let next = null;
let items = new Map(); // key -> {key, value, version, expires} of the rows on screen
let reloadTimer = 0;
let loads = 0; // listings asked for: only the latest one is drawn
const highlight = new Set(); // keys to highlight at the next reload

export function currentPrefix() {
  return prefix;
}

function keyRow(item) {
  const row = document.createElement("tr");
  row.dataset.key = item.key;
  fillKeyRow(row, item);
  row.addEventListener("click", () => openEditor(items.get(item.key)));
  return row;
}

function fillKeyRow(row, item) {
  row.replaceChildren();
  cell(row, item.key, "key");
  const value = cell(row, preview(item.value), "value");
  value.title = item.value.length > 2000 ? item.value.slice(0, 2000) + "…" : item.value;
  const version = cell(row, shortVersion(item.version), "version");
  version.title = item.version;
  const expires = cell(row, expiresText(item.expires), "expires");
  expires.dataset.expires = item.expires || "";
  expires.title = item.expires || "does not expire";
  row.classList.toggle("selected", item.key === editing().key);
}

/** Mark the row of the key open in the editor (none for null). */
export function markSelected(key) {
  for (const row of $("keys").tBodies[0].rows) row.classList.toggle("selected", row.dataset.key === key);
}

/** Expiries count down: "in 4m 10s" is redrawn on every poll of the members. */
export function refreshExpiries() {
  for (const td of $("keys").querySelectorAll("td.expires")) td.textContent = expiresText(td.dataset.expires);
  const open = items.get(editing().key);
  if (open) $("edit-expires").textContent = expiryDetail(open.expires);
}

/** List the page on screen again; answers the listing's seq (null when it failed). */
export async function loadPage() {
  clearTimeout(reloadTimer);
  const load = ++loads;
  const params = new URLSearchParams({ prefix, limit: String(PAGE_SIZE) });
  if (cursors[page] !== null) params.set("after", cursors[page]);
  let listing;
  try {
    const response = await api("GET", "/v1/kv?" + params);
    if (!response.ok) throw new Error(await errorMessage(response));
    listing = await response.json();
  } catch (error) {
    if (error instanceof NeedsToken) {
      await tokenGiven();
      return loadPage();
    }
    if (load === loads) $("page-info").textContent = "could not list: " + error.message;
    return null;
  }
  if (load !== loads) return listing.seq; // a search or page asked for since: that one is drawn
  items = new Map(listing.items.map((item) => [item.key, item]));
  next = listing.next;
  const body = document.createElement("tbody");
  for (const item of listing.items) {
    const row = keyRow(item);
    if (highlight.has(item.key)) flash(row, "flash");
    body.append(row);
  }
  highlight.clear();
  $("keys").tBodies[0].replaceWith(body);
  $("keys-empty").hidden = listing.items.length > 0;
  $("prev-page").disabled = page === 0;
  $("next-page").disabled = next === null;
  const first = page * PAGE_SIZE + 1;
  $("page-info").textContent = listing.items.length
    ? "keys " + first + "–" + (first + listing.items.length - 1) + (next === null ? " (last page)" : "")
    : "";
  const open = items.get(editing().key);
  if (open && open.version !== editing().base) editorSaw(open);
  return listing.seq;
}

export function scheduleReload() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(loadPage, RELOAD_DEBOUNCE_MS);
}

/** Whether `key` sorts into the page on screen (the next page starts after `next`). */
function onThisPage(key) {
  if (!key.startsWith(prefix)) return false;
  const after = cursors[page];
  return (after === null || key > after) && (next === null || key <= next);
}

/** A change from the watch stream: a `put` or `delete` event's data. */
export function applyChange(kind, change) {
  if (!onThisPage(change.key)) return;
  const row = $("keys").querySelector('tr[data-key="' + CSS.escape(change.key) + '"]');
  if (kind === "put" && row) {
    const { key, value, version, expires } = change;
    const item = { key, value, version, expires };
    items.set(key, item);
    fillKeyRow(row, item);
    flash(row, "flash");
    if (key === editing().key && version !== editing().base) editorSaw(item);
    return;
  }
  if (kind === "delete" && change.key === editing().key) editorSaw(null);
  highlight.add(change.key);
  scheduleReload();
}

export function wireKeys() {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    prefix = $("prefix").value;
    cursors = [null];
    page = 0;
    loadPage();
  });
  $("next-page").addEventListener("click", () => {
    if (next === null) return;
    cursors[page + 1] = next;
    page += 1;
    loadPage();
  });
  $("prev-page").addEventListener("click", () => {
    if (page === 0) return;
    page -= 1;
    loadPage();
  });
}

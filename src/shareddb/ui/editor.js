// The editor of one key: its whole value, version and expiry; save and delete are conditional on
// the version shown (If-Match, or If-None-Match for a new key), so nobody's write is lost unseen.
import { currentPrefix, markSelected, scheduleReload } from "./keys.js";
import { NeedsToken, api, errorMessage, keyPath, setReadOnly } from "./session.js";
import { $, expiryDetail, shortVersion } from "./view.js";

const CONFIRM_MS = 4000;

let selected = null; // the key open in the editor; null for a new key (or none)
let base = null; // the version the editor's text is based on; null: the key is absent
let dirty = false; // the user changed the value since it was shown

/** The key open in the editor and the version its text is based on. */
export function editing() {
  return { key: selected, base };
}

function message(text, kind) {
  const line = $("editor-message");
  line.textContent = text || "";
  line.className = "editor-message" + (kind ? " " + kind : "");
}

/** Open `item` ({key, value, version, expires}) in the editor, or an empty new key for null. */
export function openEditor(item) {
  $("editor").hidden = false;
  resetDelete();
  dirty = false;
  selected = item ? item.key : null;
  base = item ? item.version : null;
  $("edit-key").value = item ? item.key : currentPrefix();
  $("edit-key").readOnly = Boolean(item);
  $("edit-value").value = item ? item.value : "";
  $("edit-version").textContent = item ? item.version : "— (new key)";
  $("edit-expires").textContent = item ? expiryDetail(item.expires) : "—";
  $("delete-key").hidden = !item;
  $("edit-ttl").value = "";
  message("");
  markSelected(selected);
  if (!item) $("edit-key").focus();
}

/** The key open in the editor changed on the node (null: it was deleted). */
export function editorSaw(item) {
  if (item && !dirty) {
    openEditor(item);
    message("Updated on the node just now.", "ok");
  } else if (item) {
    message("This key changed on the node since you opened it (now " + shortVersion(item.version) + ").", "error");
  } else {
    message("This key was deleted on the node.", "error");
  }
}

function closeEditor() {
  $("editor").hidden = true;
  selected = null;
  base = null;
  dirty = false;
  markSelected(null);
}

function cannotWrite() {
  setReadOnly(true);
  message("This token cannot write: it may read only.", "error");
}

/** A write: its answer, or null when it did not reach the node (the message says why). */
async function send(method, path, options, failed) {
  try {
    return await api(method, path, options);
  } catch (error) {
    if (!(error instanceof NeedsToken)) message(failed + error.message, "error");
    return null;
  }
}

async function save(event) {
  event.preventDefault();
  const key = $("edit-key").value;
  if (!key) return message("A key is needed.", "error");
  const headers = { "Content-Type": "text/plain; charset=utf-8" };
  if (base) headers["If-Match"] = '"' + base + '"';
  else headers["If-None-Match"] = "*";
  const ttl = $("edit-ttl").value.trim();
  const query = ttl ? "?ttl=" + encodeURIComponent(ttl) : "";
  const body = $("edit-value").value;
  const response = await send("PUT", keyPath(key) + query, { body, headers }, "Not saved: ");
  if (response === null) return;
  if (response.status === 403) return cannotWrite();
  if (response.status === 412) {
    // Save again to write anyway: the next attempt is conditional on what the node holds now.
    const expected = base;
    base = (await response.json()).version;
    let why;
    if (base === null) why = "the key was deleted on the node meanwhile. Save again to create it.";
    else if (expected === null) why = "the key exists already. Save again to overwrite it.";
    else why = "the key changed on the node meanwhile (now " + shortVersion(base) + "). Save again to overwrite it.";
    return message("Not saved: " + why, "error");
  }
  if (!response.ok) return message("Not saved: " + (await errorMessage(response)), "error");
  const written = await response.json();
  dirty = false;
  selected = key;
  base = written.version;
  $("edit-key").readOnly = true;
  $("edit-version").textContent = written.version;
  $("delete-key").hidden = false;
  message("Saved (" + shortVersion(written.version) + ").", "ok");
}

function resetDelete() {
  const button = $("delete-key");
  clearTimeout(button.confirmTimer);
  button.classList.remove("confirm");
  button.textContent = "Delete";
}

async function remove() {
  const button = $("delete-key");
  if (!button.classList.contains("confirm")) {
    button.classList.add("confirm");
    button.textContent = "Delete for good?";
    button.confirmTimer = setTimeout(resetDelete, CONFIRM_MS);
    return;
  }
  resetDelete();
  const headers = base ? { "If-Match": '"' + base + '"' } : {};
  const response = await send("DELETE", keyPath(selected), { headers }, "Not deleted: ");
  if (response === null) return;
  if (response.status === 403) return cannotWrite();
  if (response.status === 412) {
    base = (await response.json()).version;
    return message("Not deleted: the key changed on the node meanwhile. Delete again to delete it anyway.", "error");
  }
  if (response.status !== 204 && response.status !== 404) {
    return message("Not deleted: " + (await errorMessage(response)), "error");
  }
  closeEditor();
  scheduleReload();
}

export function wireEditor() {
  $("new-key").addEventListener("click", () => openEditor(null));
  $("close-editor").addEventListener("click", closeEditor);
  $("editor").addEventListener("submit", save);
  $("delete-key").addEventListener("click", remove);
  $("edit-value").addEventListener("input", () => {
    dirty = true;
  });
}

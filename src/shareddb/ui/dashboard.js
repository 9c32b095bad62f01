// The shareddb dashboard: members, a key browser and a live tail of changes, read through the
// node's own v1 API (docs/api.md) with the token the user gives, kept in sessionStorage only.
// Nothing from the node is ever put into the page as HTML: every text goes in through textContent.
// docs/design.md, "Dashboard", says why it reads the watch stream with fetch() and not EventSource.
"use strict";

(() => {
  const TOKEN_KEY = "shareddb.token";
  const CLUSTER_POLL_MS = 1500;
  const PAGE_SIZE = 50;
  const TAIL_MAX = 200;
  const RECONNECT_MS = [500, 1000, 2000, 4000];
  const RELOAD_DEBOUNCE_MS = 250;

  const $ = (id) => document.getElementById(id);

  /** A request the node answered 401 (or 403 on a read: a token it does not take). */
  class NeedsToken extends Error {}

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    tokenWaiters: [],
    readOnly: false,
    prefix: "",
    cursors: [null], // the `after` of each page seen so far; cursors[page] is this page's
    page: 0,
    next: null,
    items: new Map(), // key -> {key, value, version, expires} of the rows on the page
    selected: null, // the key open in the editor, null for a new key
    base: null, // the version the editor's text is based on
    dirty: false,
    reloadTimer: 0,
    flash: new Set(),
    paused: false,
    missed: 0,
    changes: 0,
    watchAbort: null,
    listingSeq: null,
  };

  // -- talking to the node -----------------------------------------------------------------

  async function api(method, path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (state.token) headers.set("Authorization", "Bearer " + state.token);
    const response = await fetch(path, {
      method,
      headers,
      body: options.body,
      signal: options.signal,
      cache: "no-store",
    });
    if (response.status === 401 || (response.status === 403 && method === "GET")) {
      askForToken(await errorMessage(response));
      throw new NeedsToken();
    }
    return response;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      return body.message || body.msg || response.statusText;
    } catch {
      return response.status + " " + response.statusText;
    }
  }

  function keyPath(key) {
    return "/v1/kv/" + encodeURIComponent(key);
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // -- the token ---------------------------------------------------------------------------

  function askForToken(reason) {
    const dialog = $("token-dialog");
    $("token-reason").textContent =
      (state.token ? "The node did not accept that token (" + reason + ")." : "Enter an API token for this node.") +
      " It is kept for this browser tab only.";
    if (!dialog.open) {
      $("token-input").value = "";
      dialog.showModal();
      $("token-input").focus();
    }
  }

  function tokenGiven() {
    return new Promise((resolve) => state.tokenWaiters.push(resolve));
  }

  function setToken(token) {
    state.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    setReadOnly(false);
    $("forget-token").hidden = !token;
    const waiters = state.tokenWaiters.splice(0);
    waiters.forEach((resolve) => resolve());
  }

  function setReadOnly(readOnly) {
    state.readOnly = readOnly;
    document.body.classList.toggle("read-only", readOnly);
    $("token-state").hidden = !readOnly;
  }

  // -- members -----------------------------------------------------------------------------

  function stateBadge(value) {
    const badge = document.createElement("span");
    badge.className = "state " + value;
    badge.textContent = value;
    return badge;
  }

  function cell(row, text, className) {
    const td = row.insertCell();
    if (text instanceof Node) td.append(text);
    else td.textContent = text;
    if (className) td.className = className;
    td.title = td.textContent;
    return td;
  }

  function since(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 60) return seconds.toFixed(1) + " s ago";
    return duration(seconds) + " ago";
  }

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + (s % 60) + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function renderMembers(cluster) {
    const me = cluster.node;
    $("this-node").textContent = me.id + " · " + me.url;
    document.title = "shareddb · " + me.id;
    const body = document.createElement("tbody");
    const self = body.insertRow();
    self.dataset.id = me.id;
    self.dataset.state = me.state;
    const name = document.createElement("span");
    name.textContent = me.id;
    const you = document.createElement("span");
    you.className = "you";
    you.textContent = "this node";
    const nameCell = cell(self, name, "mono");
    nameCell.append(you);
    cell(self, stateBadge(me.state));
    cell(self, "—", "num");
    cell(self, "—");
    cell(self, me.url, "mono");
    let up = me.state === "up" ? 1 : 0;
    for (const member of cluster.members) {
      const row = body.insertRow();
      row.dataset.id = member.id || "";
      row.dataset.state = member.state;
      cell(row, member.id || "(not reached yet)", "mono");
      cell(row, stateBadge(member.state));
      const lag = cell(row, member.state === "left" ? "—" : member.lag.toLocaleString(), "num");
      if (member.state !== "left" && member.lag > 0) lag.classList.add("lagging");
      cell(row, since(member.last_contact));
      cell(row, member.url, "mono");
      if (member.state === "up") up += 1;
    }
    $("members").tBodies[0].replaceWith(body);
    const total = cluster.members.length + 1;
    $("members-summary").textContent = up + " of " + total + " up";
  }

  async function pollCluster() {
    for (;;) {
      try {
        const [response, digest] = await Promise.all([api("GET", "/v1/cluster"), api("GET", "/v1/digest")]);
        if (!response.ok) throw new Error(await errorMessage(response));
        renderMembers(await response.json());
        if (digest.ok) {
          const count = (await digest.json()).count;
          $("key-count").textContent = count.toLocaleString() + (count === 1 ? " live key" : " live keys") + " on this node";
        }
        showNotice(null);
        refreshExpiries();
      } catch (error) {
        if (error instanceof NeedsToken) {
          await tokenGiven();
          continue;
        }
        showNotice("Cannot reach the node (" + error.message + "); trying again…");
      }
      await sleep(CLUSTER_POLL_MS);
    }
  }

  function showNotice(text) {
    const notice = $("notice");
    notice.hidden = !text;
    notice.textContent = text || "";
  }

  // -- keys --------------------------------------------------------------------------------

  function expiresText(iso) {
    if (!iso) return "never";
    const left = (Date.parse(iso) - Date.now()) / 1000;
    return left <= 0 ? "expired" : "in " + duration(left);
  }

  function shortVersion(version) {
    // hlc-node~incarnation: the clock and node say which write it was at a glance.
    return version.split("~")[0];
  }

  function preview(value) {
    const line = value.replace(/\s+/g, " ");
    return line.length > 200 ? line.slice(0, 200) + "…" : line;
  }

  function keyRow(item) {
    const row = document.createElement("tr");
    row.dataset.key = item.key;
    fillKeyRow(row, item);
    row.addEventListener("click", () => openEditor(state.items.get(item.key)));
    return row;
  }

  function fillKeyRow(row, item) {
    row.replaceChildren();
    cell(row, item.key, "key");
    const value = cell(row, item.value === "" ? "(empty)" : preview(item.value), "value");
    value.title = item.value.length > 2000 ? item.value.slice(0, 2000) + "…" : item.value;
    const version = cell(row, shortVersion(item.version), "version");
    version.title = item.version;
    const expires = cell(row, expiresText(item.expires), "expires");
    expires.dataset.expires = item.expires || "";
    expires.title = item.expires || "does not expire";
    row.classList.toggle("selected", item.key === state.selected);
  }

  function refreshExpiries() {
    for (const td of $("keys").querySelectorAll("td.expires")) {
      td.textContent = expiresText(td.dataset.expires);
    }
    if (state.selected !== null) {
      const item = state.items.get(state.selected);
      if (item) $("edit-expires").textContent = expiryDetail(item.expires);
    }
  }

  function flashRow(row) {
    row.classList.remove("flash");
    void row.offsetWidth; // restart the animation
    row.classList.add("flash");
  }

  async function loadPage() {
    clearTimeout(state.reloadTimer);
    const after = state.cursors[state.page];
    const params = new URLSearchParams({ prefix: state.prefix, limit: String(PAGE_SIZE) });
    if (after !== null) params.set("after", after);
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
      $("page-info").textContent = "could not list: " + error.message;
      return null;
    }
    state.items = new Map(listing.items.map((item) => [item.key, item]));
    state.next = listing.next;
    const body = document.createElement("tbody");
    for (const item of listing.items) {
      const row = keyRow(item);
      if (state.flash.has(item.key)) flashRow(row);
      body.append(row);
    }
    state.flash.clear();
    $("keys").tBodies[0].replaceWith(body);
    $("keys-empty").hidden = listing.items.length > 0;
    $("prev-page").disabled = state.page === 0;
    $("next-page").disabled = listing.next === null;
    const first = state.page * PAGE_SIZE + 1;
    $("page-info").textContent = listing.items.length
      ? "keys " + first + "–" + (first + listing.items.length - 1) + (listing.next ? "" : " (last page)")
      : "";
    const open = state.items.get(state.selected);
    if (open && open.version !== state.base) editorSaw(open);
    return listing.seq;
  }

  function scheduleReload() {
    clearTimeout(state.reloadTimer);
    state.reloadTimer = setTimeout(loadPage, RELOAD_DEBOUNCE_MS);
  }

  /** Whether `key` sorts into the page on screen (the next page starts after `state.next`). */
  function onThisPage(key) {
    if (!key.startsWith(state.prefix)) return false;
    const after = state.cursors[state.page];
    return (after === null || key > after) && (state.next === null || key <= state.next);
  }

  function applyChange(kind, change) {
    if (!onThisPage(change.key)) return;
    const row = $("keys").querySelector('tr[data-key="' + CSS.escape(change.key) + '"]');
    if (kind === "put" && row) {
      const item = { key: change.key, value: change.value, version: change.version, expires: change.expires };
      state.items.set(change.key, item);
      fillKeyRow(row, item);
      flashRow(row);
      if (change.key === state.selected && change.version !== state.base) editorSaw(item);
      return;
    }
    if (kind === "delete" && change.key === state.selected) editorSaw(null);
    state.flash.add(change.key);
    scheduleReload();
  }

  // -- the editor --------------------------------------------------------------------------

  function expiryDetail(iso) {
    return iso ? new Date(iso).toLocaleString() + " (" + expiresText(iso) + ")" : "never";
  }

  function editorMessage(text, kind) {
    const message = $("editor-message");
    message.textContent = text || "";
    message.className = "editor-message" + (kind ? " " + kind : "");
  }

  function openEditor(item) {
    const editor = $("editor");
    editor.hidden = false;
    resetDelete();
    state.dirty = false;
    if (item) {
      state.selected = item.key;
      state.base = item.version;
      $("edit-key").value = item.key;
      $("edit-key").readOnly = true;
      $("edit-value").value = item.value;
      $("edit-version").textContent = item.version;
      $("edit-expires").textContent = expiryDetail(item.expires);
      $("delete-key").hidden = false;
    } else {
      state.selected = null;
      state.base = null;
      $("edit-key").value = state.prefix;
      $("edit-key").readOnly = false;
      $("edit-value").value = "";
      $("edit-version").textContent = "— (new key)";
      $("edit-expires").textContent = "—";
      $("delete-key").hidden = true;
      $("edit-key").focus();
    }
    $("edit-ttl").value = "";
    editorMessage("");
    for (const row of $("keys").tBodies[0].rows) {
      row.classList.toggle("selected", row.dataset.key === state.selected);
    }
  }

  /** The key open in the editor changed on the node (null: it was deleted). */
  function editorSaw(item) {
    if (!state.dirty && item) {
      openEditor(item);
      editorMessage("Updated on the node just now.", "ok");
    } else if (item) {
      editorMessage("This key changed on the node since you opened it (now " + shortVersion(item.version) + ").", "error");
    } else {
      editorMessage("This key was deleted on the node.", "error");
    }
  }

  function closeEditor() {
    $("editor").hidden = true;
    state.selected = null;
    state.base = null;
    state.dirty = false;
    for (const row of $("keys").tBodies[0].rows) row.classList.remove("selected");
  }

  function cannotWrite() {
    setReadOnly(true);
    editorMessage("This token cannot write: it may read only.", "error");
  }

  async function save(event) {
    event.preventDefault();
    const key = $("edit-key").value;
    if (!key) {
      editorMessage("A key is needed.", "error");
      return;
    }
    const headers = { "Content-Type": "text/plain; charset=utf-8" };
    if (state.base) headers["If-Match"] = '"' + state.base + '"';
    else headers["If-None-Match"] = "*";
    const ttl = $("edit-ttl").value.trim();
    const query = ttl ? "?ttl=" + encodeURIComponent(ttl) : "";
    let response;
    try {
      response = await api("PUT", keyPath(key) + query, { body: $("edit-value").value, headers });
    } catch (error) {
      if (!(error instanceof NeedsToken)) editorMessage("Not saved: " + error.message, "error");
      return;
    }
    if (response.status === 403) return cannotWrite();
    if (response.status === 412) {
      // Save again to write anyway: the next attempt is conditional on what the node holds now.
      const expected = state.base;
      const current = (await response.json()).version;
      state.base = current;
      let why;
      if (current === null) why = "the key was deleted on the node meanwhile. Save again to create it.";
      else if (expected === null) why = "the key exists already. Save again to overwrite it.";
      else why = "the key changed on the node meanwhile (now " + shortVersion(current) + "). Save again to overwrite it.";
      editorMessage("Not saved: " + why, "error");
      return;
    }
    if (!response.ok) {
      editorMessage("Not saved: " + (await errorMessage(response)), "error");
      return;
    }
    const written = await response.json();
    state.dirty = false;
    state.selected = key;
    state.base = written.version;
    $("edit-key").readOnly = true;
    $("edit-version").textContent = written.version;
    $("delete-key").hidden = false;
    editorMessage("Saved (" + shortVersion(written.version) + ").", "ok");
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
      button.confirmTimer = setTimeout(resetDelete, 4000);
      return;
    }
    resetDelete();
    const key = state.selected;
    const headers = state.base ? { "If-Match": '"' + state.base + '"' } : {};
    let response;
    try {
      response = await api("DELETE", keyPath(key), { headers });
    } catch (error) {
      if (!(error instanceof NeedsToken)) editorMessage("Not deleted: " + error.message, "error");
      return;
    }
    if (response.status === 403) return cannotWrite();
    if (response.status === 412) {
      const body = await response.json();
      state.base = body.version;
      editorMessage("Not deleted: the key changed on the node meanwhile. Delete again to delete it anyway.", "error");
      return;
    }
    if (response.status !== 204 && response.status !== 404) {
      editorMessage("Not deleted: " + (await errorMessage(response)), "error");
      return;
    }
    closeEditor();
    scheduleReload();
  }

  // -- the live tail -----------------------------------------------------------------------

  function addToTail(kind, change) {
    state.changes += 1;
    $("tail-count").textContent = state.changes.toLocaleString() + " since this page opened";
    if (state.paused) {
      state.missed += 1;
      $("pause-tail").textContent = "Resume (" + state.missed + " new)";
      return;
    }
    const item = document.createElement("li");
    item.className = "fresh";
    item.dataset.key = change.key;
    item.dataset.op = kind;
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = new Date().toLocaleTimeString();
    const op = document.createElement("span");
    op.className = "op " + kind;
    op.textContent = kind;
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = change.key;
    key.title = change.key;
    const detail = document.createElement("span");
    detail.className = "detail";
    const value = kind === "put" ? (change.value === "" ? "(empty)" : preview(change.value)) : "";
    detail.textContent = [value, shortVersion(change.version), change.expires ? "expires " + expiresText(change.expires) : ""]
      .filter(Boolean)
      .join("  ·  ");
    detail.title = change.version;
    item.append(time, op, key, detail);
    const tail = $("tail");
    tail.prepend(item);
    while (tail.children.length > TAIL_MAX) tail.lastElementChild.remove();
    $("tail-empty").hidden = true;
  }

  function setStream(value, text) {
    const pill = $("stream-state");
    pill.dataset.state = value;
    pill.textContent = text;
  }

  /** Server-Sent Events from a fetch() body: EventSource cannot send an Authorization header. */
  async function* events(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { id: null, type: "message", data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) yield { id: event.id, type: event.type, data: event.data.join("\n") };
          event = { id: null, type: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: ": ping"
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "id") event.id = text;
        else if (field === "event") event.type = text;
        else if (field === "data") event.data.push(text);
      }
    }
  }

  async function watch(since) {
    let seq = since;
    let failures = 0;
    for (;;) {
      const abort = new AbortController();
      state.watchAbort = abort;
      try {
        const query = "prefix=" + (seq === null ? "" : "&since=" + seq);
        const response = await api("GET", "/v1/watch?" + query, { signal: abort.signal });
        if (response.status === 410) {
          // This node cannot replay from there (a purge, or a wiped node): list again.
          seq = await loadPage();
          continue;
        }
        if (!response.ok) throw new Error(await errorMessage(response));
        setStream("live", "live");
        failures = 0;
        for await (const event of events(response.body)) {
          const change = JSON.parse(event.data);
          seq = change.seq;
          addToTail(event.type, change);
          applyChange(event.type, change);
        }
        throw new Error("the stream ended");
      } catch (error) {
        if (error instanceof NeedsToken) {
          setStream("connecting", "needs a token");
          await tokenGiven();
          continue;
        }
        if (abort.signal.aborted) continue; // a new token: connect again at once
        setStream("offline", "reconnecting");
        await sleep(RECONNECT_MS[Math.min(failures, RECONNECT_MS.length - 1)]);
        failures += 1;
      }
    }
  }

  // -- wiring ------------------------------------------------------------------------------

  function search(event) {
    event.preventDefault();
    state.prefix = $("prefix").value;
    state.cursors = [null];
    state.page = 0;
    loadPage();
  }

  function wire() {
    $("search").addEventListener("submit", search);
    $("next-page").addEventListener("click", () => {
      if (state.next === null) return;
      state.cursors[state.page + 1] = state.next;
      state.page += 1;
      loadPage();
    });
    $("prev-page").addEventListener("click", () => {
      if (state.page === 0) return;
      state.page -= 1;
      loadPage();
    });
    $("new-key").addEventListener("click", () => openEditor(null));
    $("close-editor").addEventListener("click", closeEditor);
    $("editor").addEventListener("submit", save);
    $("delete-key").addEventListener("click", remove);
    $("edit-value").addEventListener("input", () => {
      state.dirty = true;
    });
    $("pause-tail").addEventListener("click", () => {
      state.paused = !state.paused;
      state.missed = 0;
      $("pause-tail").textContent = state.paused ? "Resume" : "Pause";
      $("pause-tail").setAttribute("aria-pressed", String(state.paused));
    });
    $("token-form").addEventListener("submit", () => {
      setToken($("token-input").value.trim());
      if (state.watchAbort) state.watchAbort.abort();
    });
    $("token-dialog").addEventListener("cancel", (event) => event.preventDefault());
    $("forget-token").addEventListener("click", () => {
      setToken(null);
      location.reload();
    });
    $("forget-token").hidden = !state.token;
  }

  async function start() {
    wire();
    pollCluster();
    const seq = await loadPage();
    // Watch from the listing's position, so no change between the two is missed.
    watch(seq === undefined ? null : seq);
  }

  start();
})();

// The token and every request to the node: the one place that sends `Authorization` and that
// asks the user for a token when the node answers 401. The token lives in sessionStorage only.
import { $ } from "./view.js";

const TOKEN_KEY = "shareddb.token";

let token = sessionStorage.getItem(TOKEN_KEY);
let waiters = [];

/** A request the node answered 401 (or 403 on a read: a token it does not take). */
export class NeedsToken extends Error {}

export async function api(method, path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set("Authorization", "Bearer " + token);
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

/** The one readable line of a failed answer, in either of the node's error shapes. */
export async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.message || body.msg || response.statusText;
  } catch {
    return response.status + " " + response.statusText;
  }
}

export function keyPath(key) {
  return "/v1/kv/" + encodeURIComponent(key);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function askForToken(reason) {
  const dialog = $("token-dialog");
  $("token-reason").textContent =
    (token ? "The node did not accept that token (" + reason + ")." : "Enter an API token for this node.") +
    " It is kept for this browser tab only.";
  if (!dialog.open) {
    $("token-input").value = "";
    dialog.showModal();
    $("token-input").focus();
  }
}

/** Resolves once the user has given a token: what a request that needed one waits for. */
export function tokenGiven() {
  return new Promise((resolve) => waiters.push(resolve));
}

function setToken(value) {
  token = value;
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  setReadOnly(false);
  $("forget-token").hidden = !value;
  const waiting = waiters;
  waiters = [];
  waiting.forEach((resolve) => resolve());
}

/** After a write was refused with 403: the token may read only, so the edit controls go. */
export function setReadOnly(readOnly) {
  document.body.classList.toggle("read-only", readOnly);
  $("token-state").hidden = !readOnly;
}

/** `onToken` runs after the user gives a token (the live stream reconnects with it). */
export function wireToken(onToken) {
  $("token-form").addEventListener("submit", () => {
    setToken($("token-input").value.trim());
    onToken();
  });
  $("token-dialog").addEventListener("cancel", (event) => event.preventDefault());
  $("forget-token").addEventListener("click", () => {
    setToken(null);
    location.reload();
  });
  $("forget-token").hidden = !token;
}

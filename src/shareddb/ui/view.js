// Small pieces every part of the page shows things with. Text from the node goes in through
// textContent only, never as HTML.

export const $ = (id) => document.getElementById(id);

/** A new cell of `row` holding `content` (text or an element), its text also as its tooltip. */
export function cell(row, content, className) {
  const td = row.insertCell();
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  if (className) td.className = className;
  td.title = td.textContent;
  return td;
}

export function stateBadge(value) {
  const badge = document.createElement("span");
  badge.className = "state " + value;
  badge.textContent = value;
  return badge;
}

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + "s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m " + (s % 60) + "s";
  const h = Math.floor(m / 60);
  if (h < 48) return h + "h " + (m % 60) + "m";
  return Math.floor(h / 24) + "d " + (h % 24) + "h";
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 60) return seconds.toFixed(1) + " s ago";
  return duration(seconds) + " ago";
}

export function expiresText(iso) {
  if (!iso) return "never";
  const left = (Date.parse(iso) - Date.now()) / 1000;
  return left <= 0 ? "expired" : "in " + duration(left);
}

export function expiryDetail(iso) {
  return iso ? new Date(iso).toLocaleString() + " (" + expiresText(iso) + ")" : "never";
}

/** A version without its store incarnation: the clock and the node that took the write. */
export function shortVersion(version) {
  return version.split("~")[0];
}

export function preview(value) {
  if (value === "") return "(empty)";
  const line = value.replace(/\s+/g, " ");
  return line.length > 200 ? line.slice(0, 200) + "…" : line;
}

/** Highlight an element for a moment (again, if it already was). */
export function flash(element, className) {
  element.classList.remove(className);
  void element.offsetWidth; // restarts the animation
  element.classList.add(className);
}

// The live tail: every change committed on this node, newest first.
import { $, expiresText, preview, shortVersion } from "./view.js";

const TAIL_MAX = 200;

let changes = 0;
let paused = false;
let missed = 0;

export function addToTail(kind, change) {
  changes += 1;
  $("tail-count").textContent = changes.toLocaleString() + " since this page opened";
  if (paused) {
    missed += 1;
    $("pause-tail").textContent = "Resume (" + missed + " new)";
    return;
  }
  const item = document.createElement("li");
  item.dataset.key = change.key;
  item.dataset.op = kind;
  const parts = [
    ["time", new Date().toLocaleTimeString()],
    ["op " + kind, kind],
    ["key", change.key],
    [
      "detail",
      [
        kind === "put" ? preview(change.value) : "",
        shortVersion(change.version),
        change.expires ? "expires " + expiresText(change.expires) : "",
      ]
        .filter(Boolean)
        .join("  ·  "),
    ],
  ];
  for (const [className, text] of parts) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    item.append(span);
  }
  item.querySelector(".key").title = change.key;
  item.querySelector(".detail").title = change.version;
  item.className = "fresh";
  const tail = $("tail");
  tail.prepend(item);
  while (tail.children.length > TAIL_MAX) tail.lastElementChild.remove();
  $("tail-empty").hidden = true;
}

export function wireTail() {
  $("pause-tail").addEventListener("click", () => {
    paused = !paused;
    missed = 0;
    $("pause-tail").textContent = paused ? "Resume" : "Pause";
    $("pause-tail").setAttribute("aria-pressed", String(paused));
  });
}

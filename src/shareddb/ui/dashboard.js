// The shareddb dashboard: members, a key browser and a live tail of changes, read through the
// node's own v1 API (docs/api.md) with the token the user gives, kept in sessionStorage only.
// Nothing from the node is ever put into the page as HTML: every text goes in through textContent.
// docs/design.md, "Dashboard", says why it reads the watch stream with fetch() and not EventSource.
//
// This module starts the page and runs the one watch stream the key browser and the tail share:
// members.js, keys.js, editor.js and tail.js draw the parts; session.js talks to the node.
import { wireEditor } from "./editor.js";
import { applyChange, loadPage, refreshExpiries, wireKeys } from "./keys.js";
import { pollMembers } from "./members.js";
import { NeedsToken, api, errorMessage, sleep, tokenGiven, wireToken } from "./session.js";
import { events } from "./sse.js";
import { addToTail, wireTail } from "./tail.js";
import { $ } from "./view.js";

const RECONNECT_MS = [500, 1000, 2000, 4000];

let watchAbort = null;

function setStream(value, text) {
  const pill = $("stream-state");
  pill.dataset.state = value;
  pill.textContent = text;
}

/** Watch every key from `since` (a listing's seq: nothing in between is missed) for ever. */
async function watch(since) {
  let seq = since;
  let failures = 0;
  for (;;) {
    const abort = new AbortController();
    watchAbort = abort;
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

async function start() {
  wireToken(() => watchAbort?.abort());
  wireKeys();
  wireEditor();
  wireTail();
  pollMembers(refreshExpiries);
  watch(await loadPage());
}

start();

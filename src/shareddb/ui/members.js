// The members: this node and every member it knows, polled from GET /v1/cluster.
import { NeedsToken, api, errorMessage, sleep, tokenGiven } from "./session.js";
import { $, ago, cell, stateBadge } from "./view.js";

const POLL_MS = 1500;

function render(cluster) {
  const me = cluster.node;
  $("this-node").textContent = me.id + " · " + me.url;
  document.title = "shareddb · " + me.id;
  const body = document.createElement("tbody");
  const self = body.insertRow();
  self.dataset.id = me.id;
  self.dataset.state = me.state;
  const name = cell(self, me.id, "mono");
  const you = document.createElement("span");
  you.className = "you";
  you.textContent = "this node";
  name.append(you);
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
    const left = member.state === "left";
    const lag = cell(row, left ? "—" : member.lag.toLocaleString(), "num");
    if (!left && member.lag > 0) lag.classList.add("lagging");
    cell(row, ago(member.last_contact));
    cell(row, member.url, "mono");
    if (member.state === "up") up += 1;
  }
  $("members").tBodies[0].replaceWith(body);
  $("members-summary").textContent = up + " of " + (cluster.members.length + 1) + " up";
}

function renderCount(count) {
  $("key-count").textContent = count.toLocaleString() + (count === 1 ? " live key" : " live keys") + " on this node";
}

function showNotice(text) {
  const notice = $("notice");
  notice.hidden = !text;
  notice.textContent = text || "";
}

/** Poll the cluster and the key count for ever; `tick` runs after each poll (expiries move on). */
export async function pollMembers(tick) {
  for (;;) {
    try {
      const [cluster, digest] = await Promise.all([api("GET", "/v1/cluster"), api("GET", "/v1/digest")]);
      if (!cluster.ok) throw new Error(await errorMessage(cluster));
      render(await cluster.json());
      if (digest.ok) renderCount((await digest.json()).count);
      showNotice(null);
    } catch (error) {
      if (error instanceof NeedsToken) {
        await tokenGiven();
        continue;
      }
      showNotice("Cannot reach the node (" + error.message + "); trying again…");
    }
    tick();
    await sleep(POLL_MS);
  }
}

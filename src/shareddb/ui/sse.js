// Server-Sent Events from a fetch() body: EventSource cannot send an Authorization header
// (docs/design.md, "Dashboard"). Parses the event stream format of the HTML standard.

/** Each event of `body` (a ReadableStream of bytes) as {id, type, data}; comments are skipped. */
export async function* events(body) {
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

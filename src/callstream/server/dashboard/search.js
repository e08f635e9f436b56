// Search over ended calls (docs/protocol.md, Listing and searching calls): the box above the
// calls list asks GET /v1/calls?status=ended&q=… and lists the hits with their snippets; a hit
// opens the call's transcript. Plain ES module, no dependencies; app.js hands in its `api` (GET
// with the session's token) and `select` (open a call).

const PAGE = 20;

/** Wire the search form. `api(path)` resolves to the JSON answer; `open(callId)` shows a call. */
export function setupSearch({ api, open }) {
  const form = document.getElementById("search");
  const input = document.getElementById("search-q");
  const list = document.getElementById("search-results");
  const status = document.getElementById("search-status");
  const more = document.getElementById("search-more");
  if (!form || !input || !list || !status || !more) return;
  let asked = 0; // answers to older questions are dropped
  let cursor = null;
  let q = "";

  async function ask(append) {
    const n = ++asked;
    const params = new URLSearchParams({ status: "ended", q, limit: String(PAGE) });
    if (append && cursor) params.set("cursor", cursor);
    status.textContent = "Searching…";
    try {
      const body = await api(`/v1/calls?${params}`);
      if (n !== asked) return;
      if (!append) list.replaceChildren();
      for (const call of body.calls || []) list.append(hitItem(call, open));
      cursor = body.next_cursor || null;
      more.hidden = !cursor;
      const shown = list.children.length;
      status.textContent = shown ? `${shown}${cursor ? "+" : ""} ended call${shown === 1 ? "" : "s"}` : "No ended call matches.";
    } catch (err) {
      if (n !== asked) return;
      status.textContent = err.status === 422 ? "Type a word to search for (letters or digits)." : "Search failed; try again.";
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    q = input.value.trim();
    cursor = null;
    more.hidden = true;
    if (!q) {
      asked += 1;
      list.replaceChildren();
      status.textContent = "";
      return;
    }
    ask(false);
  });
  more.addEventListener("click", () => ask(true));
}

/** One hit: call id, when it started, who said the matching line, the snippet with its marks. */
function hitItem(call, open) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "hit";
  button.dataset.callId = call.call_id;
  const head = document.createElement("span");
  head.className = "hit-head";
  const id = document.createElement("strong");
  id.textContent = call.call_id;
  const when = document.createElement("time");
  when.dateTime = new Date(call.started_at).toISOString();
  when.textContent = new Date(call.started_at).toLocaleString();
  head.append(id, " ", when);
  const line = document.createElement("span");
  line.className = "snippet";
  const match = call.match || {};
  if (match.speaker) {
    const who = document.createElement("span");
    who.className = "hit-who";
    who.textContent = `${match.speaker}: `;
    line.append(who);
  }
  line.append(...marked(call.snippet || "", match.marks || []));
  button.append(head, line);
  button.addEventListener("click", () => open(call.call_id));
  li.append(button);
  return li;
}

/** The snippet as text nodes and <mark> elements (never parsed as HTML). */
function marked(text, marks) {
  const out = [];
  let at = 0;
  const chars = Array.from(text); // marks count code points, as the server does
  for (const [start, end] of marks) {
    if (start < at || end > chars.length || start >= end) continue;
    out.push(document.createTextNode(chars.slice(at, start).join("")));
    const m = document.createElement("mark");
    m.textContent = chars.slice(start, end).join("");
    out.push(m);
    at = end;
  }
  out.push(document.createTextNode(chars.slice(at).join("")));
  return out;
}

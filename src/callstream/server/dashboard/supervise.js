// Live control from the listen-in panel (docs/protocol.md, Live control): the supervisor's
// actions, the dialog that asks for their arguments, and how each request and its result
// reads in the transcript. Only a session whose token carries the `control` scope sees them.

const ERRORS = {
  forbidden: "This session may not act on calls.",
  call_not_live: "The call has ended.",
  no_producer: "No agent is connected to this call right now.",
  unsupported_action: "This call's agent cannot do that.",
  rate_limited: "Too many actions at once; try again in a moment.",
  closed: "Not connected; try again once the dashboard is live.",
  timeout: "The server did not answer; try again.",
};

const human = (s) => String(s || "").replace(/_/g, " ");

const DIALOGS = {
  say: { title: "Say…", hint: "The agent speaks these words to the caller, as written.", fields: ["text", "interrupt"], submit: "Say it" },
  instruct: { title: "Instruct…", hint: "The agent follows this for the rest of the call; it says nothing by itself.", fields: ["text"], submit: "Instruct" },
  transfer: { title: "Transfer…", hint: "The agent hands the call over; the call ends as transferred.", fields: ["to", "reason"], submit: "Transfer" },
  end: { title: "End this call?", hint: "The agent hangs up now. This cannot be undone.", fields: ["reason"], submit: "End call", danger: true },
};

/** The scopes a JWT carries (its `scope` claim, space-separated), read without verifying it. */
export function tokenScopes(token) {
  try {
    const part = String(token).split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return new Set(typeof claims.scope === "string" ? claims.scope.split(" ") : []);
  } catch {
    return new Set();
  }
}

/** What a supervisor line says about a request (a `control.requested` event). */
export function requestText(it) {
  const a = it.args || {};
  const why = a.reason ? ` — ${a.reason}` : "";
  switch (it.action) {
    case "say": return `Supervisor said “${a.text}”${a.interrupt ? ", interrupting the agent" : ""}`;
    case "instruct": return `Supervisor instructed the agent: “${a.text}”`;
    case "pause": return "Supervisor took over the call";
    case "resume": return "Supervisor gave the call back to the agent";
    case "transfer": return `Supervisor transferred the call to ${a.to}${why}`;
    case "end": return `Call ended by supervisor${why}`;
    default: return `Supervisor asked: ${it.action}`;
  }
}

/** How the request went: waiting for the agent, done, or why it failed. */
export function resultText(it) {
  if (!it.result) return "waiting for the agent…";
  if (it.result.ok) return "done";
  return `failed: ${it.result.error === "timeout" ? "the agent did not answer" : human(it.result.error || "unknown error")}`;
}

/** Whether a human holds the call: the last pause or resume that succeeded says so. */
export function takenOver(c) {
  let paused = false;
  for (const it of c.items) {
    if (it.kind === "control" && it.result?.ok && (it.action === "pause" || it.action === "resume")) paused = it.action === "pause";
  }
  return paused;
}

/** Why a request was refused, in words (the server's `error` code and message). */
export function refusalText(err) {
  return ERRORS[err?.code] || String(err?.message || err).replace(/^[a-z_]+: /, "");
}

/**
 * Wire the toolbar and the dialog. `send(action, args)` makes the request for the call on
 * screen and resolves with its ack (or rejects with the server's error).
 */
export function setupControls({ toolbar, dialog, status, send }) {
  const form = dialog.querySelector("form");
  const error = dialog.querySelector("#control-error");
  let action = null;

  function show(text, kind = "info") {
    status.textContent = text;
    status.dataset.kind = kind;
  }

  async function request(act, args) {
    show(`Sending ${act}…`);
    try {
      await send(act, args);
      show("");
      return null;
    } catch (err) {
      const text = refusalText(err);
      show(text, "error");
      return text;
    }
  }

  function open(act) {
    const spec = DIALOGS[act];
    action = act;
    form.reset();
    error.textContent = "";
    dialog.querySelector("#control-title").textContent = spec.title;
    dialog.querySelector("#control-hint").textContent = spec.hint;
    for (const field of form.querySelectorAll("[data-field]")) field.hidden = !spec.fields.includes(field.dataset.field);
    const submit = dialog.querySelector("#control-submit");
    submit.textContent = spec.submit;
    submit.classList.toggle("danger", !!spec.danger);
    submit.classList.toggle("primary", !spec.danger);
    dialog.showModal();
    const first = form.querySelector("[data-field]:not([hidden]) textarea, [data-field]:not([hidden]) input");
    (spec.danger ? dialog.querySelector("#control-cancel") : first)?.focus();
  }

  function argsOf(act) {
    const v = (name) => form.elements[name].value.trim();
    if (act === "say") return { text: v("text"), interrupt: form.elements.interrupt.checked };
    if (act === "instruct") return { text: v("text") };
    const args = act === "transfer" ? { to: v("to") } : {};
    if (v("reason")) args.reason = v("reason");
    return args;
  }

  toolbar.addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (!btn || btn.disabled) return;
    const act = btn.dataset.action;
    if (DIALOGS[act]) open(act);
    else request(act, {});
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const args = argsOf(action);
    if ("text" in args && !args.text) {
      error.textContent = "Write what to say.";
      return;
    }
    if (action === "transfer" && !args.to) {
      error.textContent = "Give a number (+14155550100) or a sip: address.";
      return;
    }
    const refused = await request(action, args);
    if (refused) error.textContent = refused;
    else dialog.close();
  });
  dialog.querySelector("#control-cancel").addEventListener("click", () => dialog.close());
}

/** Bring the toolbar up to date with the call on screen. */
export function renderControls(toolbar, c, allowed) {
  toolbar.hidden = !allowed;
  if (!allowed) return;
  const live = c.status !== "ended";
  for (const btn of toolbar.querySelectorAll("button[data-action]")) btn.disabled = !live;
  const paused = takenOver(c);
  const takeover = toolbar.querySelector("#takeover");
  takeover.dataset.action = paused ? "resume" : "pause";
  takeover.textContent = paused ? "Give back" : "Take over";
  takeover.setAttribute("aria-pressed", String(paused));
}

// The chat page: a client of this server's HTTP API, nothing more.
//
// Threads, history, turns, retry, feedback, rename and delete go through the
// ChatKit protocol endpoint (POST /api/v1/chatkit/sessions/{id}/chatkit), the
// path a ChatKit UI takes; auth, sessions, finding and cancelling a run and
// following a run after a reload go through REST. Text from users and models
// is only ever put into the page as text (textContent, text nodes), never as
// HTML. No build step: this file is served as it is.

const API = "/api/v1";
// The refresh token survives a reload (and is shared by the tabs of this
// origin); the access token lives in memory only. README, "The chat page".
const REFRESH_KEY = "chat.refresh";
const ACTIVE_RUN = new Set(["queued", "in_progress"]);
const RUN_ENDINGS = new Set(["run.completed", "run.failed", "run.cancelled", "run.expired"]);
// A follower that loses its connection tries again this many times.
const FOLLOW_RECONNECTS = 5;

// ---------------------------------------------------------------- errors

class ApiError extends Error {
  constructor(status, code, message, details, retryAfter) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

class NetworkError extends Error {}

const FIELD_NAMES = {
  username: "Username",
  password: "Password",
  input: "Message",
  title: "Name",
  instructions: "Instructions",
};

function seconds(count) {
  return count === 1 ? "1 second" : `${count} seconds`;
}

function validationSentence(error) {
  const parts = [];
  for (const [field, messages] of Object.entries(error.details || {})) {
    const list = Array.isArray(messages) ? messages : [String(messages)];
    const label = FIELD_NAMES[field];
    parts.push(label ? `${label}: ${list.join(" ")}` : list.join(" "));
  }
  return parts.length ? parts.join(" ") : error.message;
}

// Every failure the page can meet, as a sentence for a person.
function errorSentence(error) {
  if (error instanceof NetworkError) {
    return "The server could not be reached. Check your connection and try again.";
  }
  if (!(error instanceof ApiError)) {
    return "Something went wrong in this page. Reload it and try again.";
  }
  const wait = error.retryAfter;
  switch (error.status) {
    case 400:
      return validationSentence(error) || "The server did not accept that.";
    case 401:
      return "You have been signed out. Please sign in again.";
    case 403:
      return error.message || "That is not allowed.";
    case 404:
      return "That is gone: it may have been deleted, perhaps in another tab.";
    case 409:
      if (error.code === "RUN_IN_PROGRESS") {
        return "A reply is still being written in this thread. Wait for it to finish, or stop it, then try again.";
      }
      if (error.code === "SESSION_LIMIT_REACHED") {
        return "You have as many sessions as you may keep. Delete one to start another.";
      }
      return error.message || "That clashes with something still going on. Try again in a moment.";
    case 413:
      return "That message is too large to send. Shorten it and try again.";
    case 429:
      return wait != null
        ? `Too many requests. Please wait ${seconds(wait)} and try again.`
        : "Too many requests. Please wait a moment and try again.";
    case 503:
      return wait != null
        ? `The service is unavailable right now. Please try again in ${seconds(wait)}.`
        : "The service is unavailable right now. Please try again shortly.";
    default:
      return error.status >= 500
        ? "Something went wrong on the server. Please try again."
        : error.message || "The server did not accept that.";
  }
}

function retryAfterOf(response) {
  const value = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return Number.isFinite(value) && value >= 0 ? value : null;
}

async function errorFrom(response) {
  let error = {};
  try {
    const body = await response.json();
    error = (body && body.error) || {};
  } catch {
    // Not the API's envelope (a proxy's page, say): the status speaks.
  }
  return new ApiError(
    response.status,
    error.code || "",
    error.message || "",
    error.details || null,
    retryAfterOf(response),
  );
}

async function send(url, init) {
  try {
    return await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new NetworkError(String(error));
  }
}

// ------------------------------------------------------------------ auth

const auth = {
  access: null,
  get refresh() {
    return localStorage.getItem(REFRESH_KEY);
  },
  keep(pair) {
    this.access = pair.access;
    localStorage.setItem(REFRESH_KEY, pair.refresh);
  },
  forget() {
    this.access = null;
    localStorage.removeItem(REFRESH_KEY);
  },
};

// A JSON POST to an endpoint that needs no access token; the envelope's data.
async function postAnonymous(path, body) {
  const response = await send(API + path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await errorFrom(response);
  return (await response.json()).data;
}

async function rotate() {
  const token = auth.refresh;
  if (!token) throw new ApiError(401, "NOT_AUTHENTICATED", "", null, null);
  try {
    auth.keep(await postAnonymous("/auth/token/refresh", { refresh: token }));
  } catch (error) {
    // Revoked or expired. Forget it unless another tab has already put a
    // newer one in its place.
    if (error instanceof ApiError && error.status === 401 && auth.refresh === token) {
      auth.forget();
    }
    throw error;
  }
}

let rotating = null;

// A new access token from the refresh token, one rotation at a time: within
// this tab by sharing the promise, across tabs by a Web Lock, since a
// rotated refresh token stops working and two tabs must not both spend it.
function refreshAccess() {
  if (!rotating) {
    const run = navigator.locks ? () => navigator.locks.request(REFRESH_KEY, rotate) : rotate;
    rotating = run().finally(() => {
      rotating = null;
    });
  }
  return rotating;
}

// An authenticated request; on a 401 the access token is refreshed once and
// the request sent again. Returns the Response; throws ApiError otherwise.
async function api(method, path, { body, headers = {}, signal } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    if (!auth.access) await refreshAccess();
    const init = {
      method,
      headers: { ...headers, Authorization: `Bearer ${auth.access}` },
      signal,
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await send(API + path, init);
    if (response.status === 401 && attempt === 0) {
      auth.access = null;
      continue;
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }
}

// The envelope's data of a REST call (null for 204).
async function rest(method, path, body) {
  const response = await api(method, path, { body });
  return response.status === 204 ? null : (await response.json()).data;
}

// ------------------------------------------------------ server-sent events

// Reads a text/event-stream body, calling onEvent({id, event, data}) for
// each event (data as text). EventSource cannot send an Authorization
// header, hence fetch and this.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let name = "message";
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      let line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (data.length) onEvent({ id, event: name, data: data.join("\n") });
        data = [];
        name = "message";
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") data.push(text);
      else if (field === "event") name = text;
      else if (field === "id") id = text;
    }
  }
}

// ------------------------------------------------- the ChatKit protocol

function chatkitPath(sessionId) {
  return `/chatkit/sessions/${sessionId}/chatkit`;
}

// A plain request: the bare protocol object.
async function chatkit(sessionId, type, params) {
  const response = await api("POST", chatkitPath(sessionId), { body: { type, params } });
  return response.json();
}

// A turn: returns the streaming Response. The run goes on if this page goes
// away (a reload), so the page can follow it again; Stop is the REST cancel.
function chatkitTurn(sessionId, type, params, signal) {
  return api("POST", chatkitPath(sessionId), {
    body: { type, params, metadata: { on_disconnect: "continue" } },
    signal,
  });
}

function userInput(text) {
  return { content: [{ type: "input_text", text }], attachments: [], inference_options: {} };
}

function itemText(item) {
  return (item.content || []).map((part) => part.text || "").join("");
}

// --------------------------------------------------------------- the page

const $ = (id) => document.getElementById(id);

const state = {
  user: null,
  sessions: [],
  sessionId: null,
  threads: [],
  threadId: null,
  // The reply being written in the open thread, if any.
  turn: null,
};

function show(element, visible) {
  element.hidden = !visible;
}

function say(element, text) {
  element.textContent = text || "";
}

function setLocation() {
  const params = new URLSearchParams();
  if (state.sessionId) params.set("session", state.sessionId);
  if (state.threadId) params.set("thread", state.threadId);
  const hash = params.toString();
  history.replaceState(null, "", hash ? `#${hash}` : location.pathname);
}

function locationWants() {
  const params = new URLSearchParams(location.hash.slice(1));
  return { sessionId: params.get("session"), threadId: params.get("thread") };
}

// A failure shown where it happened; a 401 that refreshing could not cure
// sends the person back to the sign-in form instead.
function report(error, element) {
  if (error instanceof DOMException && error.name === "AbortError") return;
  if (error instanceof ApiError && error.status === 401) {
    signedOut("Your sign-in has expired. Please sign in again.");
    return;
  }
  say(element, errorSentence(error));
}

// ------------------------------------------------------------ signing in

function showAuth(message) {
  stopTurn();
  show($("loading"), false);
  show($("app"), false);
  show($("sign-out"), false);
  show($("whoami"), false);
  show($("menu-toggle"), false);
  show($("auth"), true);
  say($("auth-message"), message);
  for (const form of document.querySelectorAll("#auth form")) say(form.querySelector("[data-error]"), "");
  $("sign-in-username").focus();
}

function signedOut(message) {
  stopTurn();
  auth.forget();
  // Nothing of this account stays in the page, shown or hidden.
  Object.assign(state, { user: null, sessions: [], sessionId: null, threads: [], threadId: null });
  $("messages").replaceChildren();
  $("thread-list").replaceChildren();
  $("session-select").replaceChildren();
  $("instructions-input").value = "";
  setLocation();
  showAuth(message);
}

async function signIn(username, password) {
  auth.keep(await postAnonymous("/auth/token", { username, password }));
  await enterApp();
}

// A form's submit button is off while its request runs: one sign-in at a time.
async function whileSubmitting(form, action) {
  const button = form.querySelector("[type=submit]");
  button.disabled = true;
  try {
    return await action();
  } finally {
    button.disabled = false;
  }
}

function bindAuthForms() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const error = form.querySelector("[data-error]");
    say(error, "");
    const username = form.username.value.trim();
    const password = form.password.value;
    if (!username || !password) {
      say(error, "Enter your username and password.");
      return;
    }
    try {
      await whileSubmitting(form, () => signIn(username, password));
      form.reset();
    } catch (failure) {
      say(
        error,
        failure instanceof ApiError && failure.status === 401
          ? "That username and password do not match an account."
          : errorSentence(failure),
      );
    }
  });
  $("sign-up-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const error = form.querySelector("[data-error]");
    say(error, "");
    const username = form.username.value.trim();
    const password = form.password.value;
    if (!username || !password) {
      say(error, "Choose a username and a password.");
      return;
    }
    try {
      await whileSubmitting(form, async () => {
        await postAnonymous("/auth/register", { username, password });
        await signIn(username, password);
      });
      form.reset();
    } catch (failure) {
      say(error, errorSentence(failure));
    }
  });
  $("sign-out").addEventListener("click", async () => {
    const token = auth.refresh;
    stopTurn();
    if (token) {
      try {
        await postAnonymous("/auth/logout", { refresh: token });
      } catch {
        // Already revoked or expired: signed out all the same.
      }
    }
    signedOut("You are signed out.");
  });
}

// The chat is shown once its session and threads are in place, so nothing
// typed into it can race their loading.
async function enterApp() {
  state.user = await rest("GET", "/auth/me");
  const wanted = locationWants();
  await loadSessions();
  let session = state.sessions.find((each) => each.id === wanted.sessionId) || state.sessions[0];
  if (!session) session = await createSession();
  await selectSession(session.id, wanted.sessionId === session.id ? wanted.threadId : null);
  show($("loading"), false);
  show($("auth"), false);
  show($("app"), true);
  show($("sign-out"), true);
  show($("menu-toggle"), true);
  say($("whoami"), `Signed in as ${state.user.username}`);
  show($("whoami"), true);
  $("composer-input").focus();
}

// -------------------------------------------------------------- sessions

function currentSession() {
  return state.sessions.find((each) => each.id === state.sessionId) || null;
}

function renderSessions() {
  const select = $("session-select");
  select.replaceChildren(
    ...state.sessions.map((session) => {
      const option = document.createElement("option");
      option.value = session.id;
      option.textContent = session.title || "New Chat";
      option.selected = session.id === state.sessionId;
      return option;
    }),
  );
}

async function loadSessions() {
  state.sessions = await rest("GET", "/chatkit/sessions?limit=100");
  renderSessions();
}

async function createSession() {
  const session = await rest("POST", "/chatkit/sessions", {});
  state.sessions.unshift(session);
  renderSessions();
  return session;
}

async function selectSession(sessionId, threadId = null) {
  stopTurn();
  state.sessionId = sessionId;
  state.threadId = null;
  renderSessions();
  closeSessionForms();
  const session = currentSession();
  $("instructions-input").value = session ? session.instructions : "";
  say($("instructions-status"), "");
  say($("sidebar-error"), "");
  newThread();
  try {
    await loadThreads();
    if (threadId && state.threads.some((each) => each.id === threadId)) await openThread(threadId);
  } catch (error) {
    // The session is still usable: say what failed where the threads go.
    report(error, $("sidebar-error"));
  }
}

// The first reply in a session names it: pick the name up after a turn.
async function refreshSessionTitle() {
  const session = currentSession();
  if (!session || session.title !== "New Chat") return;
  try {
    const fresh = await rest("GET", `/chatkit/sessions/${session.id}`);
    Object.assign(session, fresh);
    renderSessions();
  } catch {
    // Only a label: the next list shows it.
  }
}

function closeSessionForms() {
  show($("session-rename-form"), false);
  show($("session-delete-confirm"), false);
}

function bindSessions() {
  $("session-select").addEventListener("change", (event) => {
    selectSession(event.target.value).catch((error) => report(error, $("sidebar-error")));
  });
  $("session-new").addEventListener("click", async () => {
    say($("sidebar-error"), "");
    try {
      const session = await createSession();
      await selectSession(session.id);
      $("composer-input").focus();
    } catch (error) {
      report(error, $("sidebar-error"));
    }
  });
  $("session-rename").addEventListener("click", () => {
    closeSessionForms();
    const session = currentSession();
    $("session-rename-input").value = session ? session.title : "";
    show($("session-rename-form"), true);
    $("session-rename-input").select();
  });
  $("session-rename-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = $("session-rename-input").value.trim();
    if (!title) return;
    try {
      const updated = await rest("PATCH", `/chatkit/sessions/${state.sessionId}`, { title });
      Object.assign(currentSession(), updated);
      renderSessions();
      closeSessionForms();
      $("session-select").focus();
    } catch (error) {
      report(error, $("sidebar-error"));
    }
  });
  $("session-delete").addEventListener("click", () => {
    closeSessionForms();
    show($("session-delete-confirm"), true);
    $("session-delete-confirm").querySelector("[data-cancel]").focus();
  });
  $("session-delete-confirm")
    .querySelector("[data-confirm]")
    .addEventListener("click", async () => {
      try {
        stopTurn();
        await rest("DELETE", `/chatkit/sessions/${state.sessionId}`);
        state.sessions = state.sessions.filter((each) => each.id !== state.sessionId);
        const next = state.sessions[0] || (await createSession());
        await selectSession(next.id);
        $("session-select").focus();
      } catch (error) {
        report(error, $("sidebar-error"));
      }
    });
  for (const button of document.querySelectorAll("#sidebar [data-cancel]")) {
    button.addEventListener("click", () => {
      closeSessionForms();
      $("session-select").focus();
    });
  }
  $("instructions-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    say($("instructions-status"), "");
    try {
      const instructions = $("instructions-input").value;
      const updated = await rest("PATCH", `/chatkit/sessions/${state.sessionId}`, { instructions });
      Object.assign(currentSession(), updated);
      say($("instructions-status"), "Instructions saved.");
    } catch (error) {
      report(error, $("instructions-status"));
    }
  });
}

// --------------------------------------------------------------- threads

function threadTitle(thread) {
  return (thread && thread.title) || "New thread";
}

function renderThreads() {
  const list = $("thread-list");
  list.replaceChildren(...state.threads.map(threadRow));
  show($("threads-empty"), state.threads.length === 0);
}

function threadRow(thread) {
  const row = document.createElement("li");
  row.className = "thread-row";
  row.dataset.threadId = thread.id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "thread-open";
  open.textContent = threadTitle(thread);
  if (thread.id === state.threadId) open.setAttribute("aria-current", "true");
  open.addEventListener("click", () => {
    openThread(thread.id).catch((error) => report(error, $("sidebar-error")));
    closeMenuOnPhone();
  });
  const rename = iconButton("edit", `Rename thread: ${threadTitle(thread)}`);
  rename.addEventListener("click", () => renameThreadForm(row, thread));
  const remove = iconButton("trash", `Delete thread: ${threadTitle(thread)}`);
  remove.addEventListener("click", () => deleteThreadConfirm(row, thread));
  row.append(open, rename, remove);
  return row;
}

function iconButton(icon, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "icon-button";
  button.setAttribute("aria-label", label);
  button.title = label;
  const glyph = document.createElement("span");
  glyph.className = `icon icon-${icon}`;
  glyph.setAttribute("aria-hidden", "true");
  button.append(glyph);
  return button;
}

function renameThreadForm(row, thread) {
  const form = document.createElement("form");
  form.className = "inline-form";
  const label = document.createElement("label");
  label.textContent = "New name for the thread";
  const input = document.createElement("input");
  input.maxLength = 200;
  input.required = true;
  input.value = thread.title || "";
  label.append(input);
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save name";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  const buttons = document.createElement("div");
  buttons.className = "row";
  buttons.append(save, cancel);
  form.append(label, buttons);
  row.replaceChildren(form);
  input.select();
  cancel.addEventListener("click", () => {
    renderThreads();
    focusThreadRow(thread.id);
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = input.value.trim();
    if (!title) return;
    try {
      const updated = await chatkit(state.sessionId, "threads.update", {
        thread_id: thread.id,
        title,
      });
      thread.title = updated.title;
      if (thread.id === state.threadId) say($("thread-title"), threadTitle(thread));
      renderThreads();
      focusThreadRow(thread.id);
    } catch (error) {
      report(error, $("sidebar-error"));
    }
  });
}

function deleteThreadConfirm(row, thread) {
  const box = document.createElement("div");
  box.className = "inline-form";
  box.setAttribute("role", "group");
  const question = document.createElement("p");
  question.id = `delete-question-${thread.id}`;
  box.setAttribute("aria-labelledby", question.id);
  question.textContent = `Delete “${threadTitle(thread)}” and its messages?`;
  const yes = document.createElement("button");
  yes.type = "button";
  yes.className = "danger";
  yes.textContent = "Delete thread";
  const no = document.createElement("button");
  no.type = "button";
  no.textContent = "Keep it";
  const buttons = document.createElement("div");
  buttons.className = "row";
  buttons.append(yes, no);
  box.append(question, buttons);
  row.replaceChildren(box);
  no.focus();
  no.addEventListener("click", () => {
    renderThreads();
    focusThreadRow(thread.id);
  });
  yes.addEventListener("click", async () => {
    try {
      if (thread.id === state.threadId) stopTurn();
      await chatkit(state.sessionId, "threads.delete", { thread_id: thread.id });
      state.threads = state.threads.filter((each) => each.id !== thread.id);
      if (thread.id === state.threadId) newThread();
      renderThreads();
      $("thread-new").focus();
    } catch (error) {
      report(error, $("sidebar-error"));
    }
  });
}

function focusThreadRow(threadId) {
  const row = $("thread-list").querySelector(`[data-thread-id="${CSS.escape(threadId)}"] .thread-open`);
  if (row) row.focus();
}

async function loadThreads() {
  const page = await chatkit(state.sessionId, "threads.list", { limit: 100, order: "desc" });
  state.threads = page.data;
  renderThreads();
}

function upsertThread(thread) {
  const known = state.threads.find((each) => each.id === thread.id);
  if (known) Object.assign(known, { title: thread.title });
  else state.threads.unshift({ id: thread.id, title: thread.title, created_at: thread.created_at });
  renderThreads();
  if (thread.id === state.threadId) say($("thread-title"), threadTitle(thread));
}

function newThread() {
  stopTurn();
  state.threadId = null;
  setLocation();
  say($("thread-title"), "New thread");
  $("messages").replaceChildren();
  say($("composer-error"), "");
  say($("reply-status"), "");
  renderThreads();
  setBusy(false);
}

async function openThread(threadId) {
  stopTurn();
  state.threadId = threadId;
  setLocation();
  renderThreads();
  say($("composer-error"), "");
  say($("reply-status"), "");
  const messages = $("messages");
  messages.setAttribute("aria-busy", "true");
  messages.replaceChildren();
  try {
    const thread = await chatkit(state.sessionId, "threads.get_by_id", { thread_id: threadId });
    if (state.threadId !== threadId) return;
    say($("thread-title"), threadTitle(thread));
    const items = [...thread.items.data];
    let page = thread.items;
    while (page.has_more && page.after) {
      page = await chatkit(state.sessionId, "items.list", {
        thread_id: threadId,
        order: "asc",
        limit: 100,
        after: page.after,
      });
      items.push(...page.data);
    }
    if (state.threadId !== threadId) return;
    messages.replaceChildren(...items.filter(isMessage).map(messageElement));
    markLastReply();
    messages.scrollTop = messages.scrollHeight;
  } finally {
    messages.removeAttribute("aria-busy");
  }
  const run = await newestRun(threadId);
  const active = run && ACTIVE_RUN.has(run.status) ? run : null;
  showStoredState(threadId, active);
  // Not awaited: following a reply lasts as long as the reply.
  if (active) followActiveRun(threadId, active).catch((error) => report(error, $("composer-error")));
}

// ------------------------------------------------------------- messages

function isMessage(item) {
  return item.type === "user_message" || item.type === "assistant_message";
}

function messageElement(item) {
  const user = item.type === "user_message";
  const article = document.createElement("article");
  article.className = `message ${user ? "from-user" : "from-assistant"}`;
  if (item.id) article.dataset.itemId = item.id;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = user ? "You" : "Assistant";
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = itemText(item);
  const note = document.createElement("p");
  note.className = "note";
  article.append(who, text, note);
  if (!user) article.append(replyActions(article));
  return article;
}

function replyActions(article) {
  const actions = document.createElement("div");
  actions.className = "actions";
  const good = iconButton("thumb-up", "Good reply");
  good.dataset.kind = "positive";
  const bad = iconButton("thumb-down", "Bad reply");
  bad.dataset.kind = "negative";
  for (const button of [good, bad]) {
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => giveFeedback(article, button.dataset.kind));
  }
  const retry = document.createElement("button");
  retry.type = "button";
  retry.className = "retry";
  retry.textContent = "Retry";
  retry.hidden = true;
  retry.addEventListener("click", () => retryReply(article));
  actions.append(good, bad, retry);
  return actions;
}

// Retry is offered on the newest reply only, as ChatKit's own UI does.
function markLastReply() {
  const replies = $("messages").querySelectorAll(".from-assistant");
  replies.forEach((reply, index) => {
    const retry = reply.querySelector(".retry");
    retry.hidden = index !== replies.length - 1 || Boolean(state.turn);
  });
}

function setFeedback(article, kind) {
  for (const button of article.querySelectorAll("[data-kind]")) {
    button.setAttribute("aria-pressed", String(button.dataset.kind === kind));
  }
}

async function giveFeedback(article, kind) {
  const note = article.querySelector(".note");
  if (!article.dataset.itemId) return;
  try {
    await chatkit(state.sessionId, "items.feedback", {
      thread_id: state.threadId,
      item_ids: [article.dataset.itemId],
      kind,
    });
    setFeedback(article, kind);
  } catch (error) {
    report(error, note);
  }
}

// ChatKit items say neither what feedback a reply got nor whether it was
// cut short: the REST messages do (the newest hundred).
async function showStoredState(threadId, activeRun) {
  const writing = activeRun && activeRun.output_message ? activeRun.output_message.id : null;
  try {
    const path = `/chatkit/sessions/${state.sessionId}/threads/${threadId}/messages?order=desc&limit=100`;
    for (const message of await rest("GET", path)) {
      if (state.threadId !== threadId) return;
      const article = $("messages").querySelector(`[data-item-id="${CSS.escape(message.id)}"]`);
      if (!article || message.role !== "assistant") continue;
      if (message.feedback) setFeedback(article, message.feedback);
      const note = article.querySelector(".note");
      if (message.status === "incomplete" && message.id !== writing && !note.textContent) {
        say(note, "This reply was cut short.");
      }
    }
  } catch {
    // Only the thumbs and notes: the conversation is shown all the same.
  }
}

function appendText(article, delta) {
  if (delta) article.querySelector(".text").append(document.createTextNode(delta));
}

// Puts the reply's full text in place. While catching up on a run (after a
// reload), text shorter than what is already shown is not shown; text that
// extends it is appended, so screen readers hear only what is new.
function catchUpText(article, full) {
  const element = article.querySelector(".text");
  const shown = element.textContent;
  if (full.length <= shown.length) return;
  if (full.startsWith(shown)) element.append(document.createTextNode(full.slice(shown.length)));
  else element.textContent = full;
}

function setText(article, full) {
  const element = article.querySelector(".text");
  if (element.textContent !== full) element.textContent = full;
}

function scrollToEnd() {
  const messages = $("messages");
  messages.scrollTop = messages.scrollHeight;
}

// ---------------------------------------------------------------- turns

function setBusy(busy) {
  show($("stop"), busy);
  $("send").disabled = busy;
  markLastReply();
}

// Drops this page's connection to a reply (the reply itself goes on).
function stopTurn() {
  if (state.turn) {
    state.turn.controller.abort();
    state.turn = null;
  }
  setBusy(false);
}

function beginTurn() {
  stopTurn();
  const turn = { controller: new AbortController(), reply: null, ended: false, stopping: false };
  state.turn = turn;
  setBusy(true);
  say($("reply-status"), "The assistant is writing a reply.");
  return turn;
}

function endTurn(turn, status) {
  turn.ended = true;
  if (state.turn === turn) {
    state.turn = null;
    setBusy(false);
    say($("reply-status"), status);
  }
  if (turn.reply) turn.reply.classList.remove("streaming");
}

function replyElement(turn, id) {
  if (turn.reply && (!id || turn.reply.dataset.itemId === id || !turn.reply.dataset.itemId)) {
    if (id) turn.reply.dataset.itemId = id;
    return turn.reply;
  }
  let article = id && $("messages").querySelector(`[data-item-id="${CSS.escape(id)}"]`);
  if (!article) {
    article = messageElement({ type: "assistant_message", id, content: [] });
    $("messages").append(article);
  }
  article.classList.add("streaming");
  turn.reply = article;
  return article;
}

// The newest run of the open thread (REST; the protocol does not name runs).
async function newestRun(threadId) {
  const runs = await rest(
    "GET",
    `/chatkit/sessions/${state.sessionId}/threads/${threadId}/runs?limit=1`,
  );
  return runs[0] || null;
}

async function failureReason(threadId) {
  try {
    const run = await newestRun(threadId);
    if (run && run.error && run.error.message) return run.error.message;
  } catch {
    // The generic sentence below will do.
  }
  return "";
}

function showFailure(article, reason) {
  const note = article.querySelector(".note");
  note.classList.add("failed");
  say(note, reason ? `The reply failed: ${reason}` : "The reply failed. Try again.");
}

async function sendMessage(text) {
  const threadId = state.threadId;
  say($("composer-error"), "");
  const turn = beginTurn();
  const pending = messageElement({ type: "user_message", content: [{ text }] });
  pending.classList.add("pending");
  $("messages").append(pending);
  scrollToEnd();
  let response;
  try {
    response = threadId
      ? await chatkitTurn(
          state.sessionId,
          "threads.add_user_message",
          { thread_id: threadId, input: userInput(text) },
          turn.controller.signal,
        )
      : await chatkitTurn(
          state.sessionId,
          "threads.create",
          { input: userInput(text) },
          turn.controller.signal,
        );
  } catch (error) {
    pending.remove();
    endTurn(turn, "");
    // Left for another thread meanwhile: nothing to say here.
    if (error.name === "AbortError") return;
    // Nothing was stored: the words go back into the box.
    if (!$("composer-input").value) $("composer-input").value = text;
    report(error, $("composer-error"));
    if (threadId && error instanceof ApiError && error.code === "RUN_IN_PROGRESS") {
      // Another tab's reply: show it being written here too.
      resumeActiveRun(threadId).catch((failure) => report(failure, $("composer-error")));
    }
    return;
  }
  await carryTurn(turn, response, threadId, pending);
}

async function retryReply(article) {
  let user = article.previousElementSibling;
  while (user && !user.classList.contains("from-user")) user = user.previousElementSibling;
  if (!user || !user.dataset.itemId) return;
  const threadId = state.threadId;
  say($("composer-error"), "");
  const turn = beginTurn();
  // What followed the user's message is superseded by the new reply.
  const removed = [];
  while (user.nextElementSibling) {
    removed.push(user.nextElementSibling);
    user.nextElementSibling.remove();
  }
  let response;
  try {
    response = await chatkitTurn(
      state.sessionId,
      "threads.retry_after_item",
      { thread_id: threadId, item_id: user.dataset.itemId },
      turn.controller.signal,
    );
  } catch (error) {
    $("messages").append(...removed);
    endTurn(turn, "");
    report(error, $("composer-error"));
    return;
  }
  await carryTurn(turn, response, threadId, null);
}

// Reads a turn's ChatKit events into the page.
async function carryTurn(turn, response, threadId, pending) {
  let threadOfTurn = threadId;
  let failed = false;
  const onEvent = (message) => {
    if (turn.ended) return;
    const event = JSON.parse(message.data);
    switch (event.type) {
      case "thread.created":
        threadOfTurn = event.thread.id;
        if (state.turn === turn) {
          state.threadId = threadOfTurn;
          setLocation();
          say($("thread-title"), threadTitle(event.thread));
        }
        upsertThread(event.thread);
        break;
      case "thread.updated":
        upsertThread(event.thread);
        break;
      case "thread.item.done":
        if (event.item.type === "user_message") {
          if (pending) {
            pending.dataset.itemId = event.item.id;
            pending.classList.remove("pending");
          }
        } else if (event.item.type === "assistant_message") {
          // The stored reply, whole: what the deltas added up to.
          setText(replyElement(turn, event.item.id), itemText(event.item));
          turn.replyDone = true;
        }
        break;
      case "thread.item.added":
        if (event.item.type === "assistant_message") {
          appendText(replyElement(turn, event.item.id), itemText(event.item));
          scrollToEnd();
        }
        break;
      case "thread.item.updated": {
        const update = event.update || {};
        if (update.type === "assistant_message.content_part.text_delta") {
          appendText(replyElement(turn, event.item_id), update.delta);
          scrollToEnd();
        } else if (update.type === "assistant_message.content_part.added") {
          appendText(replyElement(turn, event.item_id), (update.content && update.content.text) || "");
        }
        break;
      }
      case "error":
        failed = true;
        break;
      case "notice":
        if (event.message) say($("reply-status"), event.message);
        break;
      default:
        break;
    }
  };
  try {
    await readEvents(response, onEvent);
  } catch (error) {
    if (error.name === "AbortError") return;
    // The connection dropped mid-reply; the run goes on (on_disconnect), so
    // follow it over REST below.
  }
  if (turn.ended || state.turn !== turn) return;
  if (failed) {
    const article = replyElement(turn, turn.reply && turn.reply.dataset.itemId);
    showFailure(article, await failureReason(threadOfTurn));
    endTurn(turn, "The reply failed.");
  } else if (turn.replyDone) {
    if (turn.stopping) say(turn.reply.querySelector(".note"), "Stopped.");
    endTurn(turn, turn.stopping ? "Reply stopped." : "Reply finished.");
  } else {
    endTurn(turn, "");
    await resumeActiveRun(threadOfTurn).catch((error) => report(error, $("composer-error")));
  }
  markLastReply();
  refreshSessionTitle();
}

// After a reload (or a dropped connection), the thread's reply still being
// written is found over REST and followed from its stored events.
async function resumeActiveRun(threadId) {
  const run = await newestRun(threadId);
  if (run && ACTIVE_RUN.has(run.status)) await followActiveRun(threadId, run);
}

async function followActiveRun(threadId, run) {
  if (state.threadId !== threadId) return;
  const turn = beginTurn();
  turn.runId = run.id;
  await followRun(turn, threadId, run.id);
}

async function followRun(turn, threadId, runId) {
  const path = `/chatkit/sessions/${state.sessionId}/threads/${threadId}/runs/${runId}/events`;
  let lastEventId = null;
  let text = "";
  let ending = null;
  const onEvent = (message) => {
    if (message.id) lastEventId = message.id;
    if (turn.ended) return;
    if (message.event === "done") return;
    const data = JSON.parse(message.data);
    if (message.event === "message.created" && data.role === "user") {
      // Sent from another tab after this one loaded the thread.
      const known = $("messages").querySelector(`[data-item-id="${CSS.escape(data.id)}"]`);
      if (!known) {
        $("messages").append(
          messageElement({ type: "user_message", id: data.id, content: [{ text: data.content }] }),
        );
      }
    } else if (message.event === "message.delta") {
      text += data.delta;
      catchUpText(replyElement(turn, data.message_id), text);
      scrollToEnd();
    } else if (message.event === "message.completed" && data.role === "assistant") {
      setText(replyElement(turn, data.id), data.content);
    } else if (RUN_ENDINGS.has(message.event)) {
      ending = { event: message.event, run: data };
    }
  };
  for (let attempt = 0; attempt <= FOLLOW_RECONNECTS && !ending; attempt += 1) {
    try {
      const headers = lastEventId ? { "Last-Event-ID": lastEventId } : {};
      const response = await api("GET", path, { headers, signal: turn.controller.signal });
      await readEvents(response, onEvent);
    } catch (error) {
      if (error.name === "AbortError") return;
      if (!(error instanceof NetworkError) && !(error instanceof TypeError)) {
        endTurn(turn, "");
        report(error, $("composer-error"));
        return;
      }
    }
    if (!ending) await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
  }
  if (turn.ended || state.turn !== turn) return;
  if (!ending) {
    endTurn(turn, "");
    say($("composer-error"), "The connection to this reply was lost. Reload the page to see it.");
    return;
  }
  const article = turn.reply;
  if (ending.event === "run.cancelled") {
    if (article) say(article.querySelector(".note"), "Stopped.");
    endTurn(turn, "Reply stopped.");
  } else if (ending.event === "run.completed") {
    endTurn(turn, "Reply finished.");
  } else {
    const reason = (ending.run.error && ending.run.error.message) || "";
    showFailure(article || replyElement(turn, null), reason);
    endTurn(turn, "The reply failed.");
  }
  markLastReply();
  refreshSessionTitle();
}

// Stop: the REST cancel of the thread's active run. The reply keeps the text
// written so far; the stream (ChatKit's or the follower's) then ends.
async function stopReply() {
  const turn = state.turn;
  if (!turn || !state.threadId) return;
  turn.stopping = true;
  $("stop").disabled = true;
  try {
    const run = turn.runId ? { id: turn.runId } : await newestRun(state.threadId);
    if (run) {
      await rest(
        "POST",
        `/chatkit/sessions/${state.sessionId}/threads/${state.threadId}/runs/${run.id}/cancel`,
      );
    }
  } catch (error) {
    // RUN_NOT_ACTIVE: it had finished meanwhile; nothing to say.
    if (!(error instanceof ApiError && error.code === "RUN_NOT_ACTIVE")) {
      report(error, $("composer-error"));
    }
  } finally {
    $("stop").disabled = false;
  }
}

function bindComposer() {
  const input = $("composer-input");
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) {
      say($("composer-error"), "Write a message first.");
      return;
    }
    if (state.turn) {
      say($("composer-error"), "A reply is still being written. Wait for it, or stop it.");
      return;
    }
    input.value = "";
    sendMessage(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    } else if (event.key === "Escape" && state.turn) {
      event.preventDefault();
      stopReply();
    }
  });
  $("stop").addEventListener("click", () => stopReply());
  $("thread-new").addEventListener("click", () => {
    newThread();
    closeMenuOnPhone();
    input.focus();
  });
}

// ------------------------------------------------------------ phone width

function closeMenuOnPhone() {
  if ($("menu-toggle").getAttribute("aria-expanded") === "true") {
    $("menu-toggle").setAttribute("aria-expanded", "false");
    document.body.classList.remove("menu-open");
  }
}

function bindMenu() {
  $("menu-toggle").addEventListener("click", () => {
    const open = $("menu-toggle").getAttribute("aria-expanded") !== "true";
    $("menu-toggle").setAttribute("aria-expanded", String(open));
    document.body.classList.toggle("menu-open", open);
  });
}

// ----------------------------------------------------------------- start

async function start() {
  bindAuthForms();
  bindSessions();
  bindComposer();
  bindMenu();
  if (!auth.refresh) {
    showAuth("");
    return;
  }
  try {
    await enterApp();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signedOut("Your sign-in has expired. Please sign in again.");
    } else {
      showAuth(errorSentence(error));
    }
  }
}

start();

// The recording player's Service Worker (listen.js registers it): the page's <audio> element
// asks for /v1/calls/{id}/recording by its plain URL, with the Range requests it makes to start
// at once and to seek, and this worker sends each one on with the session's credential in the
// Authorization header. No token ever goes into a URL, and none is kept here: for every request
// the worker asks the page that made it for its current token (a MessageChannel), so a worker the
// browser stopped and started again, or a token the page refreshed, needs nothing more. A 401 asks
// the page for a refreshed token once, as the page's own requests do.
//
// Every other request, and a request that already carries Authorization (the page's own fetch),
// goes to the network untouched.

const RECORDING = /^\/v1\/calls\/[^/]+\/recording$/;
const ASK_MS = 5000; // a page that does not answer (not the dashboard): the request goes on bare
const PASSED = ["Range", "If-Range"];

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));
// A page loaded while this worker was already active but not controlling it (a hard reload).
self.addEventListener("message", (event) => {
  if (event.data?.type === "callstream.claim") event.waitUntil(self.clients.claim());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin || !RECORDING.test(url.pathname)) return;
  if (request.headers.has("Authorization") || !event.clientId) return;
  event.respondWith(authorized(request, event.clientId));
});

/** The page's current token (or a refreshed one with `fresh`); null if it has none to give. */
async function tokenOf(clientId, fresh) {
  const client = await self.clients.get(clientId);
  if (!client) return null;
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    const timer = setTimeout(() => resolve(null), ASK_MS);
    channel.port1.onmessage = (ev) => {
      clearTimeout(timer);
      resolve(typeof ev.data?.token === "string" ? ev.data.token : null);
    };
    client.postMessage({ type: "callstream.token", fresh }, [channel.port2]);
  });
}

async function authorized(request, clientId) {
  for (let attempt = 0; ; attempt += 1) {
    const token = await tokenOf(clientId, attempt > 0);
    if (!token) return fetch(request);
    const headers = new Headers({ Authorization: `Bearer ${token}` });
    for (const name of PASSED) if (request.headers.has(name)) headers.set(name, request.headers.get(name));
    // A recording holds what the transcript's redaction took out: kept out of the HTTP cache.
    const response = await fetch(request.url, { headers, cache: "no-store", signal: request.signal });
    if (response.status !== 401 || attempt > 0) return response;
  }
}

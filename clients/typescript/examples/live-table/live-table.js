// A live table of address/address filtered by city, kept up to date by a LiveCollection over
// the browser build of the client. Parameters come from the query string:
//   hub       the hub's WebSocket URL (default ws://<this host>:7340/ws)
//   city      the city to show (default Envik)
//   namespace the namespace (default: the default one)
//   token     a token, when the hub does not run in open mode
//   backoff   the first reconnect delay in ms (default 100)
//   encoding  json (default) or msgpack
//   heartbeat ms of quiet before the page checks that the hub still answers (default 15000)
import { FlowhubClient, LiveCollection } from "../../dist/flowhub.browser.js";

const q = new URLSearchParams(location.search);
const hubUrl = q.get("hub") ?? `ws://${location.hostname || "127.0.0.1"}:7340/ws`;
const city = q.get("city") ?? "Envik";
const namespace = q.get("namespace") ?? undefined;
const token = q.get("token") ?? undefined;
const backoff = Number(q.get("backoff") ?? 100);
const encoding = q.get("encoding") ?? "json";
const heartbeatMs = Number(q.get("heartbeat") ?? 15000);

const $ = (sel) => document.querySelector(sel);
const tbody = $("#addresses tbody");
const status = $("#status");
let resets = 0;
let opened = false;

$("#city").textContent = city;
$("#hub").textContent = hubUrl;

function setStatus(state, text = state) {
  status.dataset.state = state;
  status.textContent = text;
}

const escape = (v) =>
  String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function render(rows) {
  tbody.innerHTML = rows
    .map(
      (a) =>
        `<tr data-id="${escape(a.id)}"><td>${escape(a.id)}</td><td>${escape(a.streetName ?? a.street)}</td>` +
        `<td class="num">${escape(a.streetNumber)}</td><td>${escape(a.city)}</td></tr>`,
    )
    .join("");
  $("#count").textContent = String(rows.length);
}

try {
  const client = await FlowhubClient.connect({
    url: hubUrl,
    token,
    backoffInitial: backoff,
    backoffMax: Math.max(backoff, 2000),
    encoding,
    heartbeatMs,
    heartbeatTimeout: Math.max(1000, Math.min(10000, heartbeatMs * 2)),
    onStateChange: (state, info) => setStatus(state, info.error && state !== "connected" ? `${state}: ${info.error.message}` : state),
  });
  setStatus(client.state);
  const col = await LiveCollection.open(
    client,
    {
      endpoint: "address/address",
      namespace,
      condition: { items: [{ key: "city", operator: "EQUAL", value: city }] },
      sortKey: (a) => Number(a.streetNumber ?? 0),
    },
    (rows, change) => {
      // The first reset is the initial snapshot; a later one means the hub could not replay
      // the changes missed while away and the table was reloaded from a fresh snapshot.
      if (change.type === "reset" && opened) {
        resets += 1;
        $("#resets").textContent = String(resets);
        setStatus("reset", "reset: reloaded");
        setTimeout(() => setStatus(client.state), 1000);
      }
      render(rows);
    },
  );
  opened = true;
  render(col.items);
  // For debugging from the console.
  window.flowhub = { client, col };
} catch (e) {
  setStatus("error", `error: ${e.message}`);
  console.error(e);
}

// What the client does when the connection goes bad, against real hubs: a frozen hub (SIGSTOP:
// its sockets stay open, nothing answers) is noticed by the heartbeat; calls made while the
// client is offline fail at once or wait for the connection; and on a hub that authenticates,
// a token issued for a password is renewed before it expires, and a revoked token is replaced
// by logging in again.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { FlowhubClient, FlowhubError } from "../dist/index.js";
import { Hub, until, freshNs, sleep, secureEnv } from "./support/hub.mjs";

const EP = "address/address";
const hubs = [];
const clients = [];
after(async () => {
  for (const c of clients) c.close();
  for (const h of hubs) await h.dispose();
});
async function startHub(env) {
  const h = new Hub({ env });
  hubs.push(h);
  return h.start();
}
async function connect(opts) {
  const c = await FlowhubClient.connect(opts);
  clients.push(c);
  return c;
}
const fast = { backoffInitial: 50, backoffMax: 300 };

test("heartbeat: a frozen hub is noticed, calls in flight fail, and after it runs again the subscription resumes", async () => {
  const hub = await startHub();
  const c = await connect({ url: hub.url, ...fast, heartbeatMs: 300, heartbeatTimeout: 3000, connectTimeout: 3000 });
  const w = await connect({ url: hub.url, heartbeatMs: 0 });
  const ns = freshNs();
  const seen = [];
  await c.subscribe({ endpoint: EP, namespace: ns }, { onEvent: (e) => seen.push(e.objectid) });
  await w.create(EP, { id: "before" }, { namespace: ns });
  await until(() => seen.length === 1, 10000, "the first event");

  // A quiet but healthy connection is kept: the hub answers the heartbeats.
  await sleep(2000);
  assert.equal(c.state, "connected");
  assert.equal(c.connectionNumber, 1);

  await hub.freeze();
  try {
    // The call's own deadline is 30 s; the dead link is found long before.
    await assert.rejects(
      c.call(EP, "OPEN", { namespace: ns, objectid: "before" }),
      (e) => e instanceof FlowhubError && e.kind === "disconnected",
    );
    assert.notEqual(c.state, "connected");
  } finally {
    hub.thaw();
  }
  await c.waitConnected(30000);
  assert.ok(c.connectionNumber >= 2, "a new connection was made");
  await w.create(EP, { id: "after" }, { namespace: ns });
  await until(() => seen.includes("after"), 10000, "the event after the hub ran again");
  assert.deepEqual(seen, ["before", "after"]);
  assert.equal((await c.open(EP, "before", { namespace: ns })).id, "before");
});

test("offline calls fail at once by default, or wait for the connection with waitOnline (per client and per call)", async () => {
  const hub = await startHub();
  const failing = await connect({ url: hub.url, ...fast });
  const waiting = await connect({ url: hub.url, ...fast, waitOnline: true });
  const ns = freshNs();
  await failing.create(EP, { id: "x", n: 1 }, { namespace: ns });

  await hub.stop();
  await until(() => failing.state === "reconnecting" && waiting.state === "reconnecting", 10000, "both clients to notice");

  // Fail fast: nothing is sent.
  await assert.rejects(failing.open(EP, "x", { namespace: ns }), (e) => e.kind === "offline" && e.retryable);
  await assert.rejects(waiting.open(EP, "x", { namespace: ns, waitOnline: false }), (e) => e.kind === "offline");
  // Waiting, but the call's own timeout passes first: offline, not sent.
  await assert.rejects(
    failing.open(EP, "x", { namespace: ns, waitOnline: true, timeout: 200 }),
    (e) => e.kind === "offline" && /not sent/.test(e.message),
  );
  // These wait for the hub.
  const queued = [
    failing.call(EP, "UPDATE", { namespace: ns, objectid: "x", data: { n: 2 }, waitOnline: true }),
    waiting.call(EP, "CREATE", { namespace: ns, data: { id: "y" } }),
    waiting.open(EP, "x", { namespace: ns, timeout: 60000 }),
  ];
  let settled = false;
  Promise.allSettled(queued).then(() => (settled = true));
  await sleep(500);
  assert.equal(settled, false, "the calls wait while the hub is down");

  await hub.restart();
  const [updated, created, opened] = await Promise.all(queued);
  assert.equal(updated.success, true);
  assert.equal(updated.data.n, 2);
  assert.equal(created.success, true);
  assert.equal(created.data.id, "y");
  assert.equal(opened.id, "x");
  assert.equal((await failing.list(EP, { namespace: ns })).count, 2);
});

const ADMIN = { username: "admin", password: "a long test passphrase" };
// Logins on a busy machine against a debug build of the hub may be slow: a generous attempt.
const patient = { ...fast, connectTimeout: 30000 };
let secure;
async function secureHub() {
  // Tokens live 4 s: the renewal must happen within a test's span.
  secure ??= await startHub(secureEnv(ADMIN, { FLOWHUB_TOKEN_LIFETIME_S: "4" }));
  return secure;
}

test("a token issued for a password is renewed before it expires: the connection and its subscription last", async () => {
  const hub = await secureHub();
  // Renewed at half the lifetime: 2 s of margin on a busy machine.
  const c = await connect({ url: hub.url, ...ADMIN, ...patient, tokenRenewAt: 0.5 });
  const w = await connect({ url: hub.url, ...ADMIN, ...patient, tokenRenewAt: 0.5 });
  const first = c.token;
  assert.match(first, /^fh1_/);
  const ns = freshNs();
  const seen = [];
  await c.subscribe({ endpoint: EP, namespace: ns }, { onEvent: (e) => seen.push(e.objectid) });

  // Two and a half lifetimes: without renewal the hub closes the connection (4001) when its token expires.
  await sleep(10000);
  assert.equal(c.state, "connected");
  assert.equal(c.connectionNumber, 1, "the hub never closed the connection");
  assert.notEqual(c.token, first, "a new token was issued");
  const me = await c.open("auth/token", "current");
  assert.equal(me.user, "admin");

  await w.create(EP, { id: "a" }, { namespace: ns });
  await until(() => seen.includes("a"), 10000, "the event");
  // The renewed token works on its own, e.g. over HTTP.
  const res = await fetch(`http://${hub.addr}/api/auth/auth/token/current`, { headers: { "Flow-Auth-Token": c.token } });
  assert.equal(res.status, 200);
  assert.equal((await res.json()).data.user, "admin");
});

test("a revoked token: the hub closes the connection, the client logs in with the password again and resumes", async () => {
  const hub = await secureHub();
  const c = await connect({ url: hub.url, ...ADMIN, ...patient });
  const admin = await connect({ url: hub.url, ...ADMIN, ...patient });
  const ns = freshNs();
  const seen = [];
  await c.subscribe({ endpoint: EP, namespace: ns }, { onEvent: (e) => seen.push(e.objectid) });
  await admin.create(EP, { id: "before" }, { namespace: ns });
  await until(() => seen.length === 1, 10000, "the first event");

  const old = c.token;
  const { id } = await c.open("auth/token", "current");
  await admin.delete("auth/token", id);
  await until(() => c.state === "connected" && c.connectionNumber >= 2, 20000, "the client to log in again");
  assert.notEqual(c.token, old);

  await admin.create(EP, { id: "after" }, { namespace: ns });
  await until(() => seen.includes("after"), 10000, "the event after the new login");
  assert.deepEqual(seen, ["before", "after"]);
  assert.equal((await c.open(EP, "after", { namespace: ns })).id, "after");
});

test("a token the hub rejects is replaced by a password login; a wrong password fails the connect", async () => {
  const hub = await secureHub();
  const bogus = "fh1_" + "A".repeat(43);
  const c = await connect({ url: hub.url, token: bogus, ...ADMIN, ...patient });
  assert.match(c.token, /^fh1_/);
  assert.notEqual(c.token, bogus);
  assert.equal((await c.open("auth/token", "current")).user, "admin");

  await assert.rejects(
    FlowhubClient.connect({ url: hub.url, token: bogus, connectTimeout: 30000 }),
    (e) => e instanceof FlowhubError && e.errorcode === "UNAUTHORIZED",
  );
  await assert.rejects(
    FlowhubClient.connect({ url: hub.url, username: "admin", password: "not the password", connectTimeout: 30000 }),
    (e) => e instanceof FlowhubError && e.errorcode === "UNAUTHORIZED",
  );
});

test("a reconnect logs in with the token the client holds: after a hub restart it is the same token", async () => {
  // Tokens of the default lifetime (24 h), kept across the restart in the data directory.
  const hub = await startHub(secureEnv(ADMIN));
  const c = await connect({ url: hub.url, ...ADMIN, ...patient });
  const token = c.token;
  const ns = freshNs();
  await c.create(EP, { id: "kept" }, { namespace: ns });
  await hub.restart();
  await until(() => c.state === "connected" && c.connectionNumber >= 2, 20000, "the client to reconnect");
  assert.equal(c.token, token);
  assert.equal((await c.open(EP, "kept", { namespace: ns })).id, "kept");
  const tokens = await c.list("auth/token");
  assert.equal(tokens.count, 1, "no second token was issued");
});

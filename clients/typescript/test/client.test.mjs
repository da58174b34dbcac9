import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { FlowhubClient, FlowhubError, LiveCollection } from "../dist/index.js";
import { WebSocket } from "ws";
import { Hub, until, freshNs, sleep } from "./support/hub.mjs";

let hub;
before(async () => {
  hub = await new Hub().start();
});
after(async () => {
  await hub?.dispose();
});

const EP = "address/address";

test("CREATE, OPEN, LIST, UPDATE, DELETE and the error envelope", async () => {
  const c = await FlowhubClient.connect({ url: hub.url });
  try {
    const ns = freshNs();
    const created = await c.call(EP, "CREATE", { namespace: ns, data: { city: "Envik", street: "A" } });
    assert.equal(created.success, true);
    assert.equal(created.status, 0);
    const id = created.data.id;
    assert.match(id, /^[0-9a-f-]{36}$/);
    assert.equal(typeof created.data.version, "number");

    const opened = await c.open(EP, id, { namespace: ns });
    assert.equal(opened.city, "Envik");

    await c.create(EP, { city: "Oslo", street: "B" }, { namespace: ns });
    const listed = await c.call(EP, "LIST", {
      namespace: ns,
      parameters: { "sorting.by": "street", "sorting.order": "DESC" },
    });
    assert.equal(listed.success, true);
    assert.equal(listed.count, 2);
    assert.deepEqual(listed.data.map((o) => o.street), ["B", "A"]);

    const updated = await c.update(EP, id, { street: null, zip: "1234" }, { namespace: ns });
    assert.equal(updated.zip, "1234");
    assert.equal("street" in updated, false);
    assert.ok(updated.version > opened.version);

    const deleted = await c.call(EP, "DELETE", { namespace: ns, objectid: id });
    assert.equal(deleted.success, true);

    const missing = await c.call(EP, "OPEN", { namespace: ns, objectid: id });
    assert.equal(missing.success, false);
    assert.equal(missing.errorcode, "DO_NOT_EXIST");
    assert.match(missing.errorid, /^[0-9a-f-]{36}$/);
    assert.equal(typeof missing.message, "string");
    assert.equal("data" in missing, false);

    await assert.rejects(c.open(EP, id, { namespace: ns }), (e) => e instanceof FlowhubError && e.kind === "hub" && e.errorcode === "DO_NOT_EXIST");
    const bad = await c.call(EP, "OPEN", { namespace: ns });
    assert.equal(bad.errorcode, "INVALID_REQUEST");
  } finally {
    c.close();
  }
});

test("many calls in flight are paired with their replies", async () => {
  const c = await FlowhubClient.connect({ url: hub.url });
  try {
    const ns = freshNs();
    const n = 300;
    const replies = await Promise.all(
      Array.from({ length: n }, (_, i) => c.create(EP, { id: "o" + i, i }, { namespace: ns })),
    );
    replies.forEach((r, i) => {
      assert.equal(r.id, "o" + i);
      assert.equal(r.i, i);
    });
    const opened = await Promise.all(Array.from({ length: n }, (_, i) => c.open(EP, "o" + i, { namespace: ns })));
    opened.forEach((r, i) => assert.equal(r.i, i));
    const { count } = await c.list(EP, { namespace: ns, parameters: { "pagination.size": 1 } });
    assert.equal(count, n);
  } finally {
    c.close();
  }
});

test("RUN without a provider is NO_PROVIDER; provide answers data, errors and rejects", async () => {
  const c = await FlowhubClient.connect({ url: hub.url });
  const p = await FlowhubClient.connect({ url: hub.url });
  try {
    const ep = "svc" + freshNs() + "/device";
    const none = await c.call(ep, "RUN", { objectid: "x", data: {} });
    assert.equal(none.errorcode, "NO_PROVIDER");
    await p.provide(ep, { methods: ["RUN"] }, (inv) => {
      if (inv.data.action === "reboot") return { data: { rebooting: inv.objectid } };
      if (inv.data.action === "fail") return { error: { errorcode: "OUT_OF_STOCK", message: "no such part", status: 409 } };
      return { reject: "not mine" };
    });
    assert.deepEqual(await c.run(ep, "d1", { action: "reboot" }), { rebooting: "d1" });
    const failed = await c.call(ep, "RUN", { objectid: "d1", data: { action: "fail" } });
    assert.equal(failed.errorcode, "OUT_OF_STOCK");
    assert.equal(failed.message, "no such part");
    const rejected = await c.call(ep, "RUN", { objectid: "d1", data: { action: "?" } });
    assert.equal(rejected.errorcode, "NO_PROVIDER");
    assert.match(rejected.message, /not mine/);

    const seen = [];
    await c.subscribe({ endpoint: ep, namespace: "" }, { onEvent: (e) => seen.push(e) });
    const pub = await p.publish("UPDATE", ep, "d1", { id: "d1", status: "rebooting" });
    assert.equal(typeof pub.position, "number");
    await until(() => seen.length === 1, 5000, "published change");
    assert.equal(seen[0].data.status, "rebooting");
    assert.equal(seen[0].position, pub.position);
    await assert.rejects(c.publish("UPDATE", ep, "d1", { id: "d1" }), (e) => e.errorcode === "FORBIDDEN");
  } finally {
    c.close();
    p.close();
  }
});

test("endpoint subscription: snapshot, then events in commit order", async () => {
  const c = await FlowhubClient.connect({ url: hub.url });
  try {
    const ns = freshNs();
    await c.create(EP, { id: "pre", n: 0 }, { namespace: ns });
    const events = [];
    const sub = await c.subscribe({ endpoint: EP, namespace: ns, snapshot: true }, { onEvent: (e) => events.push(e) });
    assert.equal(sub.snapshot.count, 1);
    assert.equal(sub.snapshot.data[0].id, "pre");
    assert.equal(typeof sub.epoch, "string");
    for (let i = 1; i <= 20; i++) await c.update(EP, "pre", { n: i }, { namespace: ns });
    await c.create(EP, { id: "b" }, { namespace: ns });
    await c.delete(EP, "b", { namespace: ns });
    await until(() => events.length === 22, 5000, "22 events");
    assert.deepEqual(events.slice(0, 20).map((e) => e.data.n), Array.from({ length: 20 }, (_, i) => i + 1));
    assert.ok(events.every((e) => e.kind === "UPDATE" || e.objectid === "b"));
    assert.deepEqual(events.slice(20).map((e) => e.kind), ["CREATE", "DELETE"]);
    for (let i = 1; i < events.length; i++) assert.ok(events[i].position > events[i - 1].position);
    assert.equal(sub.position, events.at(-1).position);
    await sub.unsubscribe();
    await c.create(EP, { id: "after" }, { namespace: ns });
    await sleep(100);
    assert.equal(events.length, 22);
  } finally {
    c.close();
  }
});

test("object subscription and live query: enter, change, leave", async () => {
  const c = await FlowhubClient.connect({ url: hub.url });
  try {
    const ns = freshNs();
    const objEvents = [];
    const objSub = await c.subscribe({ endpoint: EP, namespace: ns, objectid: "x", snapshot: true }, { onEvent: (e) => objEvents.push(e) });
    assert.equal(objSub.snapshot.data, null);
    const live = [];
    const q = await c.subscribe(
      { endpoint: EP, namespace: ns, condition: { items: [{ key: "city", operator: "EQUAL", value: "Envik" }] }, snapshot: true },
      { onEvent: (e) => live.push(e) },
    );
    assert.deepEqual(q.snapshot.data, []);
    await c.create(EP, { id: "x", city: "Oslo" }, { namespace: ns });
    await c.update(EP, "x", { city: "Envik" }, { namespace: ns });
    await c.update(EP, "x", { street: "Main" }, { namespace: ns });
    await c.update(EP, "x", { city: "Bergen" }, { namespace: ns });
    await c.create(EP, { id: "y", city: "Envik" }, { namespace: ns });
    await c.delete(EP, "y", { namespace: ns });
    await until(() => live.length === 5 && objEvents.length === 4, 5000, "events");
    assert.deepEqual(live.map((e) => [e.objectid, e.kind, e.live]), [
      ["x", "UPDATE", "enter"],
      ["x", "UPDATE", "change"],
      ["x", "UPDATE", "leave"],
      ["y", "CREATE", "enter"],
      ["y", "DELETE", "leave"],
    ]);
    assert.deepEqual(objEvents.map((e) => e.kind), ["CREATE", "UPDATE", "UPDATE", "UPDATE"]);
    assert.ok(objEvents.every((e) => e.objectid === "x" && e.live === undefined));
    await assert.rejects(
      c.subscribe({ endpoint: EP, namespace: ns, condition: { items: [{ key: "city", operator: "NOPE", value: 1 }] } }),
      (e) => e.kind === "hub" && e.errorcode === "INVALID_PARAMETERS",
    );
  } finally {
    c.close();
  }
});

test("calls while offline fail fast; resume after a hub restart delivers the missed events once", async () => {
  const states = [];
  // The subscriber comes back 1-2 s after the drop, the writer at once: the writes below
  // happen while the subscriber is away.
  const c = await FlowhubClient.connect({ url: hub.url, backoffInitial: 2000, backoffMax: 2000, onStateChange: (s) => states.push(s) });
  const w = await FlowhubClient.connect({ url: hub.url, backoffInitial: 50, backoffMax: 500 });
  try {
    const ns = freshNs();
    const events = [];
    const resumed = [];
    const resets = [];
    const sub = await c.subscribe(
      { endpoint: EP, namespace: ns },
      { onEvent: (e) => events.push(e), onResumed: (i) => resumed.push(i), onReset: (i) => resets.push(i) },
    );
    for (let i = 0; i < 5; i++) await w.create(EP, { id: "r" + i }, { namespace: ns });
    await until(() => events.length === 5, 5000, "5 live events");

    await hub.stop();
    await until(() => c.state === "reconnecting", 5000, "client notices the drop");
    await assert.rejects(c.call(EP, "LIST", { namespace: ns }), (e) => e instanceof FlowhubError && e.kind === "offline");

    await hub.restart();
    // The writer reconnects first on its own and writes while the subscriber may still be away.
    await w.waitConnected(10000);
    for (let i = 5; i < 10; i++) await w.create(EP, { id: "r" + i }, { namespace: ns });
    assert.notEqual(c.state, "connected", "the subscriber was away during the writes");
    assert.equal(events.length, 5);
    await c.waitConnected(10000);
    await until(() => events.length === 10, 10000, "10 events after resume");
    await w.create(EP, { id: "r10" }, { namespace: ns });
    await until(() => events.length === 11, 5000, "a live event after resume");
    await sleep(100);
    assert.deepEqual(events.map((e) => e.objectid), Array.from({ length: 11 }, (_, i) => "r" + i));
    assert.equal(new Set(events.map((e) => e.position)).size, 11, "no doubles");
    assert.equal(resets.length, 0);
    assert.equal(resumed.length, 1);
    assert.ok(states.includes("reconnecting") && states.at(-1) === "connected");
    assert.equal(sub.active, true);
  } finally {
    c.close();
    w.close();
  }
});

test("a subscription of another epoch gets a reset with its snapshot", async () => {
  const c = await FlowhubClient.connect({ url: hub.url });
  try {
    const ns = freshNs();
    await c.create(EP, { id: "e1" }, { namespace: ns });
    const sub = await c.subscribe({ endpoint: EP, namespace: ns, snapshot: true, from: 1, epoch: "00000000-0000-4000-8000-000000000000" });
    assert.equal(sub.recovered, false);
    assert.equal(sub.snapshot.count, 1);
  } finally {
    c.close();
  }
});

test("live collection: ordered by a sort key, snapshot then enter/change/leave", async () => {
  const c = await FlowhubClient.connect({ url: hub.url });
  try {
    const ns = freshNs();
    await c.create(EP, { id: "a", city: "Envik", streetNumber: 30 }, { namespace: ns });
    await c.create(EP, { id: "b", city: "Envik", streetNumber: 10 }, { namespace: ns });
    await c.create(EP, { id: "c", city: "Oslo", streetNumber: 20 }, { namespace: ns });
    const changes = [];
    const col = await LiveCollection.open(
      c,
      { endpoint: EP, namespace: ns, condition: { items: [{ key: "city", operator: "EQUAL", value: "Envik" }] }, sortKey: (o) => o.streetNumber },
      (items, ch) => changes.push([ch.type, items.map((o) => o.id).join(",")]),
    );
    assert.deepEqual(col.items.map((o) => o.id), ["b", "a"]);
    await c.update(EP, "c", { city: "Envik" }, { namespace: ns });
    await until(() => col.size === 3, 5000, "c enters");
    assert.deepEqual(col.items.map((o) => o.id), ["b", "c", "a"]);
    await c.update(EP, "b", { streetNumber: 40 }, { namespace: ns });
    await until(() => col.items[2]?.id === "b", 5000, "b moves");
    assert.deepEqual(col.items.map((o) => o.id), ["c", "a", "b"]);
    assert.equal(col.get("b").streetNumber, 40);
    await c.update(EP, "a", { city: "Oslo" }, { namespace: ns });
    await c.delete(EP, "c", { namespace: ns });
    await until(() => col.size === 1, 5000, "a and c leave");
    assert.deepEqual(col.items.map((o) => o.id), ["b"]);
    assert.deepEqual(changes, [
      ["reset", "b,a"],
      ["enter", "b,c,a"],
      ["change", "c,a,b"],
      ["leave", "c,b"],
      ["leave", "b"],
    ]);
    await col.close();
  } finally {
    c.close();
  }
});

test("live collection without a sort key orders by id and survives a hub restart", async () => {
  const c = await FlowhubClient.connect({ url: hub.url, backoffInitial: 50, backoffMax: 500 });
  try {
    const ns = freshNs();
    await c.create(EP, { id: "m" }, { namespace: ns });
    const col = await LiveCollection.open(c, { endpoint: EP, namespace: ns });
    await c.create(EP, { id: "k" }, { namespace: ns });
    await until(() => col.size === 2, 5000, "k");
    assert.deepEqual(col.items.map((o) => o.id), ["k", "m"]);
    await hub.restart();
    await c.waitConnected(10000);
    await c.create(EP, { id: "z" }, { namespace: ns });
    await c.delete(EP, "k", { namespace: ns });
    await until(() => col.size === 2 && col.get("z"), 5000, "z after restart");
    assert.deepEqual(col.items.map((o) => o.id), ["m", "z"]);
  } finally {
    c.close();
  }
});

/** A `ws` WebSocket that notes the kind of every frame it sends and receives. */
function recordingWebSocket(frames) {
  return class extends WebSocket {
    constructor(url) {
      super(url);
      this.on("message", (_data, isBinary) => frames.push(isBinary ? "in:binary" : "in:text"));
    }
    send(data, ...rest) {
      frames.push(typeof data === "string" ? "out:text" : "out:binary");
      return super.send(data, ...rest);
    }
  };
}

test("MessagePack: calls, errors, calls in flight, providers, publish and events all in binary frames", async () => {
  const frames = [];
  const Rec = recordingWebSocket(frames);
  const c = await FlowhubClient.connect({ url: hub.url, encoding: "msgpack", WebSocket: Rec });
  const p = await FlowhubClient.connect({ url: hub.url, encoding: "msgpack", WebSocket: Rec });
  const j = await FlowhubClient.connect({ url: hub.url });
  try {
    assert.equal(c.encoding, "msgpack");
    const ns = freshNs();
    const events = [];
    const sub = await c.subscribe({ endpoint: EP, namespace: ns, snapshot: true }, { onEvent: (e) => events.push(e) });
    assert.deepEqual(sub.snapshot.data, []);

    const value = {
      city: "Götefred 😀",
      n: 42,
      neg: -129,
      big: 2 ** 40 + 1,
      float: 0.1,
      flag: true,
      none: null,
      list: [1, "two", [3], { four: 4 }],
      nested: { a: { b: { c: "deep" } } },
      empty: {},
      text: "x".repeat(70000),
    };
    const created = await c.create(EP, { id: "m1", ...value }, { namespace: ns });
    for (const [k, v] of Object.entries(value)) assert.deepEqual(created[k], v, k);
    // The same object read back over JSON.
    const viaJson = await j.open(EP, "m1", { namespace: ns });
    for (const [k, v] of Object.entries(value)) assert.deepEqual(viaJson[k], v, k);

    const missing = await c.call(EP, "OPEN", { namespace: ns, objectid: "nope" });
    assert.equal(missing.success, false);
    assert.equal(missing.errorcode, "DO_NOT_EXIST");
    assert.match(missing.errorid, /^[0-9a-f-]{36}$/);

    const many = await Promise.all(Array.from({ length: 200 }, (_, i) => c.create(EP, { id: "o" + i, i }, { namespace: ns })));
    many.forEach((r, i) => assert.equal(r.i, i));
    const { count } = await c.list(EP, { namespace: ns, parameters: { "pagination.size": 1 } });
    assert.equal(count, 201);

    const ep = "mp" + freshNs() + "/device";
    await p.provide(ep, { methods: ["RUN", "OPEN"] }, (inv) => {
      if (inv.method === "OPEN") return { data: { id: inv.objectid, params: inv.parameters } };
      if (inv.data.action === "echo") return { data: { got: inv.data, by: inv.objectid } };
      if (inv.data.action === "fail") return { error: { errorcode: "OUT_OF_STOCK", message: "none left", status: 409 } };
      return { reject: "not mine" };
    });
    const arg = { action: "echo", payload: { list: [1.5, -2, "ü"], deep: { x: null } } };
    assert.deepEqual(await c.run(ep, "d1", arg), { got: arg, by: "d1" });
    assert.deepEqual(await j.run(ep, "d2", arg), { got: arg, by: "d2" }, "a JSON caller reaches a MessagePack provider");
    assert.deepEqual(await c.open(ep, "d3", { parameters: { "sorting.by": "name" } }), { id: "d3", params: { "sorting.by": "name" } });
    const failed = await c.call(ep, "RUN", { objectid: "d1", data: { action: "fail" } });
    assert.equal(failed.errorcode, "OUT_OF_STOCK");
    const rejected = await c.call(ep, "RUN", { objectid: "d1", data: { action: "?" } });
    assert.equal(rejected.errorcode, "NO_PROVIDER");
    assert.match(rejected.message, /not mine/);

    const published = [];
    await c.subscribe({ endpoint: ep }, { onEvent: (e) => published.push(e) });
    const pub = await p.publish("UPDATE", ep, "d1", { id: "d1", status: "rebooting" });
    await until(() => published.length === 1, 5000, "the published change");
    assert.equal(published[0].data.status, "rebooting");
    assert.equal(published[0].position, pub.position);

    await c.update(EP, "m1", { n: 43 }, { namespace: ns });
    await until(() => events.length === 202, 10000, "202 events");
    assert.equal(events[0].data.city, value.city);
    assert.equal(events.at(-1).kind, "UPDATE");
    assert.equal(events.at(-1).data.n, 43);

    assert.ok(frames.includes("in:binary") && frames.includes("out:binary"));
    assert.deepEqual(frames.filter((f) => f.endsWith(":text")), [], "no text frame either way");
  } finally {
    c.close();
    p.close();
    j.close();
  }
});

test("the browser bundle works with a given WebSocket and carries no ws", async () => {
  const { readFileSync } = await import("node:fs");
  const src = readFileSync(new URL("../dist/flowhub.browser.js", import.meta.url), "utf8");
  assert.doesNotMatch(src, /from\s*["']ws["']|require\(["']ws["']\)/);
  const { WebSocket } = await import("ws");
  const b = await import("../dist/flowhub.browser.js");
  const c = await b.FlowhubClient.connect({ url: hub.url, WebSocket });
  try {
    const r = await c.call(EP, "CREATE", { namespace: freshNs(), data: { city: "Envik" } });
    assert.equal(r.success, true);
  } finally {
    c.close();
  }
});

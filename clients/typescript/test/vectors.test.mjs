// Runs the conformance vectors of protocol/vectors/*.json (format: protocol/vectors/README.md)
// against a real hub, every file twice as the hub's own conformance test does: `send` frames as
// JSON text frames, then as MessagePack binary frames written by the client's encoder; replies
// are decoded by their kind (text: JSON, binary: the client's MessagePack decoder). Raw text and
// raw MessagePack steps are sent as written in both runs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocket } from "ws";
import { Hub, freshNs } from "./support/hub.mjs";
import { encodeMsgpack, decodeMsgpack } from "../dist/index.js";

const dir = resolve(dirname(fileURLToPath(import.meta.url)), "../../../protocol/vectors");
const files = readdirSync(dir).filter((f) => f.endsWith(".json")).sort();

let hub;
before(async () => {
  hub = await new Hub().start();
});
after(async () => {
  await hub?.dispose();
});

class Conn {
  constructor(url) {
    this.ws = new WebSocket(url);
    this.queue = [];
    this.waiters = [];
    this.ws.on("message", (data, isBinary) => {
      const msg = isBinary ? decodeMsgpack(data) : JSON.parse(data.toString());
      if (msg && msg.type === "event") return; // events' order against replies is not fixed
      this.push(msg);
    });
  }
  push(m) {
    const w = this.waiters.shift();
    w ? w(m) : this.queue.push(m);
  }
  open() {
    return new Promise((res, rej) => {
      this.ws.once("open", res);
      this.ws.once("error", rej);
    });
  }
  next(timeout = 10000) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error("no frame from the hub within " + timeout + " ms")), timeout);
      this.waiters.push((m) => {
        clearTimeout(t);
        res(m);
      });
    });
  }
  close() {
    this.ws.close();
  }
}

function substitute(v, vars) {
  if (typeof v === "string") {
    const exact = /^\{\{(\w+)\}\}$/.exec(v);
    if (exact && exact[1] in vars) return vars[exact[1]];
    return v.replace(/\{\{(\w+)\}\}/g, (m, k) =>
      k in vars ? (typeof vars[k] === "string" ? vars[k] : JSON.stringify(vars[k])) : m,
    );
  }
  if (Array.isArray(v)) return v.map((x) => substitute(x, vars));
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, substitute(x, vars)]));
  return v;
}

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const TS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/** Returns null when `got` matches `exp`, else "path: why". */
function match(exp, got, path) {
  const at = path || "(root)";
  if (typeof exp === "string" && exp.startsWith("$")) {
    if (exp.startsWith("$$")) return got === exp.slice(1) ? null : `${at}: expected ${JSON.stringify(exp.slice(1))}, got ${JSON.stringify(got)}`;
    const bad = (what) => `${at}: expected ${what}, got ${JSON.stringify(got)}`;
    if (exp === "$any") return null;
    if (exp === "$string") return typeof got === "string" ? null : bad("a string");
    if (exp === "$number") return typeof got === "number" ? null : bad("a number");
    if (exp === "$integer") return Number.isInteger(got) ? null : bad("an integer");
    if (exp === "$uuid") return typeof got === "string" && UUID.test(got) ? null : bad("a uuid");
    if (exp === "$timestamp") return typeof got === "string" && TS.test(got) ? null : bad("a timestamp");
    if (exp.startsWith("$starts:")) return typeof got === "string" && got.startsWith(exp.slice(8)) ? null : bad(JSON.stringify(exp));
    if (exp.startsWith("$gt:")) return typeof got === "number" && got > Number(exp.slice(4)) ? null : bad(exp);
  }
  if (Array.isArray(exp)) {
    if (!Array.isArray(got)) return `${at}: expected an array, got ${JSON.stringify(got)}`;
    if (exp.length !== got.length) return `${at}: expected ${exp.length} elements, got ${got.length}`;
    for (let i = 0; i < exp.length; i++) {
      const m = match(exp[i], got[i], path ? `${path}.${i}` : String(i));
      if (m) return m;
    }
    return null;
  }
  if (exp && typeof exp === "object") {
    if (!got || typeof got !== "object" || Array.isArray(got)) return `${at}: expected an object, got ${JSON.stringify(got)}`;
    for (const [k, v] of Object.entries(exp)) {
      const p = path ? `${path}.${k}` : k;
      if (v === "$absent") {
        if (k in got) return `${p}: expected absent, got ${JSON.stringify(got[k])}`;
        continue;
      }
      if (!(k in got)) return `${p}: missing`;
      const m = match(v, got[k], p);
      if (m) return m;
    }
    return null;
  }
  if (typeof exp === "number" && typeof got === "number") return exp === got ? null : `${at}: expected ${exp}, got ${got}`;
  return exp === got ? null : `${at}: expected ${JSON.stringify(exp)}, got ${JSON.stringify(got)}`;
}

function pick(v, path) {
  for (const seg of path.split(".")) v = v == null ? undefined : v[Array.isArray(v) ? Number(seg) : seg];
  return v;
}

let rid = 0;
function prepare(step, vars) {
  let frame = substitute(step.send, vars);
  let expect = step.expect === undefined ? undefined : substitute(step.expect, vars);
  if (frame && typeof frame === "object" && !Array.isArray(frame) && !("requestid" in frame)) {
    const id = "v-" + ++rid;
    frame = { ...frame, requestid: id };
    if (expect && typeof expect === "object" && !("requestid" in expect)) expect = { ...expect, requestid: id };
  }
  return { frame, expect };
}

const encodings = {
  JSON: (frame) => JSON.stringify(frame),
  MessagePack: (frame) => encodeMsgpack(frame),
};

for (const [encName, encode] of Object.entries(encodings))
for (const file of files) {
  test(`vectors ${file} (${encName})`, async () => {
    const doc = JSON.parse(readFileSync(join(dir, file), "utf8"));
    const vars = { ns: freshNs() };
    const conn = new Conn(hub.url);
    await conn.open();
    try {
      for (const [i, step] of doc.steps.entries()) {
        const where = `${file} step ${i}${step.note ? ` (${step.note})` : ""}`;
        if (step.batch) {
          const sent = step.batch.map((s) => prepare(s, vars));
          for (const s of sent) conn.ws.send(encode(s.frame));
          const byId = new Map(sent.map((s) => [s.frame.requestid, s]));
          for (let k = 0; k < sent.length; k++) {
            const reply = await conn.next();
            const s = byId.get(reply.requestid);
            assert.ok(s, `${where}: reply with unknown requestid ${JSON.stringify(reply.requestid)}`);
            byId.delete(reply.requestid);
            const m = s.expect === undefined ? null : match(s.expect, reply, "");
            assert.equal(m, null, `${where}: ${m}`);
          }
          continue;
        }
        let expect;
        if (step.send_raw_text !== undefined) {
          conn.ws.send(substitute(step.send_raw_text, vars));
          expect = step.expect === undefined ? undefined : substitute(step.expect, vars);
        } else if (step.send_raw_hex !== undefined) {
          conn.ws.send(Buffer.from(step.send_raw_hex.replace(/\s+/g, ""), "hex"));
          expect = step.expect === undefined ? undefined : substitute(step.expect, vars);
        } else {
          const p = prepare(step, vars);
          conn.ws.send(encode(p.frame));
          expect = p.expect;
        }
        if (expect === undefined) continue;
        const reply = await conn.next();
        const m = match(expect, reply, "");
        assert.equal(m, null, `${where}: ${m}`);
        for (const [name, path] of Object.entries(step.capture ?? {})) vars[name] = pick(reply, path);
      }
    } finally {
      conn.close();
    }
  });
}

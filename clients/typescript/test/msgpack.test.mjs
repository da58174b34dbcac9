// The client's MessagePack encoder and decoder against the bytes the format's specification
// gives (https://github.com/msgpack/msgpack/blob/master/spec.md). That the hub reads what it
// writes and the client reads what the hub writes is checked by the conformance vectors run in
// MessagePack (vectors.test.mjs) and the client tests in both encodings.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeMsgpack as encode, decodeMsgpack as decode } from "../dist/index.js";

const hex = (b) => Buffer.from(b).toString("hex");
const bytes = (h) => new Uint8Array(Buffer.from(h.replace(/\s+/g, ""), "hex"));

test("MessagePack: each value in the smallest format, as the specification writes it", () => {
  const cases = [
    [null, "c0"],
    [false, "c2"],
    [true, "c3"],
    [0, "00"],
    [127, "7f"],
    [128, "cc80"],
    [255, "ccff"],
    [256, "cd0100"],
    [65535, "cdffff"],
    [65536, "ce00010000"],
    [4294967295, "ceffffffff"],
    [4294967296, "cf0000000100000000"],
    [Number.MAX_SAFE_INTEGER, "cf001fffffffffffff"],
    [-1, "ff"],
    [-32, "e0"],
    [-33, "d0df"],
    [-128, "d080"],
    [-129, "d1ff7f"],
    [-32768, "d18000"],
    [-32769, "d2ffff7fff"],
    [-2147483648, "d280000000"],
    [-2147483649, "d3ffffffff7fffffff"],
    [Number.MIN_SAFE_INTEGER, "d3ffe0000000000001"],
    [1.5, "cb3ff8000000000000"],
    [-0.1, "cbbfb999999999999a"],
    [2 ** 64, "cb43f0000000000000"],
    [NaN, "c0"],
    ["", "a0"],
    ["a", "a161"],
    ["é", "a2c3a9"],
    ["😀", "a4f09f9880"],
    ["x".repeat(31), "bf" + "78".repeat(31)],
    ["x".repeat(32), "d920" + "78".repeat(32)],
    ["x".repeat(256), "da0100" + "78".repeat(256)],
    ["x".repeat(65536), "db00010000" + "78".repeat(65536)],
    [[], "90"],
    [[1, "a", null], "9301a161c0"],
    [Array(16).fill(0), "dc0010" + "00".repeat(16)],
    [Array(65536).fill(1), "dd00010000" + "01".repeat(65536)],
    [{}, "80"],
    [{ a: 1 }, "81a16101"],
    [{ a: { b: [true] } }, "81a16181a16291c3"],
  ];
  for (const [v, h] of cases) {
    const got = hex(encode(v));
    assert.equal(got.length > 80 ? got.slice(0, 40) + "…" + got.length : got, h.length > 80 ? h.slice(0, 40) + "…" + h.length : h, `encode ${JSON.stringify(v)?.slice(0, 40)}`);
    const back = decode(bytes(h));
    assert.deepEqual(back, v === v ? v : null, `decode ${h.slice(0, 40)}`);
  }
  // 16 keys: map 16
  const o16 = Object.fromEntries(Array.from({ length: 16 }, (_, i) => ["k" + i.toString(16), i]));
  assert.equal(hex(encode(o16)).slice(0, 6), "de0010");
  assert.deepEqual(decode(encode(o16)), o16);
});

test("MessagePack: like JSON, undefined and functions are left out of objects and are nil in arrays; toJSON is used", () => {
  const v = { a: undefined, b: () => 1, c: [undefined, () => 1], d: new Date(Date.UTC(2026, 10, 27)), e: -0 };
  assert.deepEqual(decode(encode(v)), JSON.parse(JSON.stringify(v)));
  assert.equal(hex(encode(12n)), "cf000000000000000c");
  assert.equal(hex(encode(-12n)), "d3fffffffffffffff4");
});

test("MessagePack: the decoder reads every format the specification has for JSON values", () => {
  assert.equal(decode(bytes("ca3fc00000")), 1.5); // float 32
  assert.equal(decode(bytes("d07f")), 127); // int 8 written where a fixint would do
  assert.equal(decode(bytes("d9026162")), "ab"); // str 8 where a fixstr would do
  assert.deepEqual(decode(bytes("dc0001c3")), [true]); // array 16
  assert.deepEqual(decode(bytes("de0001a161c2")), { a: false }); // map 16
  assert.deepEqual(decode(bytes("c4020102")), new Uint8Array([1, 2])); // bin 8
  assert.deepEqual(decode(bytes("810102")), { 1: 2 }); // a non-string key becomes a string
  const proto = decode(bytes("81a95f5f70726f746f5f5f01"));
  assert.equal(Object.getPrototypeOf(proto), Object.prototype, "a __proto__ key is an own property");
  assert.deepEqual(Object.keys(proto), ["__proto__"]);
  // A Node Buffer that is a slice of a larger one.
  const big = Buffer.from("ff81a16101ff", "hex");
  assert.deepEqual(decode(big.subarray(1, 5)), { a: 1 });
});

test("MessagePack: malformed input is an error", () => {
  for (const [h, why] of [
    ["", /end of data/],
    ["c1", /invalid byte/],
    ["92 01", /end of data/],
    ["a3 6162", /end of data/],
    ["01 02", /bytes after the value/],
    ["d4 01 00", /ext/],
    ["a2 c328", /./], // invalid UTF-8
  ])
    assert.throws(() => decode(bytes(h)), why, h);
});

test("MessagePack: random JSON values survive a round trip", () => {
  let seed = 42;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const gen = (d) => {
    const r = rnd();
    if (d > 3 || r < 0.35) {
      const k = Math.floor(rnd() * 7);
      return [null, true, false, Math.floor(rnd() * 2 ** 40) - 2 ** 39, rnd() * 1e6 - 5e5, "s" + rnd().toString(36), "ünï©ødé 😀"][k];
    }
    if (r < 0.7) return Array.from({ length: Math.floor(rnd() * 8) }, () => gen(d + 1));
    return Object.fromEntries(Array.from({ length: Math.floor(rnd() * 8) }, (_, i) => ["k" + i + rnd().toString(36).slice(2, 5), gen(d + 1)]));
  };
  for (let i = 0; i < 300; i++) {
    const v = gen(0);
    assert.deepEqual(decode(encode(v)), v);
  }
});

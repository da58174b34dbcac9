// A small MessagePack encoder and decoder (https://github.com/msgpack/msgpack/blob/master/spec.md)
// for the hub's binary WebSocket frames (protocol/SPEC.md section 1): nil, booleans, integers,
// floats, strings, arrays and maps. No dependency, so the browser build stays one file.
//
// Values map like JSON.stringify / JSON.parse, so that a client gets the same objects in both
// encodings:
// - encode: integers that are safe in a double go as MessagePack integers, every other number as
//   a float 64 (NaN and the infinities as nil, as JSON writes null); a `bigint` as a 64-bit
//   integer; `undefined`, functions and symbols are left out of objects and are nil in arrays;
//   an object's `toJSON()` (a Date's) is used; a Uint8Array or ArrayBuffer is a `bin` (which the
//   hub refuses: its frames carry JSON values only).
// - decode: 64-bit integers become numbers (exact up to 2^53, like JSON.parse); map keys become
//   strings; `bin` becomes a Uint8Array; `ext` is an error (the hub never sends it).

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

class Writer {
  buf: Uint8Array;
  view: DataView;
  pos = 0;
  constructor(size = 256) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
  }
  ensure(n: number) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number) {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }
  u8u8(t: number, v: number) {
    this.ensure(2);
    this.buf[this.pos++] = t;
    this.buf[this.pos++] = v;
  }
  u8u16(t: number, v: number) {
    this.ensure(3);
    this.buf[this.pos++] = t;
    this.view.setUint16(this.pos, v);
    this.pos += 2;
  }
  u8u32(t: number, v: number) {
    this.ensure(5);
    this.buf[this.pos++] = t;
    this.view.setUint32(this.pos, v);
    this.pos += 4;
  }
  bytes(b: Uint8Array) {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

function writeNumber(w: Writer, n: number) {
  if (Number.isSafeInteger(n)) {
    if (n >= 0) {
      if (n < 0x80) w.u8(n);
      else if (n < 0x100) w.u8u8(0xcc, n);
      else if (n < 0x10000) w.u8u16(0xcd, n);
      else if (n < 0x100000000) w.u8u32(0xce, n);
      else {
        w.ensure(9);
        w.buf[w.pos++] = 0xcf;
        w.view.setUint32(w.pos, Math.floor(n / 0x100000000));
        w.view.setUint32(w.pos + 4, n >>> 0);
        w.pos += 8;
      }
    } else {
      if (n >= -32) w.u8(n & 0xff);
      else if (n >= -0x80) w.u8u8(0xd0, n & 0xff);
      else if (n >= -0x8000) {
        w.ensure(3);
        w.buf[w.pos++] = 0xd1;
        w.view.setInt16(w.pos, n);
        w.pos += 2;
      } else if (n >= -0x80000000) {
        w.ensure(5);
        w.buf[w.pos++] = 0xd2;
        w.view.setInt32(w.pos, n);
        w.pos += 4;
      } else {
        w.ensure(9);
        w.buf[w.pos++] = 0xd3;
        w.view.setBigInt64(w.pos, BigInt(n));
        w.pos += 8;
      }
    }
    return;
  }
  if (!Number.isFinite(n)) return w.u8(0xc0); // as JSON.stringify writes null
  w.ensure(9);
  w.buf[w.pos++] = 0xcb;
  w.view.setFloat64(w.pos, n);
  w.pos += 8;
}

function writeString(w: Writer, s: string) {
  // At most 3 bytes per UTF-16 unit; encode in place after the largest header, then fix it.
  const max = s.length * 3;
  w.ensure(5 + max);
  const head = s.length < 32 && max < 32 ? 1 : max < 0x100 ? 2 : max < 0x10000 ? 3 : 5;
  const start = w.pos + head;
  const { written } = utf8Encoder.encodeInto(s, w.buf.subarray(start, start + max));
  const n = written ?? 0;
  // Use the smallest header for the real length (move the bytes if it is smaller).
  const need = n < 32 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
  if (need !== head) w.buf.copyWithin(w.pos + need, start, start + n);
  if (need === 1) w.buf[w.pos] = 0xa0 | n;
  else if (need === 2) {
    w.buf[w.pos] = 0xd9;
    w.buf[w.pos + 1] = n;
  } else if (need === 3) {
    w.buf[w.pos] = 0xda;
    w.view.setUint16(w.pos + 1, n);
  } else {
    w.buf[w.pos] = 0xdb;
    w.view.setUint32(w.pos + 1, n);
  }
  w.pos += need + n;
}

function writeLength(w: Writer, n: number, fix: number, fixMax: number, t16: number, t32: number) {
  if (n < fixMax) w.u8(fix | n);
  else if (n < 0x10000) w.u8u16(t16, n);
  else w.u8u32(t32, n);
}

function skipped(v: unknown): boolean {
  return v === undefined || typeof v === "function" || typeof v === "symbol";
}

function writeValue(w: Writer, v: unknown, depth: number): void {
  if (depth > 512) throw new RangeError("MessagePack: value nested too deeply (or cyclic)");
  switch (typeof v) {
    case "number":
      return writeNumber(w, v);
    case "string":
      return writeString(w, v);
    case "boolean":
      return w.u8(v ? 0xc3 : 0xc2);
    case "bigint": {
      w.ensure(9);
      if (v >= 0n) {
        if (v > 0xffffffffffffffffn) throw new RangeError("MessagePack: bigint out of the 64-bit range");
        w.buf[w.pos++] = 0xcf;
        w.view.setBigUint64(w.pos, v);
      } else {
        if (v < -0x8000000000000000n) throw new RangeError("MessagePack: bigint out of the 64-bit range");
        w.buf[w.pos++] = 0xd3;
        w.view.setBigInt64(w.pos, v);
      }
      w.pos += 8;
      return;
    }
    case "object":
      break;
    default:
      return w.u8(0xc0); // undefined, functions, symbols (in arrays and at the top)
  }
  if (v === null) return w.u8(0xc0);
  if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
    const b = v instanceof Uint8Array ? v : new Uint8Array(v);
    if (b.length < 0x100) w.u8u8(0xc4, b.length);
    else if (b.length < 0x10000) w.u8u16(0xc5, b.length);
    else w.u8u32(0xc6, b.length);
    return w.bytes(b);
  }
  if (typeof (v as any).toJSON === "function") return writeValue(w, (v as any).toJSON(), depth + 1);
  if (Array.isArray(v)) {
    writeLength(w, v.length, 0x90, 16, 0xdc, 0xdd);
    for (const x of v) writeValue(w, skipped(x) ? null : x, depth + 1);
    return;
  }
  const keys = Object.keys(v as object).filter((k) => !skipped((v as any)[k]));
  writeLength(w, keys.length, 0x80, 16, 0xde, 0xdf);
  for (const k of keys) {
    writeString(w, k);
    writeValue(w, (v as any)[k], depth + 1);
  }
}

/** Encodes a JSON-like value as MessagePack. */
export function encode(value: unknown): Uint8Array {
  const w = new Writer();
  writeValue(w, value, 0);
  return w.buf.slice(0, w.pos);
}

class Reader {
  readonly buf: Uint8Array;
  readonly view: DataView;
  pos = 0;
  constructor(buf: Uint8Array) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  need(n: number) {
    if (this.pos + n > this.buf.length) throw new RangeError("MessagePack: unexpected end of data");
  }
}

function readString(r: Reader, n: number): string {
  r.need(n);
  const s = utf8Decoder.decode(r.buf.subarray(r.pos, r.pos + n));
  r.pos += n;
  return s;
}

function readArray(r: Reader, n: number, depth: number): unknown[] {
  const a = new Array(n);
  for (let i = 0; i < n; i++) a[i] = readValue(r, depth + 1);
  return a;
}

function readMap(r: Reader, n: number, depth: number): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (let i = 0; i < n; i++) {
    const k = readValue(r, depth + 1);
    const key = typeof k === "string" ? k : String(k);
    const v = readValue(r, depth + 1);
    if (key === "__proto__") Object.defineProperty(o, key, { value: v, enumerable: true, writable: true, configurable: true });
    else o[key] = v;
  }
  return o;
}

function readValue(r: Reader, depth: number): unknown {
  if (depth > 512) throw new RangeError("MessagePack: nested too deeply");
  r.need(1);
  const t = r.buf[r.pos++];
  if (t < 0x80) return t;
  if (t < 0x90) return readMap(r, t & 0x0f, depth);
  if (t < 0xa0) return readArray(r, t & 0x0f, depth);
  if (t < 0xc0) return readString(r, t & 0x1f);
  if (t >= 0xe0) return t - 0x100;
  const v = r.view;
  let n: number;
  switch (t) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
    case 0xc5:
    case 0xc6: {
      const len = t === 0xc4 ? 1 : t === 0xc5 ? 2 : 4;
      r.need(len);
      n = len === 1 ? v.getUint8(r.pos) : len === 2 ? v.getUint16(r.pos) : v.getUint32(r.pos);
      r.pos += len;
      r.need(n);
      const b = r.buf.slice(r.pos, r.pos + n);
      r.pos += n;
      return b;
    }
    case 0xca:
      r.need(4);
      n = v.getFloat32(r.pos);
      r.pos += 4;
      return n;
    case 0xcb:
      r.need(8);
      n = v.getFloat64(r.pos);
      r.pos += 8;
      return n;
    case 0xcc:
      r.need(1);
      return v.getUint8(r.pos++);
    case 0xcd:
      r.need(2);
      n = v.getUint16(r.pos);
      r.pos += 2;
      return n;
    case 0xce:
      r.need(4);
      n = v.getUint32(r.pos);
      r.pos += 4;
      return n;
    case 0xcf:
      r.need(8);
      n = v.getUint32(r.pos) * 0x100000000 + v.getUint32(r.pos + 4);
      r.pos += 8;
      return n;
    case 0xd0:
      r.need(1);
      return v.getInt8(r.pos++);
    case 0xd1:
      r.need(2);
      n = v.getInt16(r.pos);
      r.pos += 2;
      return n;
    case 0xd2:
      r.need(4);
      n = v.getInt32(r.pos);
      r.pos += 4;
      return n;
    case 0xd3:
      r.need(8);
      n = v.getInt32(r.pos) * 0x100000000 + v.getUint32(r.pos + 4);
      r.pos += 8;
      return n;
    case 0xd9:
      r.need(1);
      return readString(r, v.getUint8(r.pos++));
    case 0xda:
      r.need(2);
      n = v.getUint16(r.pos);
      r.pos += 2;
      return readString(r, n);
    case 0xdb:
      r.need(4);
      n = v.getUint32(r.pos);
      r.pos += 4;
      return readString(r, n);
    case 0xdc:
      r.need(2);
      n = v.getUint16(r.pos);
      r.pos += 2;
      return readArray(r, n, depth);
    case 0xdd:
      r.need(4);
      n = v.getUint32(r.pos);
      r.pos += 4;
      return readArray(r, n, depth);
    case 0xde:
      r.need(2);
      n = v.getUint16(r.pos);
      r.pos += 2;
      return readMap(r, n, depth);
    case 0xdf:
      r.need(4);
      n = v.getUint32(r.pos);
      r.pos += 4;
      return readMap(r, n, depth);
    case 0xc7:
    case 0xc8:
    case 0xc9:
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
      throw new TypeError("MessagePack: ext values are not supported");
    default:
      throw new TypeError("MessagePack: invalid byte 0x" + t.toString(16));
  }
}

/** Decodes exactly one MessagePack value (bytes after it are an error). */
export function decode(data: Uint8Array | ArrayBuffer | ArrayBufferView): unknown {
  const bytes =
    data instanceof Uint8Array
      ? data
      : data instanceof ArrayBuffer
        ? new Uint8Array(data)
        : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const r = new Reader(bytes);
  const v = readValue(r, 0);
  if (r.pos !== bytes.length) throw new RangeError(`MessagePack: ${bytes.length - r.pos} bytes after the value`);
  return v;
}

// The flowhub client: one WebSocket, many calls in flight, subscriptions that survive
// reconnects (protocol/SPEC.md sections 2, 3, 11, 12, 13).

import type {
  Answer,
  CallOptions,
  Envelope,
  ErrorEnvelope,
  FlowEvent,
  Method,
  ProvideHandler,
  ProvideOptions,
  Snapshot,
  SubscribeOptions,
  SubscriptionHandlers,
} from "./types.js";
import { decode as msgpackDecode, encode as msgpackEncode } from "./msgpack.js";

/** Why a call or subscribe failed. `hub` carries the hub's error envelope. */
export type FlowhubErrorKind =
  | "hub" // an error envelope from the hub or a provider behind it
  | "offline" // not connected: the call was not sent
  | "disconnected" // the connection dropped after the frame went out; it may or may not have run
  | "timeout" // no reply in time
  | "closed" // the client was closed
  | "connect" // the first connection failed
  | "protocol"; // a frame the client cannot understand

export class FlowhubError extends Error {
  readonly kind: FlowhubErrorKind;
  /** For `hub`: the catalogue code (`DO_NOT_EXIST`, ...). For local errors: the kind in capitals. */
  readonly errorcode: string;
  readonly errorid?: string;
  readonly envelope?: ErrorEnvelope;
  constructor(kind: FlowhubErrorKind, message: string, envelope?: ErrorEnvelope) {
    super(message);
    this.name = "FlowhubError";
    this.kind = kind;
    this.envelope = envelope;
    this.errorcode = envelope?.errorcode ?? kind.toUpperCase();
    this.errorid = envelope?.errorid;
  }
  /** Whether the same call may succeed later. */
  get retryable(): boolean {
    return (
      this.kind === "offline" ||
      this.kind === "disconnected" ||
      this.kind === "timeout" ||
      ["NO_PROVIDER", "PROVIDER_TIMEOUT", "PROVIDER_LOST", "RATE_LIMITED", "UNAVAILABLE"].includes(
        this.errorcode,
      )
    );
  }
}

/** The minimal WebSocket surface used (browser WebSocket and the `ws` package both have it). */
export interface WebSocketLike {
  readyState: number;
  /** Set to "arraybuffer" so that binary frames arrive as ArrayBuffer (browsers and `ws`). */
  binaryType?: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drops the socket at once, without a closing handshake. */
  terminate?(): void;
  onopen: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

/** How frames are written: JSON text frames or MessagePack binary frames (SPEC 1). */
export type Encoding = "json" | "msgpack";

export interface ClientOptions {
  /** `ws://host:port/ws`; `http(s)://host:port` and `host:port` are accepted. Default `ws://127.0.0.1:7340/ws`. */
  url?: string;
  /**
   * A token: the connection logs in with it (a login frame on every (re)connect). Together with
   * `username` and `password`, it is tried first and the password is used when it is rejected.
   */
  token?: string;
  /**
   * Username and password: the first connection logs in with them and the hub issues a token
   * (`client.token`), which later reconnects log in with and which is renewed before it
   * expires; when the hub rejects it (UNAUTHORIZED), the client logs in with the password again.
   */
  username?: string;
  password?: string;
  /** `"json"` (text frames, the default) or `"msgpack"` (binary frames). */
  encoding?: Encoding;
  /**
   * When nothing has come from the hub for this long (ms), the client sends a cheap call (OPEN
   * of `hub/endpoint`) to check that the hub still answers. Default 15000; 0 turns it off.
   */
  heartbeatMs?: number;
  /** No reply to that check within this long (ms): the connection is dead; it is dropped and made again. Default 10000. */
  heartbeatTimeout?: number;
  /**
   * Calls made while the client is not connected wait until it is (within their own timeout)
   * instead of failing at once with `offline`. Default false; each call may say otherwise.
   */
  waitOnline?: boolean;
  /** Renew a token issued for `username`/`password` when this share of its lifetime has passed. Default 0.75. */
  tokenRenewAt?: number;
  /** The WebSocket implementation. Default: the global one, else the `ws` package (Node). */
  WebSocket?: WebSocketConstructor;
  /** Local deadline of a call without its own `timeout` (ms). Default 30000. */
  callTimeout?: number;
  /** One connection attempt: socket and login (ms). Default 10000. */
  connectTimeout?: number;
  /** Reconnection delays: initial * 2^n, at most max, jittered into [1/2, 1]. Default 100 / 10000 ms. */
  backoffInitial?: number;
  backoffMax?: number;
  /** `connect()` keeps trying instead of failing when the hub is down. Default false. */
  waitForHub?: boolean;
  /** Called on every state change. */
  onStateChange?: (state: ConnectionState, info: { connection: number; error?: Error }) => void;
}

interface Pending {
  resolve: (reply: any) => void;
  reject: (err: Error) => void;
  timer?: ReturnType<typeof setTimeout>;
}

interface SubEntry {
  name: string;
  opts: SubscribeOptions;
  handlers: SubscriptionHandlers;
  position: number;
  epoch: string;
  active: boolean;
  sub: Subscription;
}

interface ProvideEntry {
  endpoint: string;
  opts: ProvideOptions;
  handler: ProvideHandler;
}

export function normalizeUrl(url: string): string {
  let u = url.trim();
  if (/^https?:\/\//.test(u)) u = u.replace(/^http/, "ws");
  if (!/^wss?:\/\//.test(u)) u = "ws://" + u;
  const m = /^(wss?:\/\/[^/]+)(\/.*)?$/.exec(u);
  if (m && (!m[2] || m[2] === "/")) u = m[1] + "/ws";
  return u;
}

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const g = (globalThis as any).WebSocket;
  if (typeof g === "function") return g as WebSocketConstructor;
  // A computed specifier: bundlers leave it alone, so the browser build carries no `ws`.
  const name = "ws";
  const mod: any = await import(/* @vite-ignore */ /* webpackIgnore: true */ name);
  return (mod.WebSocket ?? mod.default) as WebSocketConstructor;
}

const OPEN = 1;

/** A subscription: where it stands, its snapshot, and how to end it. */
export class Subscription<T = any> {
  /** The client's name for it (the `subscription` of its events). */
  readonly name: string;
  /** The first reply's snapshot (when asked for). */
  snapshot?: Snapshot<T>;
  /** `recovered` of the first reply when it resumed from `from`. */
  recovered?: boolean;
  private readonly entry: () => SubEntry | undefined;
  private readonly client: FlowhubClient;
  constructor(client: FlowhubClient, name: string, entry: () => SubEntry | undefined) {
    this.client = client;
    this.name = name;
    this.entry = entry;
  }
  /** The position of the last change taken in (hand it with `epoch` to `from` to continue elsewhere). */
  get position(): number {
    return this.entry()?.position ?? 0;
  }
  get epoch(): string {
    return this.entry()?.epoch ?? "";
  }
  get active(): boolean {
    return this.entry()?.active ?? false;
  }
  /** Ends it; no event is delivered after this is called. */
  unsubscribe(): Promise<void> {
    return this.client._unsubscribe(this.name);
  }
}

/**
 * A connection to a flowhub hub. Create it with `FlowhubClient.connect(options)`.
 */
export class FlowhubClient {
  private readonly opts: Required<Omit<ClientOptions, "token" | "username" | "password" | "WebSocket" | "onStateChange">> &
    ClientOptions;
  private heartbeatTimer?: ReturnType<typeof setInterval>;
  private renewTimer?: ReturnType<typeof setTimeout>;
  private lastFrameAt = 0;
  private probing = false;
  /** When the held token expires, by the local clock (its lifetime counted from when it came). */
  private tokenExpiresAt?: number;
  private tokenReceivedAt = 0;
  private reauth?: Promise<boolean>;
  private WS?: WebSocketConstructor;
  private ws?: WebSocketLike;
  private _state: ConnectionState = "connecting";
  private connection = 0;
  private nextId = 1;
  private nextSub = 1;
  private pending = new Map<number, Pending>();
  private subs = new Map<string, SubEntry>();
  private provides = new Map<string, ProvideEntry>();
  private invocations = new Map<number, AbortController>();
  private attempt = 0;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private listeners = new Set<(s: ConnectionState, info: { connection: number; error?: Error }) => void>();
  /**
   * The token the connection is logged in with: the one the hub issued for `username` and
   * `password` (renewed before it expires), else the `token` option.
   */
  token?: string;
  /** The hub's epoch, from the last subscribe reply. */
  hubEpoch?: string;

  private constructor(opts: ClientOptions) {
    this.opts = {
      url: normalizeUrl(opts.url ?? "ws://127.0.0.1:7340/ws"),
      callTimeout: 30000,
      connectTimeout: 10000,
      backoffInitial: 100,
      backoffMax: 10000,
      waitForHub: false,
      encoding: "json",
      heartbeatMs: 15000,
      heartbeatTimeout: 10000,
      waitOnline: false,
      tokenRenewAt: 0.75,
      ...opts,
    } as any;
    if (this.opts.encoding !== "json" && this.opts.encoding !== "msgpack")
      throw new TypeError(`encoding must be "json" or "msgpack", not ${JSON.stringify(this.opts.encoding)}`);
    this.opts.url = normalizeUrl(this.opts.url);
    if (opts.onStateChange) this.listeners.add(opts.onStateChange);
  }

  /** Connects (and logs in). Rejects when the first attempt fails, unless `waitForHub`. */
  static async connect(opts: ClientOptions = {}): Promise<FlowhubClient> {
    const c = new FlowhubClient(opts);
    c.WS = opts.WebSocket ?? (await defaultWebSocket());
    for (;;) {
      try {
        await c.connectOnce();
        return c;
      } catch (e) {
        if (!c.opts.waitForHub || c._state === "closed") {
          c.setState("closed", e as Error);
          throw e;
        }
        await new Promise((r) => setTimeout(r, c.backoff()));
      }
    }
  }

  get state(): ConnectionState {
    return this._state;
  }
  /** 1 for the first connection, growing with each reconnect. */
  get connectionNumber(): number {
    return this.connection;
  }
  /** Follows the connection state; returns a function that stops following. */
  onStateChange(fn: (s: ConnectionState, info: { connection: number; error?: Error }) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
  /** Resolves when connected (now or later); rejects after `timeout` ms or when closed. */
  waitConnected(timeout = 30000): Promise<void> {
    if (this._state === "connected") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        off();
        reject(new FlowhubError("timeout", "not connected within " + timeout + " ms"));
      }, timeout);
      const off = this.onStateChange((s) => {
        if (s === "connected" || s === "closed") {
          clearTimeout(t);
          off();
          s === "connected" ? resolve() : reject(new FlowhubError("closed", "the client was closed"));
        }
      });
    });
  }

  private setState(s: ConnectionState, error?: Error) {
    this._state = s;
    for (const l of [...this.listeners]) {
      try {
        l(s, { connection: this.connection, error });
      } catch {
        /* a listener's failure is its own */
      }
    }
  }

  private backoff(): number {
    const base = Math.min(this.opts.backoffMax, this.opts.backoffInitial * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return base * (0.5 + Math.random() * 0.5);
  }

  /** One connection attempt: socket, login, re-provide, re-subscribe. */
  private connectOnce(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const ws = new this.WS!(this.opts.url);
      try {
        ws.binaryType = "arraybuffer";
      } catch {
        /* an implementation without binaryType hands binary frames over as it likes */
      }
      this.ws = ws;
      let settled = false;
      const timer = setTimeout(() => fail(new FlowhubError("connect", "connection attempt timed out")), this.opts.connectTimeout);
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        try {
          ws.close();
        } catch {
          /* already closed */
        }
        if (this.ws === ws) this.ws = undefined;
        for (const [id, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(err);
          this.pending.delete(id);
        }
        reject(err);
      };
      ws.onerror = () => {
        /* onclose follows */
      };
      ws.onclose = (ev: any) => {
        if (!settled) fail(new FlowhubError("connect", `connection to ${this.opts.url} failed (${ev?.code ?? ""} ${ev?.reason ?? ""})`.trim()));
        else if (this.ws === ws) this.onDrop(ev);
      };
      ws.onmessage = (ev: any) => {
        if (this.ws === ws) this.lastFrameAt = Date.now();
        this.onFrame(ev.data);
      };
      ws.onopen = async () => {
        try {
          this.connection++;
          await this.logIn();
          for (const p of this.provides.values()) {
            const reply = await this.request(this.provideFrame(p), this.opts.connectTimeout);
            if (!reply.success) throw new FlowhubError("hub", `provide ${p.endpoint}: ${reply.message}`, reply);
          }
          // Re-subscribe before calls go out again; replies say recovered or not.
          const resubs = [...this.subs.values()].filter((s) => s.active).map((s) => this.resubscribe(s));
          settled = true;
          clearTimeout(timer);
          this.attempt = 0;
          this.startHeartbeat(ws);
          this.setState("connected");
          resolve();
          await Promise.all(resubs);
        } catch (e) {
          fail(e as Error);
        }
      };
    });
  }

  private onDrop(ev: any) {
    this.ws = undefined;
    this.stopTimers();
    const err = new FlowhubError("disconnected", `connection lost (${ev?.code ?? ""} ${ev?.reason ?? ""})`.trim());
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
      this.pending.delete(id);
    }
    for (const ac of this.invocations.values()) ac.abort();
    this.invocations.clear();
    if ((this._state as ConnectionState) === "closed") return;
    this.setState("reconnecting", err);
    this.scheduleReconnect();
  }

  private scheduleReconnect() {
    if (this._state === "closed") return;
    this.reconnectTimer = setTimeout(async () => {
      if (this._state === "closed") return;
      try {
        await this.connectOnce();
      } catch (e) {
        if ((this._state as ConnectionState) !== "closed") {
          this.setState("reconnecting", e as Error);
          this.scheduleReconnect();
        }
      }
    }, this.backoff());
  }

  private onFrame(raw: unknown) {
    let msg: any;
    try {
      if (typeof raw === "string") msg = JSON.parse(raw);
      else if (raw instanceof ArrayBuffer || ArrayBuffer.isView(raw)) msg = msgpackDecode(raw as ArrayBuffer);
      else return; // a Blob: binaryType could not be set
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    switch (msg.type) {
      case "reply": {
        const p = this.pending.get(msg.requestid);
        if (!p) return;
        this.pending.delete(msg.requestid);
        clearTimeout(p.timer);
        p.resolve(msg);
        return;
      }
      case "event":
        return this.onEvent(msg as FlowEvent);
      case "invoke":
        return void this.onInvoke(msg);
      case "cancel": {
        const ac = this.invocations.get(msg.callid);
        if (ac) {
          this.invocations.delete(msg.callid);
          ac.abort();
        }
        return;
      }
    }
  }

  /** Sends a frame with a fresh requestid and waits for its reply (the raw reply frame). */
  private request(frame: Record<string, unknown>, timeout: number): Promise<any> {
    const ws = this.ws;
    if (this._state === "closed") return Promise.reject(new FlowhubError("closed", "the client was closed"));
    if (!ws || ws.readyState !== OPEN) return Promise.reject(new FlowhubError("offline", "not connected to the hub: the call was not sent"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const p: Pending = { resolve, reject };
      p.timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new FlowhubError("timeout", `no reply within ${timeout} ms`));
      }, timeout);
      this.pending.set(id, p);
      try {
        ws.send(this.encodeFrame({ ...frame, requestid: id }));
      } catch (e) {
        this.pending.delete(id);
        clearTimeout(p.timer);
        reject(new FlowhubError("offline", "send failed: " + (e as Error).message));
      }
    });
  }

  private send(frame: unknown) {
    if (this.ws && this.ws.readyState === OPEN) this.ws.send(this.encodeFrame(frame));
  }

  private encodeFrame(frame: unknown): string | Uint8Array {
    return this.opts.encoding === "msgpack" ? msgpackEncode(frame) : JSON.stringify(frame);
  }

  /** The encoding frames are written in. */
  get encoding(): Encoding {
    return this.opts.encoding;
  }

  // ---------------------------------------------------------------- authentication

  /** Logs the new connection in: with the held token if there is one, else (or when it is rejected) the password. */
  private async logIn(): Promise<void> {
    const held = this.token ?? this.opts.token;
    const hasPassword = this.opts.username !== undefined;
    // A token past its renewal time would expire before long: the password gets a fresh one.
    if (held && !(hasPassword && this.renewDue() <= Date.now())) {
      const reply = await this.request({ type: "login", token: held }, this.opts.connectTimeout);
      if (reply.success) {
        this.token = held;
        if (hasPassword) this.scheduleRenewal();
        return;
      }
      if (!hasPassword || reply.errorcode !== "UNAUTHORIZED")
        throw new FlowhubError("hub", `login failed: ${reply.message}`, reply);
      // The token is unknown, expired or revoked: the password gets a new one.
    }
    if (hasPassword) await this.passwordLogin(this.opts.connectTimeout);
  }

  /** A login frame with username and password; the connection then uses the token the hub issued. */
  private async passwordLogin(timeout: number): Promise<void> {
    const reply = await this.request(
      { type: "login", username: this.opts.username, password: this.opts.password ?? "" },
      timeout,
    );
    if (!reply.success) throw new FlowhubError("hub", `login failed: ${reply.message}`, reply);
    await this.adoptIssued(reply.data, timeout);
  }

  /**
   * Takes a token the hub has just issued. Its lifetime is read from the hub (`issued` and
   * `expires` of `auth/token` `current`), so the renewal does not depend on the two clocks
   * agreeing; it is counted from now.
   */
  private async adoptIssued(data: any, timeout: number): Promise<void> {
    if (typeof data?.token !== "string") return; // a hub in open mode issues none
    const received = Date.now();
    this.token = data.token;
    let lifetime = Date.parse(data?.expires) - received;
    try {
      const cur = await this.request({ type: "call", endpoint: "auth/token", method: "OPEN", objectid: "current" }, timeout);
      const l = Date.parse(cur.data?.expires) - Date.parse(cur.data?.issued);
      if (cur.success && Number.isFinite(l)) lifetime = l;
    } catch (e) {
      if ((e as FlowhubError).kind !== "timeout") throw e;
    }
    this.tokenExpiresAt = Number.isFinite(lifetime) ? received + lifetime : undefined;
    this.tokenReceivedAt = received;
    this.scheduleRenewal();
  }

  /** When the held token is due for renewal (local clock); Infinity when its lifetime is not known. */
  private renewDue(): number {
    if (this.tokenExpiresAt === undefined) return Infinity;
    const share = Math.min(0.95, Math.max(0.05, Number(this.opts.tokenRenewAt) || 0.75));
    return this.tokenReceivedAt + (this.tokenExpiresAt - this.tokenReceivedAt) * share;
  }

  private scheduleRenewal() {
    clearTimeout(this.renewTimer);
    this.renewTimer = undefined;
    if (this.tokenExpiresAt === undefined || this.opts.username === undefined) return;
    const delay = Math.min(0x7fffffff, Math.max(500, this.renewDue() - Date.now()));
    // The timer belongs to this connection: a reconnect logs in again and schedules anew.
    const ws = this.ws;
    this.renewTimer = setTimeout(() => {
      if (this.ws === ws && this._state !== "closed") void this.renewToken();
    }, delay);
  }

  /**
   * Gets a new token before the held one expires: CREATE on `auth/token` as the connection's
   * login, then a login frame with the new token (the hub would close a connection whose login
   * token expired, SPEC 13.2). When that fails, the password logs in again.
   */
  private async renewToken(): Promise<void> {
    const t = this.opts.connectTimeout;
    try {
      const r = await this.request({ type: "call", endpoint: "auth/token", method: "CREATE", data: {} }, t);
      if (r.success && r.data?.token) {
        const l = await this.request({ type: "login", token: r.data.token }, t);
        if (l.success) return await this.adoptIssued(r.data, t);
      }
      await this.passwordLogin(t);
    } catch {
      // The connection dropped (the reconnect logs in), or the password was refused: try again
      // a little later while the token lasts; the hub closes the connection when it expires.
      if (this._state === "connected") {
        clearTimeout(this.renewTimer);
        const ws = this.ws;
        this.renewTimer = setTimeout(() => {
          if (this.ws === ws && this._state === "connected") void this.renewToken();
        }, 1000);
      }
    }
  }

  /** After an UNAUTHORIZED reply: logs in with the password once (shared by concurrent callers). */
  private reauthenticate(): Promise<boolean> {
    if (!this.reauth) {
      this.reauth = this.passwordLogin(this.opts.connectTimeout)
        .then(() => true, () => false)
        .finally(() => {
          this.reauth = undefined;
        });
    }
    return this.reauth;
  }

  // ---------------------------------------------------------------- heartbeat

  private startHeartbeat(ws: WebSocketLike) {
    clearInterval(this.heartbeatTimer);
    this.lastFrameAt = Date.now();
    this.probing = false;
    const every = this.opts.heartbeatMs;
    if (!(every > 0)) return;
    this.heartbeatTimer = setInterval(() => {
      if (this.ws !== ws) return clearInterval(this.heartbeatTimer);
      if (this.probing || Date.now() - this.lastFrameAt < every) return;
      this.probing = true;
      const timeout = this.opts.heartbeatTimeout;
      this.request({ type: "call", endpoint: "hub/endpoint", method: "OPEN", objectid: "hub/endpoint" }, timeout).then(
        () => {
          this.probing = false;
        },
        (e: FlowhubError) => {
          this.probing = false;
          if (e.kind === "timeout" && this.ws === ws) this.abandon(ws, `no reply to a heartbeat within ${timeout} ms`);
        },
      );
    }, Math.max(10, Math.min(every, this.opts.heartbeatTimeout) / 2));
  }

  /** Gives up on a socket that does not answer: drops it without waiting for a closing handshake, then reconnects. */
  private abandon(ws: WebSocketLike, reason: string) {
    if (this.ws !== ws) return;
    ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
    try {
      if (typeof ws.terminate === "function") ws.terminate();
      else ws.close(4000, "heartbeat timeout");
    } catch {
      /* already closed */
    }
    this.onDrop({ code: 4000, reason });
  }

  private stopTimers() {
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.renewTimer);
    this.heartbeatTimer = this.renewTimer = undefined;
  }

  /**
   * Calls `method` on `endpoint` and resolves with the hub's envelope, success or error (check
   * `success`). Rejects only for local failures: `offline` (not connected; nothing was sent),
   * `disconnected`, `timeout`, `closed`.
   */
  async call<T = any>(endpoint: string, method: Method | Lowercase<Method>, options: CallOptions = {}): Promise<Envelope<T>> {
    const start = Date.now();
    const wait = options.timeout !== undefined ? options.timeout + 1000 : this.opts.callTimeout;
    const deadline = start + wait;
    const waitOnline = options.waitOnline ?? this.opts.waitOnline;
    const frame: Record<string, unknown> = { type: "call", endpoint, method: method.toUpperCase() };
    for (const k of ["objectid", "namespace", "parameters", "data", "application", "token"] as const)
      if (options[k] !== undefined) frame[k] = options[k];
    let retried = false;
    for (;;) {
      if (this._state !== "connected") {
        if (this._state === "closed") throw new FlowhubError("closed", "the client was closed");
        if (!waitOnline) throw new FlowhubError("offline", `not connected to the hub (${this._state}): the call was not sent`);
        await this.untilOnline(deadline);
      }
      const left = deadline - Date.now();
      // The hub's deadline for a provider (SPEC 11.4) is what is left of the call's own.
      if (options.timeout !== undefined) frame.timeout = Math.max(0, Math.floor(Math.min(options.timeout, left - 1000)));
      let reply: any;
      try {
        reply = await this.request(frame, Math.max(1, left));
      } catch (err) {
        // Dropped between the state change and the send: nothing went out, wait again.
        if (waitOnline && (err as FlowhubError).kind === "offline" && (this._state as ConnectionState) !== "closed") continue;
        throw err;
      }
      const { type: _t, requestid: _r, ...env } = reply;
      const e = env as Envelope<T>;
      // A token the hub no longer takes: with a password at hand, log in again and retry once.
      if (
        !e.success &&
        e.errorcode === "UNAUTHORIZED" &&
        !retried &&
        options.token === undefined &&
        this.opts.username !== undefined &&
        this._state === "connected"
      ) {
        retried = true;
        if (await this.reauthenticate()) continue;
      }
      return e;
    }
  }

  /** Resolves once connected; rejects `offline` at the deadline (nothing was sent) or `closed`. */
  private untilOnline(deadline: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        off();
        reject(new FlowhubError("offline", `not connected to the hub within the call's timeout: the call was not sent`));
      }, Math.max(0, deadline - Date.now()));
      const off = this.onStateChange((s) => {
        if (s === "connected" || s === "closed") {
          clearTimeout(t);
          off();
          s === "connected" ? resolve() : reject(new FlowhubError("closed", "the client was closed"));
        }
      });
    });
  }

  /** Like `call`, but resolves with the reply's `data` (and `count`) and rejects an error envelope as FlowhubError `hub`. */
  async callData<T = any>(endpoint: string, method: Method | Lowercase<Method>, options: CallOptions = {}): Promise<T> {
    const env = await this.call<T>(endpoint, method, options);
    if (!env.success) throw new FlowhubError("hub", env.message, env);
    return env.data as T;
  }

  // Shorthands returning data and throwing FlowhubError on error envelopes.
  list<T = any>(endpoint: string, options: CallOptions = {}): Promise<{ data: T[]; count: number }> {
    return this.call<T[]>(endpoint, "LIST", options).then((env) => {
      if (!env.success) throw new FlowhubError("hub", env.message, env);
      return { data: env.data ?? [], count: env.count ?? 0 };
    });
  }
  open<T = any>(endpoint: string, objectid: string | number, options: CallOptions = {}): Promise<T> {
    return this.callData<T>(endpoint, "OPEN", { ...options, objectid });
  }
  create<T = any>(endpoint: string, data: unknown, options: CallOptions = {}): Promise<T> {
    return this.callData<T>(endpoint, "CREATE", { ...options, data });
  }
  update<T = any>(endpoint: string, objectid: string | number, data: unknown, options: CallOptions = {}): Promise<T> {
    return this.callData<T>(endpoint, "UPDATE", { ...options, objectid, data });
  }
  delete<T = any>(endpoint: string, objectid: string | number, options: CallOptions = {}): Promise<T> {
    return this.callData<T>(endpoint, "DELETE", { ...options, objectid });
  }
  run<T = any>(endpoint: string, objectid: string | number, data: unknown, options: CallOptions = {}): Promise<T> {
    return this.callData<T>(endpoint, "RUN", { ...options, objectid, data });
  }

  // ---------------------------------------------------------------- subscriptions

  /**
   * Follows an object, an endpoint or a live query. Resolves once the hub accepted it (the
   * snapshot, if asked for, is `subscription.snapshot`); events go to `handlers.onEvent`. After
   * a reconnect the client subscribes again from the last position: missed changes arrive
   * once, or `onReset` says they cannot (reload).
   */
  async subscribe<T = any>(options: SubscribeOptions, handlers: SubscriptionHandlers<T> = {}): Promise<Subscription<T>> {
    if (this._state !== "connected")
      throw new FlowhubError(this._state === "closed" ? "closed" : "offline", `not connected to the hub (${this._state}): not subscribed`);
    const name = "ts" + this.nextSub++;
    const entry: SubEntry = {
      name,
      opts: { ...options },
      handlers,
      position: options.from ?? 0,
      epoch: options.epoch ?? "",
      active: false,
      sub: new Subscription<T>(this, name, () => this.subs.get(name)),
    };
    this.subs.set(name, entry);
    let reply: any;
    try {
      reply = await this.request(this.subscribeFrame(entry, options.from !== undefined), this.opts.callTimeout);
    } catch (e) {
      this.subs.delete(name);
      throw e;
    }
    if (!reply.success) {
      this.subs.delete(name);
      throw new FlowhubError("hub", reply.message, reply);
    }
    entry.active = true;
    entry.epoch = reply.epoch;
    this.hubEpoch = reply.epoch;
    const sub = entry.sub as Subscription<T>;
    if (options.from === undefined || reply.recovered === false) entry.position = reply.position;
    if (options.from !== undefined) sub.recovered = reply.recovered;
    if ("data" in reply) sub.snapshot = { data: reply.data, count: reply.count };
    return sub;
  }

  private subscribeFrame(e: SubEntry, resume: boolean): Record<string, unknown> {
    const o = e.opts;
    const f: Record<string, unknown> = { type: "subscribe", subscription: e.name, endpoint: o.endpoint };
    if (o.namespace !== undefined) f.namespace = o.namespace;
    if (o.objectid !== undefined) f.objectid = o.objectid;
    if (o.condition !== undefined) f.condition = o.condition;
    if (o.snapshot) f.snapshot = true;
    if (o.patch) f.patch = true;
    if (o.token !== undefined) f.token = o.token;
    if (resume) {
      f.from = e.position;
      f.epoch = e.epoch;
    }
    return f;
  }

  private async resubscribe(e: SubEntry) {
    let reply: any;
    try {
      reply = await this.request(this.subscribeFrame(e, true), this.opts.callTimeout);
    } catch {
      return; // the connection dropped again: the next one retries
    }
    if (!this.subs.has(e.name)) return;
    if (!reply.success) {
      this.subs.delete(e.name);
      e.active = false;
      e.handlers.onEnded?.(new FlowhubError("hub", reply.message, reply));
      return;
    }
    this.hubEpoch = reply.epoch;
    if (reply.recovered) {
      e.handlers.onResumed?.({ recovered: true, position: e.position, epoch: e.epoch });
    } else {
      e.position = reply.position;
      e.epoch = reply.epoch;
      const info: any = { recovered: false, position: reply.position, epoch: reply.epoch };
      if ("data" in reply) info.snapshot = { data: reply.data, count: reply.count };
      e.handlers.onReset?.(info);
    }
  }

  private onEvent(ev: FlowEvent) {
    const e = this.subs.get(ev.subscription);
    if (!e || !e.active) return;
    if (typeof ev.position === "number") {
      if (ev.position <= e.position) return; // seen before a reconnect
      e.position = ev.position;
    }
    try {
      e.handlers.onEvent?.(ev);
    } catch (err) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }

  /** @internal */
  async _unsubscribe(name: string): Promise<void> {
    const e = this.subs.get(name);
    if (!e) return;
    this.subs.delete(name);
    e.active = false;
    if (this._state !== "connected") return;
    try {
      await this.request({ type: "unsubscribe", subscription: name }, this.opts.callTimeout);
    } catch {
      /* gone with the connection anyway */
    }
  }

  // ---------------------------------------------------------------- providers

  private provideFrame(p: ProvideEntry): Record<string, unknown> {
    const f: Record<string, unknown> = { type: "provide", endpoint: p.endpoint };
    if (p.opts.application !== undefined) f.application = p.opts.application;
    if (p.opts.methods !== undefined) f.methods = p.opts.methods;
    if (p.opts.policy !== undefined) f.policy = p.opts.policy;
    if (p.opts.token !== undefined) f.token = p.opts.token;
    return f;
  }

  /**
   * Serves `endpoint` from this process (SPEC 11). The handler answers `{data, count?}`,
   * `{error: {errorcode, message, status?}}` or `{reject: reason}` (the hub tries another
   * provider). Provided again after every reconnect.
   */
  async provide(endpoint: string, options: ProvideOptions, handler: ProvideHandler): Promise<any> {
    const p: ProvideEntry = { endpoint, opts: options, handler };
    const reply = await this.request(this.provideFrame(p), this.opts.callTimeout);
    if (!reply.success) throw new FlowhubError("hub", reply.message, reply);
    this.provides.set(endpoint, p);
    return reply.data;
  }

  /**
   * Announces a change of an object this provider keeps itself (SPEC 11.7); resolves with the
   * reply's data (`position`: the change's place in the hub's change sequence).
   */
  async publish(
    kind: "CREATE" | "UPDATE" | "DELETE",
    endpoint: string,
    objectid: string,
    data?: unknown,
    options: { namespace?: string; token?: string } = {},
  ): Promise<{ endpoint: string; namespace: string; objectid: string; position: number }> {
    const f: Record<string, unknown> = { type: "publish", endpoint, objectid, kind, namespace: options.namespace ?? "" };
    if (data !== undefined) f.data = data;
    if (options.token !== undefined) f.token = options.token;
    const reply = await this.request(f, this.opts.callTimeout);
    if (!reply.success) throw new FlowhubError("hub", reply.message, reply);
    return reply.data;
  }

  async unprovide(endpoint: string): Promise<void> {
    this.provides.delete(endpoint);
    const reply = await this.request({ type: "unprovide", endpoint }, this.opts.callTimeout);
    if (!reply.success) throw new FlowhubError("hub", reply.message, reply);
  }

  private async onInvoke(msg: any) {
    const p = this.provides.get(msg.endpoint);
    const callid = msg.callid;
    if (!p) return this.send({ type: "reject", callid, reason: "not provided here" });
    const ac = new AbortController();
    this.invocations.set(callid, ac);
    let answer: Answer;
    try {
      answer = await p.handler({ ...msg, signal: ac.signal });
    } catch (e) {
      answer = { error: { errorcode: "PROVIDER_ERROR", message: (e as Error)?.message ?? String(e) } };
    }
    if (ac.signal.aborted || this.invocations.get(callid) !== ac) return;
    this.invocations.delete(callid);
    if (answer && "reject" in answer) return this.send({ type: "reject", callid, reason: answer.reject });
    if (answer && "error" in answer) return this.send({ type: "result", callid, success: false, ...answer.error });
    const f: Record<string, unknown> = { type: "result", callid, success: true };
    if (answer && (answer as any).data !== undefined) f.data = (answer as any).data;
    if (answer && (answer as any).count !== undefined) f.count = (answer as any).count;
    this.send(f);
  }

  // ---------------------------------------------------------------- closing

  /** Closes the connection for good: waiting calls fail with `closed`, no reconnect. */
  close(): void {
    if (this._state === "closed") return;
    clearTimeout(this.reconnectTimer);
    this.stopTimers();
    this.setState("closed");
    const err = new FlowhubError("closed", "the client was closed");
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
      this.pending.delete(id);
    }
    for (const ac of this.invocations.values()) ac.abort();
    this.invocations.clear();
    const ws = this.ws;
    this.ws = undefined;
    try {
      ws?.close(1000, "client closed");
    } catch {
      /* already closed */
    }
  }
}

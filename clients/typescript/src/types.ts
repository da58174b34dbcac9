// Wire types of the Flow API protocol v1 (protocol/SPEC.md sections 2, 3, 11, 12, 13).

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The seven methods of the Flow API. */
export type Method = "LIST" | "OPEN" | "UPDATE" | "DELETE" | "INDEX" | "CREATE" | "RUN";

/** A successful reply envelope (SPEC 3). */
export interface SuccessEnvelope<T = any> {
  status: number;
  success: true;
  /** Present when the method returns something (a list for LIST). */
  data?: T;
  /** LIST: the number of matches before pagination. */
  count?: number;
  dataType: string;
}

/** An error reply envelope (SPEC 3). `errorcode` is from the catalogue (SPEC 8) or a provider's own. */
export interface ErrorEnvelope {
  status: number;
  success: false;
  message: string;
  errorcode: string;
  errorid?: string;
  dataType: string;
}

/** The seed's reply envelope: check `success` to narrow it. */
export type Envelope<T = any> = SuccessEnvelope<T> | ErrorEnvelope;

/** Options of one call (SPEC 2). */
export interface CallOptions {
  objectid?: string | number;
  namespace?: string;
  /** Object form, key/value list or JSON text (SPEC 6.1). */
  parameters?: Json | Record<string, unknown>;
  data?: unknown;
  /** HTTP application the call is addressed to (SPEC 7.1). */
  application?: string;
  /**
   * Milliseconds to wait. Sent to the hub as the frame's `timeout` (it shortens a provider's
   * deadline, SPEC 11.4); the client waits one second longer for the hub's PROVIDER_TIMEOUT.
   * Default: the client's `callTimeout`, which is not sent to the hub.
   */
  timeout?: number;
  /** A token for this call only (else the client's token or login). */
  token?: string;
  /**
   * While the client is not connected: `true` waits for the connection (within this call's
   * timeout), `false` fails at once with `offline`. Default: the client's `waitOnline`.
   */
  waitOnline?: boolean;
}

/** A stored object: what the hub adds to every object (SPEC 4.1). */
export interface StoredObject {
  id: string;
  created?: string;
  updated?: string;
  version?: number;
  [key: string]: any;
}

/** A condition tree of LIST / live queries (SPEC 6.3). */
export interface ConditionItem {
  key: string;
  operator: string;
  value?: unknown;
}
export interface Condition {
  items?: ConditionItem[];
  subgroups?: Condition[];
  logic?: "AND" | "OR" | string;
}

/** What to follow (SPEC 12.2). */
export interface SubscribeOptions {
  endpoint: string;
  namespace?: string;
  /** Follow this one object. Not together with `condition`. */
  objectid?: string | number;
  /** A live query: the `condition.values` tree of LIST. */
  condition?: Condition | string;
  /** The reply (and every reset) carries the current state. */
  snapshot?: boolean;
  /** UPDATE events carry an RFC 7386 merge patch instead of the whole object. */
  patch?: boolean;
  /** Resume after this position of `epoch` (e.g. saved by an earlier process). */
  from?: number;
  epoch?: string;
  /** A token for this subscription only. */
  token?: string;
}

export type ChangeKind = "CREATE" | "UPDATE" | "DELETE";
export type LiveTransition = "enter" | "change" | "leave";

/** One change delivered to a subscription (SPEC 12.3). */
export interface FlowEvent<T = any> {
  subscription: string;
  kind: ChangeKind;
  /** Live queries only. */
  live?: LiveTransition;
  endpoint: string;
  namespace: string;
  objectid: string;
  version: number;
  position: number;
  /** `true` when `data` is a merge patch. */
  patch?: boolean;
  /** New state; for DELETE the last state (may be null when replayed from the log). */
  data: T | null;
}

/** The state carried by a subscribe reply with `snapshot: true`. */
export interface Snapshot<T = any> {
  /** An object subscription: the object or null. Endpoint / live query: the list. */
  data: T | T[] | null;
  count?: number;
}

/** The hub could not replay the missed changes: the app must reload its state. */
export interface ResetInfo<T = any> {
  recovered: false;
  position: number;
  epoch: string;
  /** Present when the subscription asked for snapshots. */
  snapshot?: Snapshot<T>;
}

export interface SubscriptionHandlers<T = any> {
  /** Every change, once, in commit order (also across reconnects). */
  onEvent?(event: FlowEvent<T>): void;
  /** After a reconnect the changes missed could not be replayed: reload (snapshot given if asked for). */
  onReset?(info: ResetInfo<T>): void;
  /** After a reconnect the missed changes are being replayed (`recovered: true`). */
  onResumed?(info: { recovered: true; position: number; epoch: string }): void;
  /** The hub refused the subscription on a new connection (e.g. rights withdrawn); it is over. */
  onEnded?(error: Error): void;
}

/** What a provider handler gets (SPEC 11.2 invoke). */
export interface Invocation {
  callid: number;
  method: Method;
  endpoint: string;
  application: string;
  objectid?: string;
  namespace: string;
  parameters?: Record<string, unknown>;
  data?: unknown;
  caller: { user: string | null; roles: string[]; connection: number | null };
  timeout: number;
  /** Aborted when the hub cancels the call (timeout, caller gone) or the connection drops. */
  signal: AbortSignal;
}

/** What a provider handler answers. */
export type Answer =
  | { data?: unknown; count?: number }
  | { error: { errorcode: string; message?: string; status?: number; errorid?: string } }
  | { reject: string };

export type ProvideHandler = (inv: Invocation) => Answer | Promise<Answer>;

export interface ProvideOptions {
  application?: string;
  methods?: Method[];
  policy?: "balanced" | "roundrobin" | "random" | "first" | "last";
  token?: string;
}

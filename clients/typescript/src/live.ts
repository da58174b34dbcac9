// An ordered in-memory view of a live query (or of every object of an endpoint), kept up to
// date from a subscription: snapshot, then enter / change / leave, resets after reconnects.

import type { FlowhubClient, Subscription } from "./client.js";
import type { Condition, FlowEvent, StoredObject } from "./types.js";

export interface LiveCollectionOptions<T> {
  endpoint: string;
  namespace?: string;
  /** A live query; absent: every object of the endpoint. */
  condition?: Condition | string;
  /** The sort key of an object (compared with <); default: its id. Ties are ordered by id. */
  sortKey?: (item: T) => string | number;
  /** A full comparator instead of `sortKey`. */
  compare?: (a: T, b: T) => number;
}

export type CollectionChange<T> =
  | { type: "reset"; items: readonly T[] }
  | { type: "enter" | "change"; item: T; index: number; event: FlowEvent<T> }
  | { type: "leave"; id: string; item?: T; index: number; event: FlowEvent<T> };

export type CollectionListener<T> = (items: readonly T[], change: CollectionChange<T>) => void;

/** RFC 7386 merge patch. */
export function mergePatch(target: any, patch: any): any {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out: any = target !== null && typeof target === "object" && !Array.isArray(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

export class LiveCollection<T extends StoredObject = StoredObject> {
  private readonly byId = new Map<string, T>();
  private list: T[] = [];
  private readonly listeners = new Set<CollectionListener<T>>();
  private readonly cmp: (a: T, b: T) => number;
  private sub?: Subscription<T>;

  private constructor(opts: LiveCollectionOptions<T>) {
    const byId = (a: T, b: T) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    if (opts.compare) {
      const c = opts.compare;
      this.cmp = (a, b) => c(a, b) || byId(a, b);
    } else if (opts.sortKey) {
      const k = opts.sortKey;
      this.cmp = (a, b) => {
        const x = k(a),
          y = k(b);
        return x < y ? -1 : x > y ? 1 : byId(a, b);
      };
    } else this.cmp = byId;
  }

  /** Subscribes with a snapshot and resolves with the filled collection. */
  static async open<T extends StoredObject = StoredObject>(
    client: FlowhubClient,
    opts: LiveCollectionOptions<T>,
    onChange?: CollectionListener<T>,
  ): Promise<LiveCollection<T>> {
    const c = new LiveCollection<T>(opts);
    if (onChange) c.listeners.add(onChange);
    c.sub = await client.subscribe<T>(
      { endpoint: opts.endpoint, namespace: opts.namespace, condition: opts.condition, snapshot: true },
      {
        onEvent: (ev) => c.apply(ev),
        onReset: (info) => c.reset((info.snapshot?.data as T[] | undefined) ?? []),
      },
    );
    c.reset((c.sub.snapshot?.data as T[] | undefined) ?? []);
    return c;
  }

  /** The objects, in order. Replaced (not mutated) on every change. */
  get items(): readonly T[] {
    return this.list;
  }
  get size(): number {
    return this.list.length;
  }
  get(id: string): T | undefined {
    return this.byId.get(id);
  }
  get subscription(): Subscription<T> | undefined {
    return this.sub;
  }
  /** Follows changes; returns a function that stops following. */
  onChange(fn: CollectionListener<T>): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
  async close(): Promise<void> {
    this.listeners.clear();
    await this.sub?.unsubscribe();
  }

  private emit(change: CollectionChange<T>) {
    for (const l of [...this.listeners]) l(this.list, change);
  }

  private reset(items: T[]) {
    this.byId.clear();
    for (const it of items) this.byId.set(it.id, it);
    this.list = [...this.byId.values()].sort(this.cmp);
    this.emit({ type: "reset", items: this.list });
  }

  private indexOf(item: T): number {
    let lo = 0,
      hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.cmp(this.list[mid], item) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private remove(id: string): { item?: T; index: number } {
    const old = this.byId.get(id);
    if (!old) return { index: -1 };
    this.byId.delete(id);
    const i = this.indexOf(old);
    const list = this.list.slice();
    if (list[i] === old) list.splice(i, 1);
    else {
      const j = list.indexOf(old);
      if (j >= 0) list.splice(j, 1);
    }
    this.list = list;
    return { item: old, index: i };
  }

  private apply(ev: FlowEvent<T>) {
    const leaving = ev.live ? ev.live === "leave" : ev.kind === "DELETE";
    if (leaving) {
      const { item, index } = this.remove(ev.objectid);
      if (item) this.emit({ type: "leave", id: ev.objectid, item, index, event: ev });
      return;
    }
    const prev = this.byId.get(ev.objectid);
    const next = (ev.patch ? mergePatch(prev ?? { id: ev.objectid }, ev.data) : ev.data) as T;
    if (!next) return;
    if (prev) this.remove(ev.objectid);
    this.byId.set(next.id ?? ev.objectid, next);
    const index = this.indexOf(next);
    const list = this.list.slice();
    list.splice(index, 0, next);
    this.list = list;
    this.emit({ type: prev ? "change" : "enter", item: next, index, event: ev });
  }
}

export * from "./types.js";
export { FlowhubClient, FlowhubError, Subscription, normalizeUrl } from "./client.js";
export type { ClientOptions, ConnectionState, Encoding, FlowhubErrorKind, WebSocketConstructor, WebSocketLike } from "./client.js";
export { LiveCollection, mergePatch } from "./live.js";
export type { LiveCollectionOptions, CollectionChange, CollectionListener } from "./live.js";
export { encode as encodeMsgpack, decode as decodeMsgpack } from "./msgpack.js";

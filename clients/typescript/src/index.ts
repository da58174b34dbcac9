export * from "./types.js";
export { FlowhubClient, FlowhubError, Subscription, normalizeUrl } from "./client.js";
export type { ClientOptions, ConnectionState, FlowhubErrorKind, WebSocketConstructor, WebSocketLike } from "./client.js";
export { LiveCollection, mergePatch } from "./live.js";
export type { LiveCollectionOptions, CollectionChange, CollectionListener } from "./live.js";

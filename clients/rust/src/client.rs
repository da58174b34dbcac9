//! The [`Client`] handle: calls, providing endpoints, publishing changes, closing.

use std::collections::hash_map::Entry;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{oneshot, watch};

use crate::call::{Call, Publish, Reply};
use crate::config::ClientConfig;
use crate::connection::{self, lock, ConnectionState, Outgoing, Pending, Registration, Shared};
use crate::error::Error;
use crate::provider::{Handler, Provide};
use crate::subscription::{self, Subscribe, Subscription};

/// How much longer than a call's own `timeout` the client waits, so that the hub's
/// `PROVIDER_TIMEOUT` reply (which names the errorid) arrives before the local deadline.
const TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// A connection to a flowhub hub, shared by cheap clones.
///
/// One background task owns the socket: it reconnects with backoff when the connection
/// drops, provides every endpoint again after a reconnect, and multiplexes any number of
/// calls (each reply is matched to its call by `requestid`). Calls in flight when the
/// connection drops fail with [`Error::Disconnected`]; calls made while it is down wait for the
/// next connection, within their timeout.
///
/// The client closes when [`close`](Client::close) is called or the last clone is dropped. A
/// handler that holds a `Client` (to publish, say) keeps it alive: call `close`, or give the
/// handler a [`WeakClient`].
///
/// Must be created inside a Tokio runtime.
///
/// ```no_run
/// use flowhub_client::{Call, Client, ClientConfig};
/// use serde_json::json;
///
/// # async fn demo() -> Result<(), flowhub_client::Error> {
/// let client = Client::connect(ClientConfig::from_env()?).await?;
/// let created = client
///     .call(Call::create("address/address", json!({"city": "Envik", "streetNumber": 6})))
///     .await?;
/// let page = client
///     .call(Call::list("address/address").parameters(json!({"sorting.by": "streetNumber"})))
///     .await?;
/// println!("{} of {:?}: {}", created.data["id"], page.count, page.data);
/// client.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Lives as long as some `Client` clone does; its drop closes the connection.
struct Inner {
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// A handle that does not keep the client open; see [`Client::downgrade`].
#[derive(Clone)]
pub struct WeakClient {
    inner: Weak<Inner>,
}

impl WeakClient {
    /// The client, if it is still open.
    pub fn upgrade(&self) -> Option<Client> {
        self.inner.upgrade().map(|inner| Client { inner })
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.shared.config.url)
            .field("state", &self.state())
            .finish()
    }
}

impl Client {
    /// Connects (and logs in, with user and password) before returning. The first failure is
    /// returned unless `config.wait_for_hub` is set, which keeps trying with backoff; later
    /// losses of the connection are repaired in the background.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let (tx, rx) = oneshot::channel();
        let client = Client::spawn(config, Some(tx));
        match rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Returns at once and connects in the background; calls made meanwhile wait for the
    /// connection (within their timeout).
    pub fn start(config: ClientConfig) -> Client {
        Client::spawn(config, None)
    }

    fn spawn(config: ClientConfig, first: Option<oneshot::Sender<Result<(), Error>>>) -> Client {
        let (shared, out_rx) = Shared::new(config);
        tokio::spawn(connection::drive(shared.clone(), out_rx, first));
        Client {
            inner: Arc::new(Inner { shared }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// A handle that does not keep the client open, for handlers that need the client.
    pub fn downgrade(&self) -> WeakClient {
        WeakClient {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The configuration the client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.shared().config
    }

    /// Where the connection stands now.
    pub fn state(&self) -> ConnectionState {
        *self.shared().state.borrow()
    }

    /// A receiver that sees every change of [`state`](Self::state).
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.shared().state.subscribe()
    }

    /// Waits until the client is connected, at most `timeout`; the connection's epoch.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<u64, Error> {
        let mut rx = self.watch_state();
        let state = match tokio::time::timeout(
            timeout,
            rx.wait_for(|s| !matches!(s, ConnectionState::Connecting)),
        )
        .await
        {
            Err(_) => return Err(Error::Timeout(timeout)),
            Ok(Err(_)) => return Err(Error::Closed),
            Ok(Ok(s)) => *s,
        };
        match state {
            ConnectionState::Connected { epoch } => Ok(epoch),
            _ => Err(Error::Closed),
        }
    }

    /// Makes a call and waits for its reply: `Ok` for `success: true`, [`Error::Hub`] for an
    /// error envelope, or a local error (timeout, lost connection, closed client).
    ///
    /// Calls run concurrently: clone the client or use `futures::future::join_all` and the
    /// replies are matched to their calls whatever order they come back in.
    pub async fn call(&self, call: Call) -> Result<Reply, Error> {
        let wait = call
            .timeout
            .map(|t| t + TIMEOUT_GRACE)
            .unwrap_or(self.shared().config.call_timeout);
        self.request(call.frame(), wait).await
    }

    /// Announces a change to an object this process keeps in its own store, so the hub can
    /// pass it on to subscribers, and waits for the hub's reply. Sends
    ///
    /// ```json
    /// {"type":"publish","requestid":..,"endpoint":..,"namespace":..,"objectid":..,
    ///  "kind":"CREATE|UPDATE|DELETE","data":{..}}
    /// ```
    ///
    /// Only a connection that provides the endpoint may publish for it (the hub answers
    /// `FORBIDDEN` otherwise); the reply's `data.position` is the change's position in the
    /// hub's change sequence (protocol SPEC 11.7). Like a call, a publish in flight when the connection drops fails with
    /// [`Error::Disconnected`] and is not resent.
    pub async fn publish(&self, publish: Publish) -> Result<Reply, Error> {
        let wait = publish.timeout.unwrap_or(self.shared().config.call_timeout);
        self.request(publish.frame(), wait).await
    }

    /// Follows an object, an endpoint or a live query (protocol SPEC section 12) and waits for
    /// the hub to accept; the [`Subscription`] then yields every matching change once, in
    /// commit order.
    ///
    /// **Reconnects.** The subscription outlives the connection: after a reconnect the client
    /// subscribes again with the position of the last event it queued and the hub's epoch, so
    /// the events missed meanwhile come first, with none lost and none twice (events are
    /// deduplicated by position). If the hub cannot do that — a hub with a new data directory
    /// (another epoch), a gap older than the log it keeps, or more than fits its outbound
    /// queue at once (SPEC 12.5) — the subscription yields
    /// [`SubscriptionItem::Reset`](crate::SubscriptionItem::Reset), with the current state
    /// when [`Subscribe::snapshot`] was asked: the application must reload. If the hub refuses
    /// the subscription on the new connection, it yields
    /// [`SubscriptionItem::Ended`](crate::SubscriptionItem::Ended) and ends.
    ///
    /// **Bounds.** At most [`Subscribe::buffer`] events wait for the application. If one more
    /// comes, the client takes the subscription off the hub (the events from there on are
    /// not kept), and subscribes again from the last buffered position as soon as the
    /// application has read the buffer empty: the hub replays what was skipped, so a slow
    /// reader loses nothing and the client's memory stays bounded (a reader so far behind that
    /// the hub cannot replay the gap gets a `Reset`). The socket is never held up by a slow reader,
    /// so calls and other subscriptions keep flowing.
    ///
    /// Errors: the hub's refusal ([`Error::Hub`], e.g. `INVALID_PARAMETERS` for a bad
    /// condition, `FORBIDDEN`), [`Error::Timeout`] after the client's `call_timeout`,
    /// [`Error::Closed`].
    ///
    /// ```no_run
    /// use flowhub_client::{Client, ClientConfig, Subscribe, SubscriptionItem};
    /// use serde_json::json;
    ///
    /// # async fn demo() -> Result<(), flowhub_client::Error> {
    /// let client = Client::connect(ClientConfig::from_env()?).await?;
    /// let mut sub = client
    ///     .subscribe(
    ///         Subscribe::endpoint("address/address")
    ///             .condition(json!({"items": [{"key": "city", "operator": "EQUAL", "value": "Envik"}]}))
    ///             .snapshot(true),
    ///     )
    ///     .await?;
    /// let mut rows = sub.take_snapshot().map(|s| s.data).unwrap_or_default();
    /// while let Some(item) = sub.next().await {
    ///     match item {
    ///         SubscriptionItem::Event(ev) => println!("{:?} {:?} {} at {}", ev.kind, ev.live, ev.objectid, ev.position),
    ///         SubscriptionItem::Reset { snapshot, .. } => {
    ///             // Changes were missed (the hub lost its history): start over from the snapshot.
    ///             rows = snapshot.map(|s| s.data).unwrap_or_default();
    ///         }
    ///         SubscriptionItem::Ended(e) => eprintln!("subscription ended: {e}"),
    ///     }
    /// }
    /// # let _ = rows;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(&self, subscribe: Subscribe) -> Result<Subscription, Error> {
        if self.state() == ConnectionState::Closed {
            return Err(Error::Closed);
        }
        subscription::subscribe(self.shared(), subscribe).await
    }

    /// Sends a frame and waits at most `wait` for its reply.
    async fn request(&self, frame: Map<String, Value>, wait: Duration) -> Result<Reply, Error> {
        request(self.shared(), frame, wait).await
    }

    /// Provides `provide.endpoint` on this connection and every later one, with `handler`
    /// serving its invocations, and waits for the hub's answer (its `data` holds the methods
    /// and the number of providers). Providing an endpoint again replaces the methods and the
    /// handler.
    ///
    /// If the hub refuses, the endpoint is forgotten and the refusal returned. If the answer
    /// does not come within the client's `call_timeout` the result is [`Error::Timeout`] but the
    /// endpoint stays registered: the client provides it on the next connection.
    ///
    /// ```no_run
    /// use flowhub_client::{Answer, Client, ClientConfig, Invocation, Method, Provide};
    /// use serde_json::json;
    ///
    /// # async fn demo() -> Result<(), flowhub_client::Error> {
    /// let client = Client::connect(ClientConfig::from_env()?).await?;
    /// client
    ///     .provide(
    ///         Provide::new("scheduler/queue").methods([Method::Run]),
    ///         |inv: Invocation| async move {
    ///             match inv.data {
    ///                 Some(job) => Answer::ok(json!({"queued": job})),
    ///                 None => Answer::error("INVALID_REQUEST", "RUN needs data"),
    ///             }
    ///         },
    ///     )
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn provide<H: Handler>(&self, provide: Provide, handler: H) -> Result<Reply, Error> {
        self.provide_shared(provide, Arc::new(handler)).await
    }

    /// [`provide`](Self::provide) with a handler that is already shared.
    pub async fn provide_shared(
        &self,
        provide: Provide,
        handler: Arc<dyn Handler>,
    ) -> Result<Reply, Error> {
        let shared = self.shared();
        if self.state() == ConnectionState::Closed {
            return Err(Error::Closed);
        }
        let endpoint = provide.endpoint.clone();
        let (tx, rx) = oneshot::channel();
        {
            let generation = shared
                .next_generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut providers = lock(&shared.providers);
            match providers.entry(endpoint.clone()) {
                Entry::Occupied(mut e) => {
                    let reg = e.get_mut();
                    reg.provide = provide;
                    reg.handler = handler;
                    reg.generation = generation;
                    reg.waiters.push(tx);
                }
                Entry::Vacant(e) => {
                    e.insert(Registration {
                        provide,
                        handler,
                        generation,
                        sent: None,
                        provided: false,
                        waiters: vec![tx],
                    });
                }
            }
        }
        shared
            .out_tx
            .send(Outgoing::Provide { endpoint })
            .await
            .map_err(|_| Error::Closed)?;
        let wait = shared.config.call_timeout;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(wait)),
        }
    }

    /// Stops providing `endpoint`: no new invocation comes to this client, and it is not
    /// provided again after a reconnect. Invocations already running finish and are answered.
    /// Succeeds when the hub confirms, and also when the connection is down (nothing is
    /// provided then) or the hub no longer had it from this connection.
    pub async fn unprovide(&self, endpoint: &str) -> Result<(), Error> {
        let removed = lock(&self.shared().providers).remove(endpoint);
        let had = removed.is_some();
        if let Some(reg) = removed {
            for w in reg.waiters {
                let _ = w.send(Err(Error::Invalid(format!(
                    "{endpoint} was unprovided before the hub answered"
                ))));
            }
        }
        let mut frame = Map::new();
        frame.insert("type".into(), json!("unprovide"));
        frame.insert("endpoint".into(), json!(endpoint));
        match self.request(frame, self.shared().config.call_timeout).await {
            Ok(_) => Ok(()),
            Err(Error::Disconnected) if had => Ok(()),
            Err(e) if had && e.errorcode() == Some("DO_NOT_EXIST") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the hub has accepted `endpoint` from this client on the current connection.
    pub fn is_provided(&self, endpoint: &str) -> bool {
        lock(&self.shared().providers)
            .get(endpoint)
            .is_some_and(|r| r.provided)
    }

    /// The endpoints this client provides (or is about to provide again after a reconnect).
    pub fn provided_endpoints(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.shared().providers).keys().cloned().collect();
        v.sort();
        v
    }

    /// Closes the connection (with a close frame) and waits, at most a few seconds, until the
    /// background task is done. Calls waiting fail with [`Error::Closed`]; running handlers
    /// are aborted. Every clone of the client is closed.
    pub async fn close(&self) {
        self.shared().shutdown.send_replace(true);
        let mut rx = self.watch_state();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| *s == ConnectionState::Closed),
        )
        .await;
    }
}

/// Sends a frame and waits at most `wait` for its reply.
pub(crate) async fn request(
    shared: &Arc<Shared>,
    frame: Map<String, Value>,
    wait: Duration,
) -> Result<Reply, Error> {
    tokio::time::timeout(wait, request_unbounded(shared, frame))
        .await
        .unwrap_or(Err(Error::Timeout(wait)))
}

async fn request_unbounded(
    shared: &Arc<Shared>,
    frame: Map<String, Value>,
) -> Result<Reply, Error> {
    if *shared.state.borrow() == ConnectionState::Closed {
        return Err(Error::Closed);
    }
    let _permit = shared
        .in_flight
        .acquire()
        .await
        .map_err(|_| Error::Closed)?;
    let requestid = shared.next_id();
    let (tx, rx) = oneshot::channel();
    lock(&shared.pending).insert(requestid, Pending::Call { tx, sent: false });
    // Forgets the entry however this future ends (reply, timeout, or the caller dropping
    // it), so the map holds only calls someone still waits for.
    let _forget = Forget {
        shared: shared.clone(),
        requestid,
    };
    shared
        .out_tx
        .send(Outgoing::Request { requestid, frame })
        .await
        .map_err(|_| Error::Closed)?;
    rx.await.unwrap_or(Err(Error::Disconnected))
}

/// Removes a call's `pending` entry when its waiter ends.
struct Forget {
    shared: Arc<Shared>,
    requestid: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.requestid);
    }
}

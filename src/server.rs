//! Starting and stopping a hub: build the store and the dispatcher, serve a listener until a
//! shutdown signal, then drain.
//!
//! [`run`] takes the listener and the shutdown future as arguments, so a test binds port 0
//! and stops the hub when it wants.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::log::MemoryOnly;
use crate::query::Path;
use crate::store::{Store, StoreConfig};
use crate::transport::{self, Hub};

/// Builds the record store the configuration describes.
pub fn build_store(config: &Config) -> Store {
    let indexes = config
        .index
        .iter()
        .map(|(endpoint, fields)| {
            (
                endpoint.clone(),
                fields.iter().filter_map(|f| Path::parse(f)).collect(),
            )
        })
        .collect();
    let store_config = StoreConfig {
        indexes,
        auto_index_min: config.auto_index_min,
    };
    Store::new(store_config, Box::new(MemoryOnly), 0)
}

/// Serves `listener` until `shutdown` resolves, then finishes calls in flight (within the
/// configured grace) and returns.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
    let store = build_store(&config);
    let hub = Hub {
        dispatcher: Dispatcher::new(store, config.max_list_items),
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        force: CancellationToken::new(),
    };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(transport::serve(listener, hub, stop.clone()));
    shutdown.await;
    stop.cancel();
    let _ = serving.await;
}

/// Starts listening for SIGTERM and SIGINT (Ctrl-C) now, and returns a future that resolves
/// on the first of them.
///
/// The handlers are installed before this returns, so a signal that arrives while the hub is
/// still starting (even before the future is first polled) starts a graceful shutdown instead
/// of killing the process. Call it inside the runtime, before announcing the listening address.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received");
        })
    }
}

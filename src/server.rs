//! Starting and stopping a hub: build the store and the dispatcher, serve a listener until a
//! shutdown signal, then drain.
//!
//! [`run`] takes the listener and the shutdown future as arguments, so a test binds port 0
//! and stops the hub when it wants.

use std::fs::File;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::fanout::{Fanout, FanoutConfig};
use crate::log::file::{Durability, FileLog};
use crate::log::recovery::recover;
use crate::log::snapshot::{self, SnapshottingLog};
use crate::log::{Log, LogRecord, MemoryOnly};
use crate::query::Path;
use crate::router::{Deadlines, Router};
use crate::store::{Store, StoreConfig};
use crate::transport::{self, Hub};

/// The hub's state, opened and recovered, ready to serve.
pub struct Opened {
    pub store: Store,
    /// Names this history of positions: kept in the data directory (`EPOCH`), new for a new
    /// directory (and at every start of a memory-only hub).
    pub epoch: String,
    /// Held for the hub's lifetime: a second hub on the same data directory is refused.
    _lock: Option<File>,
    /// The TLS acceptor when `tls_cert` / `tls_key` are set.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Opened {
    /// A hub's state over a store built elsewhere (a test's store over a log that fails on
    /// demand): a new epoch, no data directory lock, no TLS.
    pub fn from_store(store: Store) -> Opened {
        Opened {
            store,
            epoch: uuid::Uuid::new_v4().to_string(),
            _lock: None,
            tls: None,
        }
    }
}

fn store_config(config: &Config) -> StoreConfig {
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
    StoreConfig {
        indexes,
        auto_index_min: config.auto_index_min,
    }
}

/// The durability policy the configuration names (`memory` has no log and no policy).
pub fn durability(config: &Config) -> Option<Durability> {
    match config.durability.as_str() {
        "always" => Some(Durability::Always),
        "interval" => Some(Durability::Interval(config.fsync_interval_ms)),
        "never" => Some(Durability::Never),
        _ => None,
    }
}

/// Locks the data directory against a second hub.
pub fn lock_data_dir(dir: &std::path::Path) -> Result<File, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "the data directory {} is in use by another hub (its LOCK file is held)",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Opens the data directory: lock, read the log back, and start the store where it ended.
/// Damage in the log stops here with a message naming the file and offset.
pub fn open(config: &Config) -> Result<Opened, String> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::transport::tls::acceptor(cert, key)?),
        _ => None,
    };
    let Some(policy) = durability(config) else {
        tracing::warn!("durability = \"memory\": records are lost when the hub stops");
        return Ok(Opened {
            store: Store::new(store_config(config), Box::new(MemoryOnly), 0),
            epoch: uuid::Uuid::new_v4().to_string(),
            _lock: None,
            tls,
        });
    };
    let lock = lock_data_dir(&config.data_dir)?;
    let epoch = epoch(&config.data_dir)?;
    let log_dir = config.data_dir.join("log");
    let snapshot_dir = config.data_dir.join("snapshot");
    let started = std::time::Instant::now();
    snapshot::remove_leftovers(&snapshot_dir)
        .map_err(|e| format!("cannot clean {}: {e}", snapshot_dir.display()))?;
    // The snapshot's entries are decoded on a thread of their own while this one reads the
    // log and then builds the state: a start costs about the larger of the two, not the sum.
    let checked = snapshot::newest_checked(&snapshot_dir)?;
    let (base_seq, snapshot_size) = checked.as_ref().map_or((0, 0), |c| (c.seq, c.size));
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<LogRecord>, String>>(16);
    let decoder = checked.map(|c| {
        std::thread::spawn(move || {
            if let Err(e) = c.decode(4096, |chunk| tx.send(Ok(chunk)).is_ok()) {
                let _ = tx.send(Err(e));
            }
        })
    });
    let recovered = recover(&log_dir, base_seq, false).map_err(|e| e.to_string())?;
    // The log must continue exactly where the snapshot ends: sequence numbers have no gaps.
    if let Some(first) = recovered.records.first() {
        if first.seq != base_seq + 1 {
            return Err(format!(
                "the log in {} continues at sequence {} but the state before it ends at {base_seq}: \
                 log segments are missing; restore a backup",
                log_dir.display(),
                first.seq
            ));
        }
    }
    let from_log = recovered.records.len();
    let last_seq = recovered.last_seq.max(base_seq);
    let file_log = FileLog::open(&log_dir, policy, config.segment_bytes, recovered.tail)
        .map_err(|e| format!("cannot open the log in {}: {e}", log_dir.display()))?
        .with_preallocation(config.preallocate && policy == Durability::Always);
    let log = SnapshottingLog::new(
        file_log,
        snapshot_dir,
        config.snapshot_min_bytes,
        snapshot_size,
    )
    .keep_for_resume(config.resume_log_bytes.unwrap_or(config.snapshot_min_bytes));
    let mut from_snapshot = 0usize;
    let mut damage: Option<String> = None;
    let snapshot_entries = rx.iter().map_while(|chunk| match chunk {
        Ok(c) => {
            from_snapshot += c.len();
            Some(c)
        }
        Err(e) => {
            damage = Some(e);
            None
        }
    });
    let records = snapshot_entries.flatten().chain(recovered.records);
    let store = Store::restore(
        store_config(config),
        Box::new(log) as Box<dyn Log>,
        records,
        last_seq,
    )?;
    if let Some(d) = decoder {
        let _ = d.join();
    }
    if let Some(e) = damage {
        return Err(e);
    }
    tracing::info!(
        from_snapshot,
        from_log,
        last_seq,
        ms = started.elapsed().as_millis() as u64,
        data_dir = %config.data_dir.display(),
        durability = %config.durability,
        "state recovered"
    );
    Ok(Opened {
        store,
        epoch,
        _lock: Some(lock),
        tls,
    })
}

/// The data directory's epoch (`EPOCH`, a UUID), made when the directory has none: a wiped
/// or new directory starts a new history of positions, and subscribers resuming from the
/// old one are told to reload.
pub fn epoch(dir: &std::path::Path) -> Result<String, String> {
    let path = dir.join("EPOCH");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let epoch = uuid::Uuid::new_v4().to_string();
    let tmp = dir.join("EPOCH.tmp");
    std::fs::write(&tmp, format!("{epoch}\n"))
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| crate::log::file::sync_dir(dir))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(epoch)
}

/// Serves `listener` with an opened hub until `shutdown` resolves, then finishes calls in
/// flight (within the configured grace), lets the sequencer commit what is queued, and
/// returns.
pub async fn serve(
    listener: TcpListener,
    opened: Opened,
    config: Config,
    shutdown: impl Future<Output = ()>,
) {
    let Opened {
        store,
        epoch,
        _lock,
        tls,
    } = opened;
    let fanout_config = FanoutConfig {
        resume_window: config.resume_window,
        resume_window_bytes: config.resume_window_bytes,
        max_outbound_bytes: config.max_outbound_bytes,
        max_subscriptions: config.max_subscriptions,
        max_list_items: config.max_list_items,
        // Resume reads the log back past the window; a memory-only hub has none.
        log_dir: durability(&config).map(|_| config.data_dir.join("log")),
    };
    let fanout = match Fanout::start(&store, fanout_config, epoch) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the fan-out thread");
            store.close().await;
            return;
        }
    };
    let auth = crate::auth::Auth::start(&config.auth, store.clone(), &config.data_dir).await;
    let hub = Hub {
        fanout,
        dispatcher: Dispatcher::with_router(
            store.clone(),
            Router::new(Deadlines::from_config(&config)),
            config.max_list_items,
        )
        .with_auth(auth),
        http_rates: transport::address::Rates::new(config.http_requests_per_s_per_address),
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        force: CancellationToken::new(),
    };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(transport::serve(listener, hub, stop.clone(), tls));
    shutdown.await;
    stop.cancel();
    let _ = serving.await;
    store.close().await;
    drop(_lock);
}

/// Opens the data directory and serves `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let opened = open(&config)?;
    serve(listener, opened, config, shutdown).await;
    Ok(())
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

//! `idtrail serve`: wires the pipeline together and runs it until shutdown.
//!
//! Start-up order matters: the listeners come up first (so `/readyz` can say "not yet"), then
//! the WAL is replayed into the writer, and only then are exports accepted. Shutdown runs the
//! other way: stop accepting, let queued WAL commits finish, publish what is buffered.

use std::fs::{self, File};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::BearerKeys;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::extract::Extractor;
use crate::extract::fingerprint::Fingerprinter;
use crate::listener::{self, Peer};
use crate::receiver::admission::{self, Admission};
use crate::receiver::{Ingest, grpc, http};
use crate::telemetry::Telemetry;
use crate::wal::Wal;
use crate::writer::SpanWriter;
use crate::writer::sink::LocalDirSink;

/// Addresses the server actually listens on (port 0 in the config picks a free port).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddresses {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// Holds the data directory against a second collector (or a `restitch`) using it at the same
/// time, until the returned file is dropped.
pub fn lock_data_dir(config: &Config) -> Result<File> {
    let dir = &config.data_dir;
    lock_file_in(
        dir,
        ".lock",
        format!("{} is in use by another idtrail process", dir.display()),
    )
}

/// Holds an exclusive lock on `dir/name` (created, with `dir`, when missing) until the file is
/// dropped; `busy` is the error when another process holds it.
pub(crate) fn lock_file_in(dir: &std::path::Path, name: &str, busy: String) -> Result<File> {
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(name);
    let file =
        File::create(&path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.try_lock().map_err(|_| Error::config(busy))?;
    Ok(file)
}

/// Runs the collector until `shutdown` resolves; `on_bound` learns the listening addresses.
/// `extra_routes` are served on the HTTP port beside OTLP/HTTP (the query API, for one).
pub async fn serve(
    config: Config,
    extra_routes: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(BoundAddresses) + Send,
) -> Result<()> {
    let _lock = lock_data_dir(&config)?;
    let telemetry = Arc::new(Telemetry::new());
    let key_file = config.key_file();
    if let (Ok(key), Ok(data)) = (key_file.canonicalize(), config.data_dir.canonicalize())
        && key.starts_with(&data)
    {
        tracing::warn!(
            key_file = %key_file.display(),
            "the fingerprint key is inside the data directory: whoever has the files has the key"
        );
    }
    let fingerprinter = Fingerprinter::load_or_create(&key_file)?;
    let extractor = Extractor::new(&config, fingerprinter, telemetry.clone())?;

    let grpc_listener = listener::bind(
        config.receivers.grpc_address,
        config.receivers.tls.as_ref(),
        b"h2",
    )
    .await?;
    // axum serves HTTP/1.1 here (OTLP/HTTP exporters use it), so that is all ALPN offers.
    let http_listener = listener::bind(
        config.receivers.http_address,
        config.receivers.tls.as_ref(),
        b"http/1.1",
    )
    .await?;
    let bound = BoundAddresses {
        grpc: grpc_listener.local_addr(),
        http: http_listener.local_addr(),
    };

    // The listeners serve from now on: health and readiness answer during replay, exports are
    // refused as retryable until the WAL is replayed.
    let admission = Arc::new(Admission::new(
        config.receivers.memory_soft_limit_bytes,
        config.receivers.memory_hard_limit_bytes,
        config.wal.max_bytes,
    ));
    let ingest = Arc::new(Ingest::new(
        extractor,
        telemetry.clone(),
        config.receivers.max_request_bytes,
        config.receivers.max_inflight_bytes,
        config.receivers.ack_timeout,
        config
            .receivers
            .auth_keys_file
            .as_deref()
            .map(BearerKeys::load)
            .transpose()?,
        admission.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grpc_server = tonic::transport::Server::builder()
        // Export requests are hundreds of kB; HTTP/2's default 64 KiB windows make each one
        // wait for several window updates.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .layer(tower::util::MapResponseLayer::new(
            grpc::otlp_status_codes::<tonic::body::Body>,
        ))
        .add_service(grpc::service(ingest.clone()))
        .serve_with_incoming_shutdown(grpc_listener, stopped(stop_rx.clone()));
    let http_server = axum::serve(
        http_listener,
        http::router(ingest.clone())
            .merge(extra_routes)
            .into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc_task = tokio::spawn(grpc_server);
    let http_task = tokio::spawn(async move { http_server.await });

    let wal_dir = config.data_dir.join("wal");
    let sink = LocalDirSink::new(&config.data_dir, &config.writer_id);
    sink.remove_abandoned_temp_files(&[
        idtrail_schemas::spans::TABLE,
        idtrail_schemas::chains::TABLE,
        idtrail_schemas::edges::TABLE,
    ])?;
    let mut writer = SpanWriter::new(
        Arc::new(sink),
        wal_dir.clone(),
        &config.writer,
        &config.dedup,
        &config.stitcher,
        telemetry.clone(),
    )?;
    // Reads the files of the last few minutes: after the listeners, so probes answer meanwhile.
    let (ids, revisions) = writer.seed_from_recent_files(config.dedup.window)?;
    tracing::info!(
        ids,
        revisions,
        "dedup window and chain revisions seeded from recent files"
    );
    // A short queue: a writer that falls behind slows WAL commits (and so acknowledgements)
    // instead of holding hundreds of batches in memory.
    let (writer_handle, writer_thread) = writer.spawn(32)?;
    let flusher = writer_handle.clone();
    let shedder = writer_handle.clone();
    let shed_stitch_buffer = move |bytes: u64| {
        shedder.shed_stitch_buffer(usize::try_from(bytes).unwrap_or(usize::MAX));
    };
    admission.spawn_monitor(
        wal_dir.clone(),
        telemetry.clone(),
        shed_stitch_buffer,
        move || {
            let flusher = flusher.clone();
            tokio::spawn(async move {
                // Free pages go back at once, and again once the buffers are published and freed.
                let _ = tokio::task::spawn_blocking(admission::release_free_memory).await;
                if let Err(error) = flusher.flush().await {
                    tracing::warn!(%error, "publishing at the memory hard limit failed");
                }
                let _ = tokio::task::spawn_blocking(admission::release_free_memory).await;
            });
        },
    );

    // Replay happens before any export is accepted; the WAL tells the writer which batches come
    // from the old log (and may already be published).
    let sink_writer = writer_handle.clone();
    let wal_config = config.wal.clone();
    let wal_telemetry = telemetry.clone();
    let started = std::time::Instant::now();
    let wal = tokio::task::spawn_blocking(move || {
        Wal::open(
            &wal_dir,
            &wal_config,
            wal_telemetry,
            Box::new(move |batch, position, replayed| {
                sink_writer.durable(batch, position, replayed)
            }),
        )
    })
    .await
    .map_err(|e| Error::config(format!("WAL replay panicked: {e}")))??;
    // Replayed spans are published before we say ready, so a restart never leaves acknowledged
    // data invisible for longer than one flush.
    writer_handle.flush().await?;
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "WAL replayed"
    );

    ingest.open(wal);
    let compaction = config.compaction.enabled.then(|| {
        tokio::spawn(crate::compact::run_periodically(
            config.clone(),
            telemetry.clone(),
            stop_rx.clone(),
        ))
    });
    tracing::info!(grpc = %bound.grpc, http = %bound.http, data_dir = %config.data_dir.display(), "idtrail ready");
    on_bound(bound);

    shutdown.await;
    tracing::info!("shutting down: draining exports, then publishing buffered spans");
    ingest.set_ready(false);
    let _ = stop_tx.send(true);
    let _ = grpc_task.await;
    let _ = http_task.await;
    // A pass in progress finishes on its blocking thread or is cut short by the exit: either
    // leaves every row visible exactly once.
    drop(compaction);
    let closing = ingest.clone();
    let _ = tokio::task::spawn_blocking(move || closing.close()).await;
    writer_handle.flush().await?;
    drop(writer_handle);
    drop(ingest);
    // The monitor holds a writer handle until it sees admission gone (within one sample).
    drop(admission);
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    tracing::info!("stopped");
    Ok(())
}

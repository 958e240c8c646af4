//! The collector daemon: receive threads → decode/aggregate workers → database writer,
//! plus signals (SIGTERM flushes and exits, SIGHUP reloads exporter settings), the
//! Prometheus endpoint and the periodic STAT line.

pub mod aggregate;
pub mod batch;
pub mod health;
pub mod receive;
pub mod spool;
pub mod stats;
pub mod worker;
pub mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Config, RawConfig};
use crate::decode::Limits;
use receive::ReceiveCounters;
use stats::{GlobalStats, Snapshot};
use worker::{ExporterSettings, SharedSettings, Worker, WorkerConfig, WorkerReport};
use writer::{Writer, WriterMsg};

/// Everything the metrics endpoint and the STAT line read.
#[derive(Debug)]
struct Observed {
    global: Arc<Mutex<GlobalStats>>,
    workers: Vec<Arc<Mutex<WorkerReport>>>,
    receive: Arc<ReceiveCounters>,
    ports: Vec<u16>,
}

impl Observed {
    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            global: self.global.lock().map(|g| g.clone()).unwrap_or_default(),
            ..Default::default()
        };
        s.global.datagrams_received = self.receive.datagrams.load(Ordering::Relaxed);
        s.global.queue_drops = self.receive.queue_drops.load(Ordering::Relaxed);
        s.global.socket_drops = receive::kernel_drops(&self.ports);
        for w in &self.workers {
            if let Ok(r) = w.lock() {
                s.global.open_buckets += r.open_buckets;
                s.global.clock_skewed_flows += r.clock_skewed_flows;
                s.global.templates += r.templates;
                s.exporters
                    .extend(r.exporters.iter().map(|(k, v)| (*k, v.clone())));
            }
        }
        s
    }
}

/// Run the collector until SIGTERM or SIGINT. `config_path` is re-read on SIGHUP.
pub fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let c = &config.collector;
    let mut sockets = Vec::new();
    // A NetFlow socket receives sFlow too (the decoders tell the protocols apart), so an
    // sFlow address that is also a NetFlow one is bound once.
    let sflow: Vec<SocketAddr> = c
        .sflow_listen
        .iter()
        .filter(|a| !c.listen.contains(a))
        .copied()
        .collect();
    for (list, what) in [(&c.listen, "NetFlow v5/v9 and IPFIX"), (&sflow, "sFlow v5")] {
        for addr in list {
            let (socket, buffer) = match receive::bind(*addr, c.receive_buffer_bytes) {
                Ok(bound) => bound,
                // A host with IPv6 disabled still collects IPv4 with the default lists.
                Err(e)
                    if addr.is_ipv6()
                        && list.iter().any(|a| a.is_ipv4())
                        && receive::is_unsupported(&e) =>
                {
                    tracing::warn!(listen = %addr, "IPv6 is not available on this host; not listening there");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let local = socket.local_addr()?;
            tracing::info!(listen = %local, receive_buffer = buffer, "listening for {what}");
            sockets.push(socket);
        }
    }
    let ports: Vec<u16> = sockets
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .map(|a| a.port())
        .collect();
    let spool = spool::Spool::open(&c.data_dir.join("spool"), c.spool_max_bytes)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("flowstage-io")
        .build()
        .context("starting the async runtime")?;

    let global = Arc::new(Mutex::new(GlobalStats::default()));
    let (writer_tx, writer_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = Writer::new(config.database_url.clone(), spool, global.clone());
    let writer_task = runtime.spawn(writer.run(writer_rx));
    let _ = writer_tx.send(WriterMsg::Exporters(
        config.exporters.clone(),
        config.names.precedence.clone(),
    ));

    let settings = Arc::new(SharedSettings::default());
    settings.replace(ExporterSettings::new(
        &config.exporters,
        &c.allowed_exporters,
    ));
    let instance = format!(
        "{:x}-{:x}",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        std::process::id()
    );
    let limits = Limits {
        pending_max_age_ms: c.template_wait_secs as i64 * 1000,
        ..Limits::default()
    };
    let archive = if c.archive {
        let (sender, handle) = crate::archive::ArchiveWriter {
            root: crate::archive::root(&c.data_dir),
            window_secs: i64::try_from(c.archive_rotate_secs).unwrap_or(300),
            block_rows: 128 * 1024,
            block_secs: 30,
            max_bytes: c.archive_max_bytes,
            max_age_days: config.retention.raw_days,
            clock: crate::archive::system_clock(),
        }
        .spawn()
        .context("starting the flow archive")?;
        Some((sender, handle))
    } else {
        None
    };
    let mut worker_txs = Vec::new();
    let mut worker_threads = Vec::new();
    let mut reports = Vec::new();
    for i in 0..c.workers {
        // Bounded twice: 512 batches, and receive::MAX_QUEUED_BYTES of datagrams.
        let (tx, rx) = crossbeam_channel::bounded(512);
        let queued_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let report = Arc::new(Mutex::new(WorkerReport::default()));
        let w = Worker::new(
            WorkerConfig {
                top_n: c.top_n,
                max_keys: c.max_keys_per_bucket,
                grace_secs: c.flush_grace_secs,
                limits,
                batch_prefix: format!("{instance}-{i}"),
                archive: archive.as_ref().map(|(sender, _)| sender.clone()),
            },
            settings.clone(),
            writer_tx.clone(),
            report.clone(),
        );
        worker_threads.push(
            std::thread::Builder::new()
                .name(format!("flowstage-worker-{i}"))
                .spawn({
                    let queued_bytes = queued_bytes.clone();
                    move || w.run(rx, &queued_bytes)
                })?,
        );
        worker_txs.push(receive::WorkerQueue { tx, queued_bytes });
        reports.push(report);
    }
    // Kept for SIGHUP (exporter names); dropped before waiting for the writer to finish.
    let names_tx = writer_tx;

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(ReceiveCounters::default());
    let mut receive_threads = Vec::new();
    for socket in sockets {
        let (txs, stop, counters) = (worker_txs.clone(), stop.clone(), counters.clone());
        receive_threads.push(
            std::thread::Builder::new()
                .name("flowstage-recv".into())
                .spawn(move || receive::receive_loop(socket, txs, stop, counters))?,
        );
    }
    drop(worker_txs);

    let observed = Arc::new(Observed {
        global,
        workers: reports,
        receive: counters,
        ports,
    });
    {
        let observed = observed.clone();
        runtime.spawn(health::run(config.database_url.clone(), move || {
            observed.snapshot()
        }));
    }
    runtime.block_on(async {
        if let Some(addr) = c.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics listener {addr}"))?;
            tracing::info!(%addr, "serving Prometheus metrics");
            tokio::spawn(serve_metrics(listener, observed.clone()));
        }
        wait_for_stop(
            &config,
            config_path.as_deref(),
            &settings,
            &names_tx,
            &observed,
        )
        .await
    })?;
    drop(names_tx);

    tracing::info!("stopping: draining sockets and flushing open buckets");
    stop.store(true, Ordering::Relaxed);
    for t in receive_threads {
        match t.join() {
            Ok(Err(e)) => tracing::error!("receive thread: {e:#}"),
            Err(_) => tracing::error!("receive thread panicked"),
            Ok(Ok(())) => {}
        }
    }
    for t in worker_threads {
        if t.join().is_err() {
            tracing::error!("worker thread panicked");
        }
    }
    if let Some((sender, handle)) = archive {
        let dropped = sender.dropped_flows.load(Ordering::Relaxed);
        drop(sender);
        if handle.join().is_err() {
            tracing::error!("archive thread panicked");
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "flows not archived because the archive fell behind"
            );
        }
    }
    runtime.block_on(writer_task).context("database writer")?;
    tracing::info!("{}", observed.snapshot().stat_line());
    Ok(())
}

async fn wait_for_stop(
    config: &Config,
    config_path: Option<&std::path::Path>,
    settings: &SharedSettings,
    names: &tokio::sync::mpsc::UnboundedSender<WriterMsg>,
    observed: &Observed,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let interval = config.collector.stats_interval_secs;
    let mut stat_timer = tokio::time::interval(Duration::from_secs(interval.max(1)));
    stat_timer.tick().await;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => reload(config_path, settings, names),
            _ = stat_timer.tick(), if interval > 0 => tracing::info!("{}", observed.snapshot().stat_line()),
        }
    }
}

fn reload(
    config_path: Option<&std::path::Path>,
    settings: &SharedSettings,
    names: &tokio::sync::mpsc::UnboundedSender<WriterMsg>,
) {
    let Some(path) = config_path else {
        tracing::info!("SIGHUP: no configuration file to reload");
        return;
    };
    match RawConfig::load(path).and_then(|r| r.validate()) {
        Ok(new) => {
            settings.replace(ExporterSettings::new(
                &new.exporters,
                &new.collector.allowed_exporters,
            ));
            let _ = names.send(WriterMsg::Exporters(
                new.exporters.clone(),
                new.names.precedence.clone(),
            ));
            tracing::info!(
                exporters = new.exporters.len(),
                "SIGHUP: exporter settings reloaded from {}",
                path.display()
            );
        }
        Err(e) => tracing::error!("SIGHUP: keeping the current settings: {e}"),
    }
}

async fn serve_metrics(listener: tokio::net::TcpListener, observed: Arc<Observed>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let observed = observed.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
            let body = observed.snapshot().prometheus();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

/// Parse `--listen` style overrides.
pub fn parse_listen(s: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("--listen {s:?}: expected ADDRESS:PORT"))
}

//! `flowstage-web`: the web daemon. This first version serves what the installer and
//! `status` need: `/healthz` (is the daemon up, can it reach the database) and a
//! landing page; reports, graphs, the JSON API and users build on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use clap::Parser;

use crate::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Debug, Parser)]
#[command(
    name = "flowstage-web",
    version,
    about = "Flowstage web interface and JSON API"
)]
pub struct WebCli {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Listen on ADDRESS:PORT instead of the configured web.listen.
    #[arg(long)]
    pub listen: Option<String>,
    /// Database URL (libpq style), overriding the configuration.
    #[arg(long)]
    pub database: Option<String>,
}

#[derive(Debug)]
struct AppState {
    site: String,
    database_url: String,
}

pub fn web_main(cli: WebCli) -> anyhow::Result<()> {
    let mut config = Config::load_or_default(&cli.config)?;
    if let Some(url) = cli.database {
        config.database_url = url;
    }
    let listen: SocketAddr = match &cli.listen {
        Some(l) => l
            .parse()
            .with_context(|| format!("--listen {l:?}: expected ADDRESS:PORT"))?,
        None => config.web.listen,
    };
    let tls = config
        .web
        .tls_files()
        .map(|(cert, key)| rustls_config(&cert, &key))
        .transpose()?;
    let state = Arc::new(AppState {
        site: config.site.name.clone(),
        database_url: config.database_url.clone(),
    });
    let app = Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if let Some(tls) = tls {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            tracing::info!(%listen, "serving HTTPS");
            return axum_server::bind_rustls(listen, tls)
                .handle(handle)
                .serve(app.into_make_service())
                .await
                .with_context(|| format!("serving HTTPS on {listen}"));
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        tracing::info!(%listen, "serving HTTP");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3, HTTP/1.1) from PEM
/// files.
fn rustls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{}: no certificate in it",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key do not match")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(server),
    ))
}

const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "same-origin"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

async fn index(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let site = html_escape(&state.site);
    (
        SECURITY_HEADERS,
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Flowstage {site}</title></head>\
             <body><h1>Flowstage: {site}</h1><p>The collector is storing flows. Reports are \
             available with <code>flowstage-collector report</code>; health with \
             <code>flowstage-setup status</code> and <a href=\"/healthz\">/healthz</a>.</p></body></html>"
        )),
    )
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let db = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        crate::db::connect(&state.database_url),
    )
    .await;
    let (status, database) = match db {
        Ok(Ok(_)) => (StatusCode::OK, "up".to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout".to_string()),
    };
    (
        status,
        SECURITY_HEADERS,
        axum::Json(serde_json::json!({
            "status": if status == StatusCode::OK { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "database": database,
        })),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

//! `flowstage-web`: the web daemon. Server-rendered pages (login, dashboard, reports
//! with SVG graphs and CSV export) and a JSON API under `/api/v1`, both over the same
//! query code as `flowstage-collector report` and the same access checks: a user sees
//! only the interfaces the database says they may (`flowstage_visible_interfaces`).

pub mod admin;
pub mod api;
pub mod auth;
pub mod calendar;
pub mod flows;
pub mod pages;
pub mod svg;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use tokio_postgres::Client;

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use auth::Identity;

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
pub struct AppState {
    pub site: String,
    database_url: String,
    /// A few connections, used in turn, so one slow report does not hold up logins and
    /// other users (tokio-postgres runs one connection's queries one after another).
    db: Vec<tokio::sync::Mutex<Option<Arc<Client>>>>,
    next_db: std::sync::atomic::AtomicUsize,
    /// argon2 verifications at a time (each takes 19 MiB and a core for a moment).
    pub password_checks: tokio::sync::Semaphore,
    pub throttle: auth::Throttle,
    /// The collector's metrics listener, for exporter health on the dashboard.
    pub collector_metrics: Option<SocketAddr>,
    /// Cookies carry `Secure` when served over TLS.
    pub secure_cookies: bool,
    /// The display time zone and week start (`[history]`) of the navigator and of
    /// the times shown.
    pub calendar: calendar::Calendar,
    /// The collector's flow archive, for drill-down to raw flows (None when off).
    pub archive_root: Option<std::path::PathBuf>,
    pub archive_window_secs: i64,
}

impl AppState {
    /// The shared connection, (re)connected and migrated on demand.
    pub async fn client(&self) -> Result<Arc<Client>, WebError> {
        let i = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.db.len().max(1);
        let Some(slot) = self.db.get(i) else {
            return Err(WebError::Internal(anyhow::anyhow!("no database slots")));
        };
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let mut client = crate::db::connect(&self.database_url)
            .await
            .map_err(WebError::Unavailable)?;
        crate::db::migrate(&mut client)
            .await
            .map_err(WebError::Unavailable)?;
        // No request may keep the database busy for long.
        client
            .batch_execute("SET statement_timeout = '20s'")
            .await
            .map_err(|e| WebError::Unavailable(e.into()))?;
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }
}

type AppStateRef = Arc<AppState>;

/// Errors of a request, each with its status. Internal details go to the log, not to
/// the client.
#[derive(Debug)]
pub enum WebError {
    /// Not logged in: pages redirect to the login, the API answers 401.
    Unauthenticated {
        api: bool,
        next: String,
    },
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    TooManyRequests(u64),
    Unavailable(anyhow::Error),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for WebError {
    fn from(e: anyhow::Error) -> Self {
        WebError::Internal(e)
    }
}

impl From<tokio_postgres::Error> for WebError {
    fn from(e: tokio_postgres::Error) -> Self {
        WebError::Internal(e.into())
    }
}

impl WebError {
    /// Status and message for the client (details of internal errors go to the log).
    fn status_and_message(self) -> (StatusCode, String) {
        match self {
            WebError::Unauthenticated { .. } => (
                StatusCode::UNAUTHORIZED,
                "log in or send an API token".to_string(),
            ),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            WebError::TooManyRequests(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed logins: try again in {secs} s"),
            ),
            WebError::Unavailable(e) => {
                tracing::warn!("database unavailable: {e:#}");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is not reachable right now".to_string(),
                )
            }
            WebError::Internal(e) => {
                tracing::error!("request failed: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (see the web daemon's log)".to_string(),
                )
            }
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let retry = match &self {
            WebError::Unauthenticated { api: false, next } => {
                return Redirect::to(&format!("/login?next={}", view::encode(next))).into_response()
            }
            WebError::TooManyRequests(secs) => Some(*secs),
            _ => None,
        };
        let (status, message) = self.status_and_message();
        let mut r = (status, pages::error_page(status, &message)).into_response();
        if let Some(v) = retry.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// An API error: the same statuses as the pages, as JSON `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub WebError);

impl<E: Into<WebError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.0.status_and_message();
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// The logged-in user of a page request (session cookie).
#[derive(Debug)]
pub struct PageUser(pub Identity);

/// The user of an API request (session cookie or `Authorization: Bearer`).
#[derive(Debug)]
pub struct ApiUser(pub Identity);

async fn identity(parts: &Parts, state: &AppState, api: bool) -> Result<Identity, WebError> {
    let next = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let unauthenticated = || WebError::Unauthenticated {
        api,
        next: next.clone(),
    };
    if api {
        if let Some(token) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            let client = state.client().await?;
            return auth::api_token(&client, token.trim())
                .await?
                .ok_or_else(unauthenticated);
        }
    }
    let Some(token) = auth::cookie(&parts.headers, auth::SESSION_COOKIE) else {
        return Err(unauthenticated());
    };
    let client = state.client().await?;
    auth::session(&client, &token)
        .await?
        .ok_or_else(unauthenticated)
}

impl FromRequestParts<AppStateRef> for PageUser {
    type Rejection = WebError;
    async fn from_request_parts(parts: &mut Parts, state: &AppStateRef) -> Result<Self, WebError> {
        identity(parts, state, false).await.map(PageUser)
    }
}

impl FromRequestParts<AppStateRef> for ApiUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppStateRef) -> Result<Self, ApiError> {
        identity(parts, state, true)
            .await
            .map(ApiUser)
            .map_err(ApiError)
    }
}

/// Security headers on every response: a CSP without inline script or style, no
/// framing, no sniffing, no referrer leaks.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    res
}

pub fn router(state: AppStateRef) -> Router {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/report", get(pages::report))
        .route("/report.csv", get(pages::report_csv))
        .route("/interface", get(pages::interface_page))
        .route("/flows", get(flows::page))
        .route("/graph.svg", get(pages::graph_svg))
        .route("/graph.png", get(pages::graph_png))
        .route("/static/style.css", get(pages::stylesheet))
        .route("/static/zoom.js", get(pages::zoom_script))
        .route("/admin/users", get(admin::users_page))
        .route("/admin/users/add", post(admin::add_user))
        .route("/admin/users/disable", post(admin::disable_user))
        .route("/admin/users/role", post(admin::set_role))
        .route("/admin/users/enable", post(admin::enable_user))
        .route("/admin/grants/add", post(admin::add_grant))
        .route("/admin/grants/revoke", post(admin::revoke_grant))
        .route("/admin/tokens/add", post(admin::add_token))
        .route("/admin/tokens/revoke", post(admin::revoke_token))
        .route("/admin/groups", get(admin::groups_page))
        .route("/admin/groups/add", post(admin::add_group))
        .route("/admin/groups/member", post(admin::add_member))
        .route("/admin/audit", get(admin::audit_page))
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/api/v1/me", get(api::me))
        .route("/api/v1/exporters", get(api::exporters))
        .route("/api/v1/alerts", get(api::alerts))
        .route("/api/v1/counters", get(api::counters))
        .route("/api/v1/interfaces", get(api::interfaces))
        .route("/api/v1/report", get(api::report))
        .route("/api/v1/series", get(api::series))
        .route("/api/v1/flows", get(flows::api_flows))
        .fallback(|| async { WebError::NotFound("no such page".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
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
        db: (0..4).map(|_| tokio::sync::Mutex::new(None)).collect(),
        next_db: std::sync::atomic::AtomicUsize::new(0),
        password_checks: tokio::sync::Semaphore::new(2),
        throttle: auth::Throttle::default(),
        collector_metrics: config.collector.metrics,
        secure_cookies: tls.is_some(),
        archive_root: config
            .collector
            .archive
            .then(|| crate::archive::root(&config.collector.data_dir)),
        archive_window_secs: i64::try_from(config.collector.archive_rotate_secs).unwrap_or(300),
        calendar: calendar::Calendar::new(&config.history.timezone, config.history.week_start),
    });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
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
                .serve(app)
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

async fn healthz(State(state): State<AppStateRef>) -> Response {
    let db = tokio::time::timeout(std::time::Duration::from_secs(3), state.client()).await;
    let (status, database) = match db {
        Ok(Ok(_)) => (StatusCode::OK, "up".to_string()),
        Ok(Err(WebError::Unavailable(e))) => {
            tracing::warn!("health check: database unavailable: {e:#}");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable".to_string())
        }
        Ok(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "error".to_string()),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout".to_string()),
    };
    (
        status,
        axum::Json(serde_json::json!({
            "status": if status == StatusCode::OK { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "database": database,
        })),
    )
        .into_response()
}

/// The client's address, for login throttling.
pub fn client_address(info: &Option<ConnectInfo<SocketAddr>>) -> String {
    info.as_ref()
        .map(|ConnectInfo(a)| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Does this user see the exporter (and interface) a view is scoped to? Admins see
/// everything; for others an unknown or ungranted scope is "not found", so nothing
/// about its existence leaks.
pub async fn check_scope(
    client: &Client,
    who: &Identity,
    exporter: Option<&str>,
    interface: Option<&str>,
) -> Result<(), WebError> {
    check_scope_in_group(client, who, exporter, interface, None).await
}

/// [`check_scope`] with an interface group as part of the scope.
pub async fn check_scope_in_group(
    client: &Client,
    who: &Identity,
    exporter: Option<&str>,
    interface: Option<&str>,
    group: Option<&str>,
) -> Result<(), WebError> {
    if let Some(g) = group {
        let members: i64 = client
            .query_one(
                "SELECT count(*) FROM interface_group_members m
                 JOIN interface_groups g ON g.id = m.group_id
                 WHERE g.name = $1
                   AND ($2::int IS NULL OR (m.exporter_id, m.ifindex) IN
                        (SELECT v.exporter_id, v.ifindex FROM flowstage_visible_interfaces($2) v))",
                &[&g, &restriction(who)],
            )
            .await?
            .get(0);
        if members == 0 {
            return Err(WebError::NotFound("no such interface group for you".into()));
        }
    }
    if who.role == crate::users::Role::Admin || (exporter.is_none() && interface.is_none()) {
        return Ok(());
    }
    let visible: i64 = client
        .query_one(
            "SELECT count(*) FROM flowstage_visible_interfaces($1) v
             JOIN exporters e ON e.id = v.exporter_id
             LEFT JOIN interfaces i ON i.exporter_id = v.exporter_id AND i.ifindex = v.ifindex
             WHERE ($2::text IS NULL OR e.name = $2 OR host(e.address) = $2)
               AND ($3::text IS NULL OR v.ifindex::text = $3 OR i.name = $3 OR i.description = $3)",
            &[&who.user_id, &exporter, &interface],
        )
        .await?
        .get(0);
    if visible == 0 {
        return Err(WebError::NotFound(
            "no such exporter or interface for you".into(),
        ));
    }
    Ok(())
}

/// A report view from its URL: parsed, its scope checked against the user's grants,
/// and run restricted to them (pages and API alike).
pub async fn run_view(
    state: &AppState,
    who: &Identity,
    params: &view::ViewParams,
) -> Result<(view::View, crate::report::Report, Arc<Client>), WebError> {
    let view = view::View::parse(params, chrono::Utc::now()).map_err(WebError::BadRequest)?;
    let client = state.client().await?;
    check_scope_in_group(
        &client,
        who,
        view.exporter.as_deref(),
        view.interface.as_deref(),
        view.group.as_deref(),
    )
    .await?;
    let r = crate::report::run(&client, &view.query(restriction(who))).await?;
    Ok((view, r, client))
}

/// The user id to restrict queries to (None for admins).
pub fn restriction(who: &Identity) -> Option<i32> {
    (who.role != crate::users::Role::Admin).then_some(who.user_id)
}

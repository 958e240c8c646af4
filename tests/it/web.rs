//! `flowstage-web` against a real database with real traffic: `/healthz` over HTTP and
//! HTTPS; login, CSRF, throttling, session expiry and logout; the API's numbers equal
//! the generator's; an authorization matrix over every page and endpoint; and hostile
//! parameters never cause a 5xx.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowstage::encode::EncodeProtocol;
use flowstage::gen::{self, GenOptions};

use crate::support::{expected_rows, free_tcp_port, Collector, Pg};

struct Web(Child);

impl Drop for Web {
    fn drop(&mut self) {
        let _ = crate::support::sigterm_and_wait(&mut self.0);
    }
}

fn start(config: &str, database: &str) -> (Web, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let config_path = dir.path().join("flowstage.toml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_flowstage-web"))
        .arg("--config")
        .arg(&config_path)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            database,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "flowstage-web did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Web(child), port, dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")))
            .map(|v| v.split(';').next().unwrap_or("").to_string())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A browser-like client: no redirects followed, cookies sent as given.
fn request(
    method: &str,
    url: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    bearer: Option<&str>,
) -> Answer {
    runtime().block_on(async {
        // Plain HTTP here; reqwest still wants a TLS provider to exist.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut req = match method {
            "POST" => client.post(url),
            _ => client.get(url),
        };
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(f) = form {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(f.to_string());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Answer {
            status,
            body: r.text().await.unwrap(),
            headers,
        }
    })
}

fn get(url: &str, cookie: Option<&str>) -> Answer {
    request("GET", url, cookie, None, None)
}

fn form_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

fn enc(s: &str) -> String {
    flowstage::web::view::encode(s)
}

/// Log in; returns the session cookie ("fs_session=...").
#[allow(clippy::result_large_err)] // a test helper; the error is the whole answer
fn login(base: &str, user: &str, password: &str) -> Result<String, Answer> {
    let page = get(&format!("{base}/login?next=/"), None);
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = form_value(&page.body, "csrf");
    let login_cookie = page.cookie("fs_login_csrf").expect("login CSRF cookie");
    let r = request(
        "POST",
        &format!("{base}/login"),
        Some(&format!("fs_login_csrf={login_cookie}")),
        Some(&format!(
            "csrf={csrf}&next=%2F&user={}&password={}",
            enc(user),
            enc(password)
        )),
        None,
    );
    match (r.status, r.cookie("fs_session")) {
        (303, Some(session)) => Ok(format!("fs_session={session}")),
        _ => Err(r),
    }
}

/// Every value of every step of a series answer.
fn series_sum(series: &serde_json::Value) -> u64 {
    series["points"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["values"].as_array().unwrap().iter())
        .map(|v| v.as_u64().unwrap())
        .sum()
}

pub fn add_user(url: &str, name: &str, role: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowstage-setup"))
        .args([
            "--config",
            "/dev/null",
            "--database",
            url,
            "users",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    assert!(child.wait().unwrap().success());
}

fn setup_users(url: &str, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_flowstage-setup"))
        .args(["--config", "/dev/null", "--database", url, "users"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn healthz_over_http_with_security_headers() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("web_http");
    let (_web, port, _dir) = start("[site]\nname = \"lab-1\"\n[web]\ntls = \"off\"\n", &url);
    let r = get(&format!("http://127.0.0.1:{port}/healthz"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["database"], "up");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(r.headers["referrer-policy"], "same-origin");
    // Pages need a login.
    let r = get(&format!("http://127.0.0.1:{port}/"), None);
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/login?next=%2F");
}

#[test]
fn healthz_says_when_the_database_is_away() {
    let (_web, port, _dir) = start(
        "[web]\ntls = \"off\"\n",
        "postgresql:///nothing?host=/nonexistent&connect_timeout=1",
    );
    let r = get(&format!("http://127.0.0.1:{port}/healthz"), None);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("\"degraded\""), "{}", r.body);
}

#[test]
fn healthz_over_https_with_a_configured_certificate() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("web_https");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), cert.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[web]\ntls = \"files\"\ntls_cert = \"{0}/c.pem\"\ntls_key = \"{0}/k.pem\"\n",
        dir.path().display()
    );
    let (_web, port, _dir) = start(&config, &url);
    let (status, body) = runtime().block_on(async {
        let client = flowstage::setup::status::http_client(Duration::from_secs(5)).unwrap();
        let r = client
            .get(format!("https://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"database\":\"up\""), "{body}");
}

#[test]
fn login_csrf_throttling_expiry_and_logout() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("web_login");
    let (_web, port, _dir) = start("[web]\ntls = \"off\"\n", &url);
    let base = format!("http://127.0.0.1:{port}");
    // The web daemon migrates on first use; wait until it has.
    assert_eq!(get(&format!("{base}/healthz"), None).status, 200);
    add_user(&url, "ops", "viewer", "the right password");

    // A form without the matching cookie is refused.
    let page = get(&format!("{base}/login"), None);
    let csrf = form_value(&page.body, "csrf");
    let r = request(
        "POST",
        &format!("{base}/login"),
        Some("fs_login_csrf=somethingelse"),
        Some(&format!("csrf={csrf}&user=ops&password=the+right+password")),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);

    // The page after login is on this site, whatever `next` says.
    for next in [
        "//evil.example/",
        "/\t/evil.example",
        "https://evil.example/",
        "/\r\nSet-Cookie:x=1",
    ] {
        let page = get(&format!("{base}/login"), None);
        let csrf = form_value(&page.body, "csrf");
        let cookie = page.cookie("fs_login_csrf").unwrap();
        let r = request(
            "POST",
            &format!("{base}/login"),
            Some(&format!("fs_login_csrf={cookie}")),
            Some(&format!(
                "csrf={csrf}&next={}&user=ops&password=the+right+password",
                enc(next)
            )),
            None,
        );
        assert_eq!(r.status, 303, "{next}: {}", r.body);
        assert_eq!(r.headers["location"], "/", "{next}");
    }
    let wrong = login(&base, "ops", "wrong").unwrap_err();
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("wrong user name or password"));
    let session = login(&base, "ops", "the right password").unwrap();
    let dash = get(&format!("{base}/"), Some(&session));
    assert_eq!(dash.status, 200, "{}", dash.body);
    assert!(dash.body.contains("Last 24 hours") && dash.body.contains("ops (viewer)"));
    let hash = pg.psql(&db, "SELECT token_hash FROM web_sessions");
    assert!(!session.contains(&hash), "only a hash is stored");

    // Logout needs the session's CSRF token.
    let csrf = form_value(&dash.body, "csrf");
    let r = request(
        "POST",
        &format!("{base}/logout"),
        Some(&session),
        Some("csrf=nope"),
        None,
    );
    assert_eq!(r.status, 403);
    let r = request(
        "POST",
        &format!("{base}/logout"),
        Some(&session),
        Some(&format!("csrf={csrf}")),
        None,
    );
    assert_eq!(r.status, 303);
    assert_eq!(
        get(&format!("{base}/"), Some(&session)).status,
        303,
        "session ended"
    );

    // Expiry: a session past its time is gone.
    let session = login(&base, "ops", "the right password").unwrap();
    assert_eq!(get(&format!("{base}/"), Some(&session)).status, 200);
    pg.psql(
        &db,
        "UPDATE web_sessions SET expires_at = now() - interval '1 second'",
    );
    assert_eq!(get(&format!("{base}/"), Some(&session)).status, 303);
    assert_eq!(
        get(&format!("{base}/api/v1/me"), Some(&session)).status,
        401
    );

    // Throttling: after 5 failures even the right password waits.
    for _ in 0..5 {
        assert_eq!(login(&base, "ops", "guess").unwrap_err().status, 401);
    }
    let r = login(&base, "ops", "the right password").unwrap_err();
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    // Disabled users cannot log in.
    add_user(&url, "gone", "viewer", "another password");
    setup_users(&url, &["disable", "gone"]);
    assert_eq!(
        login(&base, "gone", "another password").unwrap_err().status,
        401
    );

    let audit = pg.psql(
        &db,
        "SELECT string_agg(action, ',' ORDER BY id) FROM audit_log WHERE action LIKE 'log%'",
    );
    assert!(
        audit.starts_with(
            "login.ok,login.ok,login.ok,login.ok,login.fail,login.ok,logout,login.ok,login.fail"
        ),
        "{audit}"
    );
}

#[test]
fn numbers_and_authorization_matrix() {
    let pg = Pg::shared();
    let (_db, url) = pg.create_database("web_matrix");
    let data = crate::support::data_dir("web_matrix");
    let collector = Collector::start(&url, data.path(), &[]);
    let opts = GenOptions {
        seed: 7,
        flows: 4000,
        rate: Some(100_000),
        exporters: 2,
        first_source: 30,
        ..GenOptions::new(EncodeProtocol::Ipfix, collector.target())
    };
    let expected = gen::run(&opts, |_| {}).unwrap();
    let (status, _) = collector.terminate();
    assert!(status.success());
    let by_exporter = expected_rows(&expected, "exporter");
    let granted = "127.0.0.30";
    let hidden = "127.0.0.31";
    assert!(
        by_exporter.contains_key(granted) && by_exporter.contains_key(hidden),
        "{by_exporter:?}"
    );

    // The web daemon reads the collector's archive for drill-down to raw flows.
    let (_web, port, _dir) = start(
        &format!(
            "[web]\ntls = \"off\"\n\n[collector]\ndata_dir = \"{}\"\n",
            data.path().display()
        ),
        &url,
    );
    let base = format!("http://127.0.0.1:{port}");
    add_user(&url, "boss", "admin", "admin password 1");
    add_user(&url, "cust", "viewer", "viewer password 1");
    setup_users(&url, &["grant", "cust", "--exporter", granted]);
    let token_line = setup_users(&url, &["token", "cust", "script"]);
    let token = token_line.trim().rsplit(' ').next().unwrap().to_string();
    let admin = login(&base, "boss", "admin password 1").unwrap();
    let viewer = login(&base, "cust", "viewer password 1").unwrap();
    let period = "from=-1d&to=%2B1h";

    // Numbers: the API's totals are the generator's, exactly.
    let all = get(
        &format!("{base}/api/v1/report?by=exporter&top=100&{period}"),
        Some(&admin),
    )
    .json();
    let t = &all["total"];
    assert_eq!(
        (
            t["bytes"].as_u64().unwrap(),
            t["packets"].as_u64().unwrap(),
            t["flows"].as_u64().unwrap()
        ),
        (
            expected.total.bytes,
            expected.total.packets,
            expected.total.flows
        )
    );
    for proto in ["dst-port", "proto"] {
        let v = get(
            &format!("{base}/api/v1/report?by={proto}&top=1000&{period}"),
            Some(&admin),
        )
        .json();
        let rows = crate::support::report_rows(&v);
        assert_eq!(rows, expected_rows(&expected, proto), "{proto}");
    }
    // The viewer (by session and by token) sees exactly the granted exporter's traffic.
    let want = by_exporter[granted];
    for (cookie, bearer) in [(Some(viewer.as_str()), None), (None, Some(token.as_str()))] {
        let v = request(
            "GET",
            &format!("{base}/api/v1/report?by=total&{period}"),
            cookie,
            None,
            bearer,
        )
        .json();
        assert_eq!(v["total"]["flows"].as_u64().unwrap(), want.2, "{v}");
        assert_eq!(v["total"]["bytes"].as_u64().unwrap(), want.0, "{v}");
        let ex = request(
            "GET",
            &format!("{base}/api/v1/exporters"),
            cookie,
            None,
            bearer,
        )
        .json();
        let addrs: Vec<&str> = ex
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["address"].as_str().unwrap())
            .collect();
        assert_eq!(addrs, [granted]);
    }
    // The graph's data stacks up to the same totals.
    let s = get(
        &format!("{base}/api/v1/series?by=exporter&{period}"),
        Some(&admin),
    )
    .json();
    let stacked = series_sum(&s);
    assert_eq!(stacked, expected.total.bytes, "{s}");
    let p = get(
        &format!("{base}/api/v1/series?by=proto&unit=packets&{period}"),
        Some(&admin),
    )
    .json();
    assert_eq!(p["measure"], "packets");
    let packets = series_sum(&p);
    assert_eq!(packets, expected.total.packets);
    let svg = get(
        &format!("{base}/graph.svg?by=exporter&{period}"),
        Some(&admin),
    );
    assert_eq!(svg.headers["content-type"], "image/svg+xml");
    assert!(
        svg.body.starts_with("<svg") && svg.body.contains(granted) && svg.body.contains("bit/s")
    );
    let png = runtime().block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
            .get(format!("{base}/graph.png?by=exporter&{period}"))
            .header("cookie", &admin)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // The rendered table shows the same total.
    let page = get(
        &format!("{base}/report?by=exporter&{period}"),
        Some(&viewer),
    );
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&format!("<th>{}</th>", want.0)),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains(hidden),
        "the hidden exporter leaked into the page"
    );
    // An interface with a known speed shows how full it was.
    pg.psql(
        &_db,
        &format!("UPDATE interfaces SET speed_bps = 1000000000 WHERE ifindex = 1 AND exporter_id = (SELECT id FROM exporters WHERE host(address) = '{granted}')"),
    );
    let one = get(
        &format!("{base}/report?exporter={granted}&interface=1&by=dst-port&{period}"),
        Some(&viewer),
    );
    assert_eq!(one.status, 200, "{}", one.body);
    assert!(
        one.body.contains("% of the interface speed (1.00 Gbit/s)"),
        "{}",
        one.body
    );
    // Compared with the day before, which had no traffic.
    assert!(page.body.contains("<th>bytes, previous period</th>"));
    assert!(page.body.contains("<td>new</td>"), "{}", page.body);
    let csv = get(
        &format!("{base}/report.csv?by=exporter&{period}"),
        Some(&viewer),
    );
    assert_eq!(csv.status, 200);
    assert!(
        csv.body.contains(granted) && !csv.body.contains(hidden),
        "{}",
        csv.body
    );

    // Drill-down to raw flows: a report row's flows are exactly its numbers, and a
    // viewer's flows are only the granted exporter's.
    let ports = expected_rows(&expected, "dst-port");
    let (port_key, port_sums) = ports.iter().max_by_key(|(_, t)| t.2).unwrap();
    let v = get(
        &format!("{base}/api/v1/flows?by=dst-port&key={port_key}&limit=1000&{period}"),
        Some(&admin),
    )
    .json();
    let listed = v["flows"].as_array().unwrap();
    assert_eq!(v["matched"].as_u64().unwrap(), listed.len() as u64);
    let sum = |k: &str| listed.iter().map(|f| f[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        (sum("bytes"), sum("packets"), sum("flows")),
        *port_sums,
        "flows of dst port {port_key}"
    );
    assert!(listed
        .iter()
        .all(|f| f["dst_port"].as_u64().unwrap().to_string() == *port_key));
    for (cookie, bearer) in [(Some(viewer.as_str()), None), (None, Some(token.as_str()))] {
        let mine = request(
            "GET",
            &format!("{base}/api/v1/flows?limit=1000&{period}"),
            cookie,
            None,
            bearer,
        )
        .json();
        assert_eq!(
            mine["matched"].as_u64().unwrap(),
            by_exporter[granted].2,
            "{mine}"
        );
        assert!(mine["flows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["exporter"] == granted));
        let theirs = request(
            "GET",
            &format!("{base}/api/v1/flows?by=exporter&key={hidden}&{period}"),
            cookie,
            None,
            bearer,
        )
        .json();
        assert_eq!(theirs["matched"], 0, "{theirs}");
    }
    let page = get(&format!("{base}/report?by=dst-port&{period}"), Some(&admin));
    assert!(
        page.body.contains("/flows?by=dst-port&amp;from=")
            && page.body.contains(&format!("key={port_key}")),
        "no flows links"
    );
    let flows_page = get(
        &format!("{base}/flows?by=dst-port&key={port_key}&{period}"),
        Some(&admin),
    );
    assert_eq!(flows_page.status, 200);
    assert!(
        flows_page
            .body
            .contains(&format!("{} flows matched", port_sums.2)),
        "{}",
        flows_page.body
    );

    // The matrix: every page and endpoint, scoped to the hidden exporter, for the
    // viewer (session and token): 404 and no data; for the admin: 200.
    let scoped = [
        "/report",
        "/report.csv",
        "/graph.svg",
        "/graph.png",
        "/interface",
        "/flows",
        "/api/v1/report",
        "/api/v1/series",
        "/api/v1/flows",
    ];
    for path in scoped {
        let url_hidden = format!("{base}{path}?exporter={hidden}&interface=1&by=dst-port&{period}");
        for (cookie, bearer) in [(Some(viewer.as_str()), None), (None, Some(token.as_str()))] {
            if bearer.is_some() && !path.starts_with("/api") {
                continue;
            }
            let r = request("GET", &url_hidden, cookie, None, bearer);
            assert_eq!(r.status, 404, "{path} for the viewer: {}", r.body);
            assert!(
                !r.body.contains("bytes\":") && !r.body.contains(hidden),
                "{path} leaked: {}",
                r.body
            );
        }
        assert_eq!(
            get(&url_hidden, Some(&admin)).status,
            200,
            "{path} for the admin"
        );
        // Nobody logged in: pages send to the login, the API says 401.
        let anon = get(&url_hidden, None);
        let want = if path.starts_with("/api") { 401 } else { 303 };
        assert_eq!(anon.status, want, "{path} anonymous");
    }
    for path in ["/api/v1/exporters", "/api/v1/interfaces", "/api/v1/me"] {
        assert_eq!(get(&format!("{base}{path}"), None).status, 401, "{path}");
        assert_eq!(
            get(&format!("{base}{path}"), Some(&admin)).status,
            200,
            "{path}"
        );
    }
    let r = get(
        &format!("{base}/api/v1/interfaces?exporter={hidden}"),
        Some(&viewer),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    // An interface registered after the grant is visible without re-granting.
    pg.psql(
        &_db,
        &format!("INSERT INTO interfaces (exporter_id, ifindex) SELECT id, 4242 FROM exporters WHERE host(address) = '{granted}'"),
    );
    let list = get(&format!("{base}/api/v1/interfaces"), Some(&viewer)).json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|i| i["ifindex"] == 4242),
        "{list}"
    );

    // Hostile parameters: client errors, never a 5xx.
    let garbage = [
        "by=%00",
        "by=DROP%20TABLE",
        "top=-1",
        "top=99999999999999999999",
        "from=%FF%FE",
        "to=-1000000w",
        "from=2026-13-45",
        "direction=sideways",
        "exporter=%27%3B--",
        "interface=%25%25%25",
        "points=0",
        "from=now&to=now",
        "exporter=",
        "top=1e3",
        "by=src-ip&top=1000&from=-3000d",
    ];
    for path in [
        "/report",
        "/report.csv",
        "/graph.svg",
        "/flows",
        "/api/v1/report",
        "/api/v1/series",
        "/api/v1/interfaces",
        "/api/v1/flows",
    ] {
        for q in garbage {
            let r = get(&format!("{base}{path}?{q}"), Some(&admin));
            assert!(
                r.status < 500,
                "{path}?{q} answered {}: {}",
                r.status,
                r.body
            );
        }
    }
    // Property: random parameters (names and values, hostile bytes included) on every
    // endpoint give an answer below 500, and pages stay small.
    let mut rng = flowstage::gen::SplitMix64::new(2026);
    let names = [
        "by",
        "exporter",
        "interface",
        "group",
        "direction",
        "from",
        "to",
        "top",
        "unit",
        "rank",
        "points",
        "key",
        "limit",
        "x",
    ];
    let alphabet: Vec<char> = "abcz09-_:.+/%&=?#' \"<>;\\éß\u{0}\u{7f}\u{2028}€dhmsw"
        .chars()
        .collect();
    let endpoints = [
        "/",
        "/report",
        "/report.csv",
        "/graph.svg",
        "/api/v1/report",
        "/api/v1/series",
        "/api/v1/interfaces",
        "/api/v1/exporters",
        "/api/v1/flows",
        "/api/v1/alerts",
        "/api/v1/counters",
        "/interface",
        "/flows",
        "/admin/users",
        "/admin/audit",
    ];
    for _ in 0..400 {
        let path = endpoints[rng.below(endpoints.len() as u64) as usize];
        let mut query = Vec::new();
        for _ in 0..=rng.below(4) {
            let name = names[rng.below(names.len() as u64) as usize];
            let long = rng.below(10) == 0;
            let len = rng.below(if long { 300 } else { 12 });
            let value: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect();
            query.push(format!("{name}={}", enc(&value)));
        }
        let url = format!("{base}{path}?{}", query.join("&"));
        let r = get(&url, Some(&admin));
        assert!(r.status < 500, "{url} answered {}: {}", r.status, r.body);
    }
    // Exporters registered from their flows and not named yet say so.
    let dashboard = get(&format!("{base}/"), Some(&admin)).body;
    assert!(
        dashboard.contains(&format!(
            "{granted}</a> <small class=\"unnamed\">unnamed</small>"
        )),
        "{dashboard}"
    );
    for path in ["/", "/report?by=dst-ip&top=1000&from=-1d", "/admin/users"] {
        let r = get(&format!("{base}{path}"), Some(&admin));
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.body.len() < 200 * 1024,
            "{path} is {} bytes",
            r.body.len()
        );
        // No inline script (the CSP would refuse it); at most the optional zoom script.
        assert_eq!(
            r.body.matches("<script").count(),
            r.body.matches("<script src=\"/static/zoom.js\"").count(),
            "{path}"
        );
    }
    // Dates at the edges of the calendar are refused, not overflowed.
    for q in [
        "from=%2B262142-12-01&to=%2B262142-12-30",
        "from=-360000w&to=-359999w",
        "from=1969-12-31&to=1970-01-02",
    ] {
        for path in ["/report", "/api/v1/report", "/graph.svg"] {
            let r = get(&format!("{base}{path}?{q}"), Some(&admin));
            assert_eq!(r.status, 400, "{path}?{q}: {}", r.body);
        }
    }
    // API errors are JSON, as the OpenAPI document says.
    let r = get(
        &format!("{base}/api/v1/report?exporter={hidden}"),
        Some(&viewer),
    );
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().is_some(), "{}", r.body);
    assert!(get(&format!("{base}/api/v1/me"), None).json()["error"].is_string());
    // The viewer's dashboard and exporter list do not mention the hidden exporter, and
    // narrowing by interface or group does not reach it either.
    let dash = get(&format!("{base}/"), Some(&viewer));
    assert_eq!(dash.status, 200);
    assert!(
        dash.body.contains(granted) && !dash.body.contains(hidden),
        "{}",
        dash.body
    );
    for q in [
        format!("exporter={hidden}&interface=1"),
        format!("interface=1&exporter={hidden}&by=src-ip"),
        "group=nosuch".to_string(),
    ] {
        let r = get(&format!("{base}/api/v1/report?{q}&{period}"), Some(&viewer));
        assert_eq!(r.status, 404, "{q}: {}", r.body);
    }
    // interface=1 without an exporter: only the viewer's own interface 1.
    let one = get(
        &format!("{base}/api/v1/report?interface=1&by=exporter&{period}"),
        Some(&viewer),
    )
    .json();
    let keys: Vec<&str> = one["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [granted], "{one}");
    // The OpenAPI document describes what is served.
    let doc = get(&format!("{base}/api/v1/openapi.json"), None).json();
    for p in [
        "/api/v1/report",
        "/api/v1/series",
        "/api/v1/exporters",
        "/api/v1/interfaces",
        "/api/v1/flows",
    ] {
        assert!(
            doc["paths"][p]["get"].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
}

#[test]
fn admin_pages_manage_users_groups_grants_and_tokens() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("web_admin");
    let data = crate::support::data_dir("web_admin");
    let collector = Collector::start(&url, data.path(), &[]);
    let expected = gen::run(
        &GenOptions {
            seed: 9,
            flows: 3000,
            rate: Some(100_000),
            exporters: 2,
            first_source: 50,
            ..GenOptions::new(EncodeProtocol::Ipfix, collector.target())
        },
        |_| {},
    )
    .unwrap();
    assert!(collector.terminate().0.success());
    let by_interface = expected_rows(&expected, "interface");
    let members = ["127.0.0.50:1", "127.0.0.51:2"];
    for m in members {
        assert!(by_interface.contains_key(m), "{m} not in {by_interface:?}");
    }

    let (_web, port, _dir) = start("[web]\ntls = \"off\"\n", &url);
    let base = format!("http://127.0.0.1:{port}");
    add_user(&url, "boss", "admin", "admin password 2");
    add_user(&url, "peek", "viewer", "viewer password 2");
    let admin = login(&base, "boss", "admin password 2").unwrap();
    let page = get(&format!("{base}/admin/users"), Some(&admin));
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = form_value(&page.body, "csrf");
    let post = |path: &str, form: &str, cookie: &str| {
        request(
            "POST",
            &format!("{base}{path}"),
            Some(cookie),
            Some(form),
            None,
        )
    };

    // Without the CSRF token nothing changes.
    let r = post(
        "/admin/users/add",
        "csrf=wrong&user=cust&role=viewer&password=a+long+password",
        &admin,
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM users WHERE name = 'cust'"),
        "0"
    );
    for (path, form) in [
        (
            "/admin/users/add",
            format!("csrf={csrf}&user=cust&role=viewer&password=customer+password"),
        ),
        (
            "/admin/groups/add",
            format!("csrf={csrf}&name=acme&description=ACME+links"),
        ),
        (
            "/admin/groups/member",
            format!("csrf={csrf}&group=acme&exporter=127.0.0.50&interface=1"),
        ),
        (
            "/admin/groups/member",
            format!("csrf={csrf}&group=acme&exporter=127.0.0.51&interface=2"),
        ),
        (
            "/admin/grants/add",
            format!("csrf={csrf}&user=cust&group=acme"),
        ),
    ] {
        let r = post(path, &form, &admin);
        assert_eq!(r.status, 303, "{path}: {}", r.body);
    }
    // Mistakes come back as 400 with the reason, not as a 500 (a NUL byte included).
    for (path, form) in [
        ("/admin/groups/add", format!("csrf={csrf}&name=a%00b")),
        (
            "/admin/grants/add",
            format!("csrf={csrf}&user=cust&exporter=%00"),
        ),
        (
            "/admin/tokens/add",
            format!("csrf={csrf}&user=cust&name=%00"),
        ),
        ("/admin/users/disable", format!("csrf={csrf}&user=%00")),
    ] {
        let r = post(path, &form, &admin);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
    }
    assert_eq!(
        login(&base, "bo\u{0}ss", "admin password 2")
            .unwrap_err()
            .status,
        401
    );
    let r = post(
        "/admin/groups/member",
        &format!("csrf={csrf}&group=acme&exporter=127.0.0.50&interface=999"),
        &admin,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("127.0.0.50:999"), "{}", r.body);
    let r = post(
        "/admin/grants/add",
        &format!("csrf={csrf}&user=cust&exporter=x&group=acme"),
        &admin,
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // The customer sees exactly the group's interfaces, with the generator's numbers.
    let cust = login(&base, "cust", "customer password").unwrap();
    let period = "from=-1d&to=%2B1h";
    let v = get(
        &format!("{base}/api/v1/report?by=interface&top=100&{period}"),
        Some(&cust),
    )
    .json();
    let rows: std::collections::BTreeMap<String, u64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["flows"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: std::collections::BTreeMap<String, u64> = members
        .iter()
        .map(|m| (m.to_string(), by_interface[*m].2))
        .collect();
    assert_eq!(rows, want);
    let g = get(
        &format!("{base}/api/v1/report?group=acme&{period}"),
        Some(&cust),
    )
    .json();
    assert_eq!(
        g["total"]["flows"].as_u64().unwrap(),
        want.values().sum::<u64>()
    );
    let page = get(
        &format!("{base}/report?group=acme&by=dst-port&{period}"),
        Some(&cust),
    );
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("group acme by dst-port"),
        "{}",
        page.body
    );
    assert_eq!(
        get(
            &format!("{base}/api/v1/report?group=nosuch&{period}"),
            Some(&cust)
        )
        .status,
        404
    );

    // Viewers get no admin pages and cannot post admin forms.
    let peek = login(&base, "peek", "viewer password 2").unwrap();
    assert_eq!(get(&format!("{base}/admin/users"), Some(&peek)).status, 403);
    assert_eq!(get(&format!("{base}/admin/audit"), Some(&peek)).status, 403);
    assert_eq!(
        get(&format!("{base}/admin/groups"), Some(&peek)).status,
        403
    );
    let peek_csrf = form_value(&get(&format!("{base}/"), Some(&peek)).body, "csrf");
    let r = post(
        "/admin/grants/add",
        &format!("csrf={peek_csrf}&user=peek&all=1"),
        &peek,
    );
    assert_eq!(r.status, 403);
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM user_grants g JOIN users u ON u.id = g.user_id WHERE u.name = 'peek'"), "0");

    // A token made on the admin page works for the API, shown once.
    let r = post(
        "/admin/tokens/add",
        &format!("csrf={csrf}&user=cust&name=cron"),
        &admin,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r
        .body
        .split("<code id=\"token\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    let me = request(
        "GET",
        &format!("{base}/api/v1/me"),
        None,
        None,
        Some(&token),
    )
    .json();
    assert_eq!(me["name"], "cust");
    // A second token, revoked on the admin page, stops working; the first one does not.
    let r = post(
        "/admin/tokens/add",
        &format!("csrf={csrf}&user=cust&name=temp"),
        &admin,
    );
    let temp = r
        .body
        .split("<code id=\"token\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        request("GET", &format!("{base}/api/v1/me"), None, None, Some(&temp)).status,
        200
    );
    let users_page = get(&format!("{base}/admin/users"), Some(&admin)).body;
    assert!(
        users_page.contains(">temp<") && !users_page.contains(&temp),
        "tokens are listed by name only"
    );
    assert_eq!(
        post(
            "/admin/tokens/revoke",
            &format!("csrf={csrf}&user=cust&name=temp"),
            &admin
        )
        .status,
        303
    );
    assert_eq!(
        request("GET", &format!("{base}/api/v1/me"), None, None, Some(&temp)).status,
        401
    );
    assert_eq!(
        request(
            "GET",
            &format!("{base}/api/v1/me"),
            None,
            None,
            Some(&token)
        )
        .status,
        200
    );

    // Roles change on the page; the last admin cannot demote themself away.
    let r = post(
        "/admin/users/role",
        &format!("csrf={csrf}&user=boss&role=viewer"),
        &admin,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("last active admin"), "{}", r.body);
    assert_eq!(
        post(
            "/admin/users/role",
            &format!("csrf={csrf}&user=peek&role=admin"),
            &admin
        )
        .status,
        303
    );
    assert_eq!(
        pg.psql(&db, "SELECT role FROM users WHERE name = 'peek'"),
        "admin"
    );
    assert_eq!(
        get(&format!("{base}/admin/users"), Some(&peek)).status,
        303,
        "a role change ends sessions"
    );
    assert_eq!(
        post(
            "/admin/users/role",
            &format!("csrf={csrf}&user=peek&role=viewer"),
            &admin
        )
        .status,
        303
    );
    // Disabling ends the user's sessions at once.
    assert_eq!(
        post(
            "/admin/users/disable",
            &format!("csrf={csrf}&user=cust"),
            &admin
        )
        .status,
        303
    );
    assert_eq!(get(&format!("{base}/"), Some(&cust)).status, 303);
    assert_eq!(
        request(
            "GET",
            &format!("{base}/api/v1/me"),
            None,
            None,
            Some(&token)
        )
        .status,
        401
    );
    let audit = get(&format!("{base}/admin/audit"), Some(&admin));
    for action in [
        "user.add",
        "group.add",
        "group.member",
        "grant.add",
        "token.add",
        "user.disable",
    ] {
        assert!(
            audit.body.contains(action),
            "{action} missing from the audit page"
        );
    }
    assert!(audit.body.contains("web:boss"));
}

#[test]
fn alerts_and_device_counters_are_shown_within_grants() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("web_alerts");
    let (_web, port, _dir) = start("[web]\ntls = \"off\"\n", &url);
    let base = format!("http://127.0.0.1:{port}");
    // Any collector command migrates the database.
    let migrate = Command::new(crate::support::collector_bin())
        .args(["poll", "--database", &url, "--config"])
        .arg(crate::support::empty_config())
        .output()
        .unwrap();
    assert!(migrate.status.success());
    add_user(&url, "boss", "admin", "admin password 1");
    add_user(&url, "cust", "viewer", "viewer password 1");
    pg.psql(
        &db,
        "INSERT INTO exporters (address, name) VALUES ('192.0.2.1', 'r1'), ('192.0.2.2', 'r2');
         INSERT INTO interfaces (exporter_id, ifindex, name) SELECT id, i, 'Gi0/' || i FROM exporters, generate_series(1, 2) i;
         INSERT INTO alerts (rule, subject, started_at, holding_at, value, message) VALUES
           ('flow loss', '192.0.2.1', now(), now(), 9, 'loss on r1'),
           ('exporter silent', '192.0.2.2', now(), now(), 20, 'r2 silent'),
           ('spool nearly full', 'spool', now(), now(), 90, 'the spool is filling'),
           ('interface busy', '192.0.2.1 1 in', now(), now(), 95, 'Gi0/1 busy'),
           ('interface busy', '192.0.2.1 2 in', now(), now(), 95, 'Gi0/2 busy');
         -- 10 Mbit/s in and 2 Mbit/s out over five minutes, by SNMP; sFlow: 20 Mbit/s in.
         INSERT INTO interface_counters (time, exporter_id, ifindex, source, secs, in_octets, out_octets)
           SELECT now() - interval '10 minutes', id, 1, 'snmp', 300, 375000000, 75000000 FROM exporters WHERE name = 'r1';
         INSERT INTO interface_counters (time, exporter_id, ifindex, source, secs, in_octets, out_octets)
           SELECT now() - interval '10 minutes', id, 1, 'sflow', 60, 150000000, 0 FROM exporters WHERE name = 'r1';",
    );
    setup_users(
        &url,
        &[
            "grant",
            "cust",
            "--exporter",
            "192.0.2.1",
            "--interface",
            "1",
        ],
    );
    let admin = login(&base, "boss", "admin password 1").unwrap();
    let viewer = login(&base, "cust", "viewer password 1").unwrap();

    let messages = |cookie: &str| -> Vec<String> {
        let mut v: Vec<String> = get(&format!("{base}/api/v1/alerts"), Some(cookie))
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["message"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        messages(&admin),
        [
            "Gi0/1 busy",
            "Gi0/2 busy",
            "loss on r1",
            "r2 silent",
            "the spool is filling"
        ]
    );
    // The viewer has r1's Gi0/1 only: its exporter's alerts and that interface's.
    assert_eq!(messages(&viewer), ["Gi0/1 busy", "loss on r1"]);
    assert_eq!(get(&format!("{base}/api/v1/alerts"), None).status, 401);
    let dashboard = get(&format!("{base}/"), Some(&viewer)).body;
    assert!(dashboard.contains("loss on r1"), "{dashboard}");
    assert!(!dashboard.contains("class=\"unnamed\""), "r1 has a name");
    assert!(!dashboard.contains("r2 silent") && !dashboard.contains("the spool is filling"));
    assert!(get(&format!("{base}/"), Some(&admin))
        .body
        .contains("the spool is filling"));

    let counters = get(
        &format!("{base}/api/v1/counters?exporter=192.0.2.1&interface=1&from=-1h&to=%2B1m"),
        Some(&viewer),
    );
    assert_eq!(counters.status, 200, "{}", counters.body);
    let c = counters.json();
    assert_eq!(c[0]["source"], "sflow", "{c}");
    assert_eq!(c[0]["in_bps"], 20_000_000.0, "{c}");
    assert_eq!(c[1]["source"], "snmp", "{c}");
    assert_eq!(
        (
            c[1]["in_bps"].as_f64(),
            c[1]["out_bps"].as_f64(),
            c[1]["covered_secs"].as_f64()
        ),
        (Some(10_000_000.0), Some(2_000_000.0), Some(300.0))
    );
    // Another switch calls itself r1 over SNMP: for the admin the name is ambiguous
    // (400, not two interfaces pooled); for the viewer only the granted one matches.
    pg.psql(
        &db,
        "INSERT INTO exporters (address, name, snmp_name) VALUES ('192.0.2.3', 'r1', 'r1');
         INSERT INTO interfaces (exporter_id, ifindex) SELECT id, 1 FROM exporters WHERE host(address) = '192.0.2.3';
         INSERT INTO interface_counters (time, exporter_id, ifindex, source, secs, in_octets, out_octets)
           SELECT now() - interval '10 minutes', id, 1, 'snmp', 300, 1, 1 FROM exporters WHERE host(address) = '192.0.2.3';",
    );
    let by_name = |cookie: &str| {
        get(
            &format!("{base}/api/v1/counters?exporter=r1&interface=1&from=-1h&to=%2B1m"),
            Some(cookie),
        )
    };
    assert_eq!(by_name(&admin).status, 400, "{}", by_name(&admin).body);
    assert_eq!(by_name(&viewer).json(), c, "the viewer's r1 only");
    let hidden = get(
        &format!("{base}/api/v1/counters?exporter=192.0.2.2&interface=1&from=-1h"),
        Some(&viewer),
    );
    assert!(
        hidden.status == 403 || hidden.status == 404,
        "{}",
        hidden.status
    );
    let page = get(
        &format!("{base}/interface?exporter=192.0.2.1&interface=1&from=-1h&to=%2B1m"),
        Some(&viewer),
    )
    .body;
    assert!(page.contains("Measured by the device"), "{page}");
    assert!(
        page.contains("<td>snmp</td><td>10.0 Mbit/s</td><td>2.0 Mbit/s</td>"),
        "{page}"
    );
    // The interface's graph draws the device's rates as lines over the flows' bars.
    pg.psql(
        &db,
        "SELECT flowstage_ensure_day(current_date), flowstage_ensure_day((now() - interval '1 hour')::date);
         INSERT INTO flow_totals (minute, exporter_id, ifindex, direction, sampling_rate, bytes, packets, flows)
           SELECT date_trunc('minute', now()) - make_interval(mins => m), e.id, 1, 0, 1, 60000000, 50000, 100
           FROM exporters e, generate_series(2, 12) m WHERE e.name = 'r1';",
    );
    let svg = get(
        &format!("{base}/graph.svg?exporter=192.0.2.1&interface=1&by=total&direction=in&from=-1h&to=%2B1m"),
        Some(&viewer),
    );
    assert_eq!(svg.status, 200, "{}", svg.body);
    for want in [
        "measured by the device (snmp): 10.00 Mbit/s</title>",
        "measured by the device (sflow): 20.00 Mbit/s</title>",
        ">measured by the device (snmp)</text>",
        ": 8.00 Mbit/s</title>",
    ] {
        assert!(svg.body.contains(want), "{want} not in {}", svg.body);
    }
    let out = get(
        &format!("{base}/graph.svg?exporter=192.0.2.1&interface=1&by=total&direction=out&from=-1h&to=%2B1m"),
        Some(&viewer),
    );
    assert!(
        !out.body.contains("measured by the device (snmp): 10.00"),
        "out is not in"
    );

    let doc = get(&format!("{base}/api/v1/openapi.json"), None).json();
    for p in ["/api/v1/alerts", "/api/v1/counters"] {
        assert!(
            doc["paths"][p]["get"].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
}

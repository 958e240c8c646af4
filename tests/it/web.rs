//! `flowstage-web` as it stands: `/healthz` over HTTP and HTTPS (a certificate made
//! here), the database state in it, and the security headers on every response.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_tcp_port, Pg};

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
    std::fs::write(
        &config_path,
        config.replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
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

fn get(url: &str) -> (u16, String, reqwest::header::HeaderMap) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = flowstage::setup::status::http_client(Duration::from_secs(5)).unwrap();
            let r = client.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            (status, r.text().await.unwrap(), headers)
        })
}

#[test]
fn healthz_over_http_with_security_headers() {
    let pg = Pg::shared();
    let (_, url) = pg.create_database("web_http");
    let (_web, port, _dir) = start("[site]\nname = \"lab-1\"\n[web]\ntls = \"off\"\n", &url);
    let (status, body, headers) = get(&format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["database"], "up");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let (status, body, _) = get(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(status, 200);
    assert!(body.contains("Flowstage: lab-1"), "{body}");
}

#[test]
fn healthz_says_when_the_database_is_away() {
    let (_web, port, _dir) = start(
        "[web]\ntls = \"off\"\n",
        "postgresql:///nothing?host=/nonexistent&connect_timeout=1",
    );
    let (status, body, _) = get(&format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"degraded\""), "{body}");
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
    let (status, body, _) = get(&format!("https://127.0.0.1:{port}/healthz"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"database\":\"up\""), "{body}");
}

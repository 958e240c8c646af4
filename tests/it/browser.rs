//! A real browser: headless Chromium (Debian's `chromium` and `chromium-driver`) logs
//! in, reads the dashboard, opens an exporter's interface report, moves the time
//! navigator, drills down to an interface's ports, and exports the CSV; what it sees is
//! checked against the generator's totals. Screenshots go to
//! `target/test-artifacts/browser-*.png`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use flowstage::encode::EncodeProtocol;
use flowstage::gen::{self, GenOptions};

use crate::support::{free_tcp_port, Collector, Pg};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = crate::support::sigterm_and_wait(&mut self.0);
    }
}

/// Ends (SIGKILL) every process whose command line mentions a marker, on drop.
struct EndProcessesUsing(String);

impl Drop for EndProcessesUsing {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&self.0) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The page's main heading once the page has settled on one matching `want` (a click
/// navigates asynchronously: the old page's heading may still be there, or go stale).
async fn heading(c: &fantoccini::Client, want: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(h1) = c.find(Locator::Css("main h1")).await {
            if let Ok(text) = h1.text().await {
                if want(&text) {
                    return text;
                }
                last = text;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never showed the expected heading; last seen: {last:?}")
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn chromium_logs_in_navigates_drills_down_and_exports() {
    let (Some(chromium), Some(driver)) = (which("chromium"), which("chromedriver")) else {
        // scripts/test.sh installs them; outside it, say so instead of failing.
        assert!(
            std::env::var_os("FLOWSTAGE_REQUIRE_BROWSER").is_none(),
            "chromium and chromedriver are required here (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipping: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let pg = Pg::shared();
    let (_db, url) = pg.create_database("browser");
    let data = crate::support::data_dir("browser");
    // The collector keeps running, so the dashboard can show its live counters.
    let collector = Collector::start(&url, data.path(), &["--flush-grace", "0"]);
    let expected = gen::run(
        &GenOptions {
            seed: 11,
            flows: 3000,
            rate: Some(100_000),
            exporters: 2,
            first_source: 40,
            // Finished minutes: pages end their period at the current minute's start.
            age_secs: 150,
            ..GenOptions::new(EncodeProtocol::V9, collector.target())
        },
        |_| {},
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = pg.psql(
            &_db,
            "SELECT coalesce(sum(flows), 0) FROM flow_totals WHERE direction = 0",
        );
        if stored == expected.total.flows.to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {stored} of {} flows stored",
            expected.total.flows
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.toml"),
        format!(
            "[site]\nname = \"browser-lab\"\n[web]\ntls = \"off\"\n[collector]\nmetrics = \"127.0.0.1:{}\"\n",
            collector.metrics_port
        ),
    )
    .unwrap();
    let web_port = free_tcp_port();
    let _web = Killed(
        Command::new(env!("CARGO_BIN_EXE_flowstage-web"))
            .arg("--config")
            .arg(dir.path().join("web.toml"))
            .args([
                "--listen",
                &format!("127.0.0.1:{web_port}"),
                "--database",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(web_port, "flowstage-web");
    crate::web::add_user(&url, "noc", "admin", "browser password");

    // The browser's own profile directory; whatever happens to the test, every process
    // started with it is ended at the end (chromedriver does not when it is killed).
    let profile = tempfile::tempdir().unwrap();
    let _browser = EndProcessesUsing(profile.path().display().to_string());
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let driver_port = free_tcp_port();
    let _driver = Killed(
        Command::new(driver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(driver_port, "chromedriver");
    let base = format!("http://127.0.0.1:{web_port}");
    let shots = artifacts();
    let total_flows = expected.total.flows;

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut caps = serde_json::Map::new();
            caps.insert(
                "goog:chromeOptions".into(),
                serde_json::json!({
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000", profile_arg]
                }),
            );
            // chromedriver speaks plain HTTP on loopback.
            let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{driver_port}"))
                .await
                .expect("a chromedriver session");
            let shot = |name: &'static str| {
                let c = c.clone();
                let path = shots.join(format!("browser-{name}.png"));
                async move {
                    let png = c.screenshot().await.unwrap();
                    std::fs::write(path, png).unwrap();
                }
            };

            // Logging in.
            c.goto(&format!("{base}/")).await.unwrap();
            assert!(c.current_url().await.unwrap().path().starts_with("/login"));
            c.find(Locator::Css("input[name=user]")).await.unwrap().send_keys("noc").await.unwrap();
            c.find(Locator::Css("input[name=password]")).await.unwrap().send_keys("browser password").await.unwrap();
            shot("login").await;
            c.find(Locator::Css("form button[type=submit]")).await.unwrap().click().await.unwrap();

            // The dashboard: both exporters, a graph, the busiest interfaces.
            heading(&c, |h| h == "Last 24 hours").await;
            let body = c.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
            assert!(body.contains("127.0.0.40") && body.contains("127.0.0.41"), "{body}");
            // Health from the running collector: recent packets, no loss, no errors.
            assert!(body.contains("s ago") && body.contains("0.00 %"), "{body}");
            let graph = c.find(Locator::Css("main img")).await.unwrap();
            let loaded: bool = c
                .execute("return arguments[0].complete && arguments[0].naturalWidth > 0", vec![serde_json::to_value(&graph).unwrap()])
                .await
                .unwrap()
                .as_bool()
                .unwrap_or(false);
            assert!(loaded, "the dashboard graph did not render");
            shot("dashboard").await;

            // An exporter's interfaces, then the time navigator.
            c.find(Locator::LinkText("127.0.0.40")).await.unwrap().click().await.unwrap();
            heading(&c, |h| h == "127.0.0.40 by interface").await;
            shot("exporter").await;
            // Dragging across the graph zooms into that part of the period: a quarter to
            // three quarters of the plot is half of the day.
            let before_zoom = c.current_url().await.unwrap();
            c.execute(
                "const img = document.querySelector('img[data-zoom]');
                 const box = img.getBoundingClientRect();
                 const left = Number(img.dataset.left), plot = Number(img.dataset.plot), width = Number(img.dataset.width);
                 const x = share => box.left + (left + share * plot) * box.width / width;
                 const y = box.top + box.height / 2;
                 img.dispatchEvent(new MouseEvent('mousedown', {clientX: x(0.25), clientY: y, bubbles: true}));
                 img.dispatchEvent(new MouseEvent('mouseup', {clientX: x(0.75), clientY: y, bubbles: true}));",
                vec![],
            )
            .await
            .unwrap();
            let mut zoomed = c.current_url().await.unwrap();
            for _ in 0..100 {
                if zoomed != before_zoom {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                zoomed = c.current_url().await.unwrap();
            }
            let param = |name: &str| {
                zoomed
                    .query_pairs()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| chrono::DateTime::parse_from_rfc3339(&v).unwrap())
                    .unwrap()
            };
            let span = param("to") - param("from");
            assert!(
                (span.num_minutes() - 720).abs() <= 30,
                "dragging half the graph gave {span} ({zoomed})"
            );
            c.goto(before_zoom.as_str()).await.unwrap();
            heading(&c, |h| h == "127.0.0.40 by interface").await;
            let before = c.current_url().await.unwrap();
            c.find(Locator::XPath("//a[contains(., 'previous')]")).await.unwrap().click().await.unwrap();
            let mut after = c.current_url().await.unwrap();
            for _ in 0..100 {
                if after != before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                after = c.current_url().await.unwrap();
            }
            assert_ne!(before, after);
            heading(&c, |h| h == "127.0.0.40 by interface").await;
            let table = c.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
            assert!(!table.contains("127.0.0.40:"), "yesterday has no traffic: {table}");
            c.find(Locator::XPath("//a[contains(., 'next')]")).await.unwrap().click().await.unwrap();
            let mut back = c.current_url().await.unwrap();
            for _ in 0..100 {
                if back == before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                back = c.current_url().await.unwrap();
            }
            assert_eq!(back, before);

            // Drill down from an interface to its destination ports.
            let first = c.find(Locator::Css("tbody td a")).await.unwrap();
            let interface = first.text().await.unwrap();
            first.click().await.unwrap();
            let ifindex = interface.rsplit(':').next().unwrap().to_string();
            // The interface page: in and out graphs, a table for every report kind.
            let want = format!("127.0.0.40 interface {ifindex}");
            heading(&c, |h| h == want).await;
            let graphs = c.find_all(Locator::Css("main img")).await.unwrap();
            assert_eq!(graphs.len(), 2, "in and out");
            let tables = c.find_all(Locator::Css("main table")).await.unwrap();
            assert_eq!(tables.len(), 7, "one per report kind");
            shot("interface").await;
            // ... and from there the full report of its destination ports.
            c.find(Locator::LinkText("dst-port")).await.unwrap().click().await.unwrap();
            let want = format!("127.0.0.40 interface {ifindex} by dst-port");
            heading(&c, |h| h == want).await;
            shot("interface-ports").await;

            // CSV export of the whole period by exporter: the flows add up to what was sent.
            c.goto(&format!("{base}/report?by=exporter&from=-1d&to=%2B1h&top=50")).await.unwrap();
            let csv_link = c.find(Locator::LinkText("CSV")).await.unwrap().attr("href").await.unwrap().unwrap();
            let csv: String = c
                .execute_async(
                    "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.text()).then(done);",
                    vec![serde_json::Value::String(csv_link)],
                )
                .await
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
            let flows_col = header.iter().position(|h| *h == "flows").expect("a flows column");
            let flows: u64 = csv
                .lines()
                .skip(1)
                .filter(|l| !l.starts_with("total"))
                .map(|l| l.split(',').nth(flows_col).unwrap().parse::<u64>().unwrap())
                .sum();
            assert_eq!(flows, total_flows, "{csv}");
            shot("report").await;
            c.close().await.unwrap();
        });
    assert!(collector.terminate().0.success());
}

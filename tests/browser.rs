//! Browser players in a real browser: a headless Chromium loads a page that runs
//! `tests/browser/cases.js` with `web/quicfeed.js` against a real server (WebTransport on
//! loopback, through the network conditioner so a case can cut the path or add latency).
//!
//! Chromium is found as `$QUICFEED_CHROMIUM`, else `chromium`, `chromium-browser` or
//! `google-chrome` on the `PATH`. Without one the cases are skipped with a message saying how
//! to run them (`apt-get install chromium`); with `QUICFEED_REQUIRE_BROWSER` set (as CI does)
//! a missing Chromium fails the test instead. The page reports each case over HTTP; the last
//! line of the report is `browser cases: N passed, M failed`.

#[path = "../examples/common/http.rs"]
mod http;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use quicfeed::conditioner::{Conditions, Relay};
use quicfeed::{
    AuthDecision, AuthRequest, Identity, Prepared, Reason, Server, ServerConfig, Session,
    WebTransportConfig,
};
use tokio::sync::mpsc;

const CLIENT: &str = include_str!("../web/quicfeed.js");
const CASES: &str = include_str!("browser/cases.js");
const PAGE: &str = "<!doctype html><meta charset=\"utf-8\"><title>quicfeed browser cases</title>\
                    <script type=\"module\" src=\"/cases.js\"></script>";

/// The cases of cases.js, in the order the page runs them.
const CASE_NAMES: &[&str] = &[
    "handshake_and_both_channels",
    "lane_both_ways",
    "refused_with_a_reason",
    "closed_by_the_server_with_a_reason",
    "resume_after_the_page_drops_its_connection",
    "resume_after_a_network_outage",
    "twenty_sessions_at_once",
    "connect_at_20_ms_rtt",
];

/// How long the whole run may take: Chromium's start and every case, on a loaded machine.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

/// Writes a line to the test's stderr, past the harness's output capture, so the report is
/// seen in a plain `cargo test`.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The Chromium to run, if this machine has one.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("QUICFEED_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// One report the page posted.
#[derive(serde::Deserialize)]
struct Report {
    case: String,
    ok: bool,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    figures: serde_json::Map<String, serde_json::Value>,
}

/// What the page's HTTP requests bring to the test.
enum PageEvent {
    Report(Report),
    Log(String),
}

/// The server's application for the cases (see the top of cases.js).
async fn serve(session: Session) {
    let (handle, main, feed) = session.into_parts();
    let lane = handle.lane();
    let lane_echo = tokio::spawn(async move {
        while let Ok(payload) = lane.recv_bytes().await {
            let _ = lane.send_bytes(&[b"echo:".as_slice(), &payload].concat());
        }
    });
    let feed_echo = tokio::spawn(async move {
        while let Ok(payload) = feed.recv_bytes().await {
            if feed.send_bytes(&payload).await.is_err() {
                break;
            }
        }
    });
    while let Ok(payload) = main.recv_bytes().await {
        if payload.as_ref() == b"close-me" {
            handle.close(Reason::ServerShutdown, "asked to close");
            break;
        }
        if main.send_bytes(&payload).await.is_err() {
            break;
        }
    }
    handle.closed().await;
    lane_echo.abort();
    feed_echo.abort();
}

/// Answers the page: its files, its configuration, its reports and the conditioner controls.
fn route(
    request: Request,
    config: &str,
    relay: &Relay,
    events: &mpsc::UnboundedSender<PageEvent>,
) -> Response {
    match (request.method.as_str(), request.route()) {
        ("GET", "/") => Response::html(PAGE),
        ("GET", "/quicfeed.js") => Response::javascript(CLIENT),
        ("GET", "/cases.js") => Response::javascript(CASES),
        ("GET", "/config.json") => Response::json(config.to_owned()),
        ("POST", "/report") => match serde_json::from_slice::<Report>(&request.body) {
            Ok(report) => {
                let _ = events.send(PageEvent::Report(report));
                Response::json("{}".into())
            }
            Err(e) => {
                let _ = events.send(PageEvent::Log(format!("an unreadable report: {e}")));
                Response::not_found()
            }
        },
        ("POST", "/log") => {
            let message = serde_json::from_slice::<serde_json::Value>(&request.body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = events.send(PageEvent::Log(message));
            Response::json("{}".into())
        }
        ("POST", "/control") => {
            let ms = request
                .query("ms")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(0);
            match request.query("op") {
                Some("blackhole") => relay.blackhole(Duration::from_millis(ms)),
                Some("latency") => {
                    let each_way = Conditions::latency(Duration::from_millis(ms));
                    relay.set_conditions(each_way.clone(), each_way);
                }
                Some("clear") => relay.set_conditions(Conditions::default(), Conditions::default()),
                _ => return Response::not_found(),
            }
            Response::json("{}".into())
        }
        _ => Response::not_found(),
    }
}

/// Kills Chromium when the run ends, however it ends.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_cases() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("QUICFEED_REQUIRE_BROWSER").is_none(),
            "QUICFEED_REQUIRE_BROWSER is set and no Chromium was found (install it with \
             `apt-get install chromium`, or set QUICFEED_CHROMIUM to its path)"
        );
        say(
            "browser cases skipped: no Chromium found. Install it (`apt-get install chromium`) \
             or set QUICFEED_CHROMIUM to its path, then run `cargo test --test browser`.",
        );
        return;
    };

    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Identity::generate_self_signed(&["localhost"]).unwrap(),
    )
    .authenticator(|request: AuthRequest| async move {
        if request.credentials.as_ref() == b"refuse-me" {
            AuthDecision::reject("not on the guest list")
        } else {
            AuthDecision::Accept
        }
    });
    config.webtransport = Some(WebTransportConfig::default());
    let server = Arc::new(Server::bind(config).await.unwrap());
    let relay = Arc::new(
        Relay::start(
            server.local_addr(),
            Conditions::default(),
            Conditions::default(),
        )
        .await
        .unwrap(),
    );
    let acceptor = {
        let server = server.clone();
        tokio::spawn(async move {
            while let Some(session) = server.accept().await {
                tokio::spawn(serve(session));
            }
        })
    };
    let ticker = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(20));
            for n in 0u64.. {
                every.tick().await;
                server.broadcast_lane(&Prepared::from_bytes(format!("tick {n}").into_bytes()));
            }
        })
    };

    let hashes: Vec<String> = server
        .browser_certificate_hashes()
        .iter()
        .map(|h| h.to_string())
        .collect();
    let page_config = serde_json::json!({
        "url": format!("https://127.0.0.1:{}/quicfeed", relay.local_addr().port()),
        "hashes": hashes,
        "cases": CASE_NAMES,
    })
    .to_string();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let http = {
        let relay = relay.clone();
        tokio::spawn(http::serve(listener, move |request| {
            route(request, &page_config, &relay, &events_tx)
        }))
    };

    let profile = tempfile::tempdir().unwrap();
    let _browser = Browser(
        Command::new(&chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-component-update",
                "--no-first-run",
                // Only loopback: Chromium would otherwise reach for Google's hosts on its own.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(&page_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display())),
    );
    say(&format!(
        "browser cases: running {} cases in {}",
        CASE_NAMES.len(),
        chromium.display()
    ));

    let mut passed = Vec::new();
    let mut failed = Vec::new();
    let run = async {
        while let Some(event) = events.recv().await {
            match event {
                PageEvent::Log(message) => say(&format!("  page: {message}")),
                PageEvent::Report(report) if report.case.is_empty() => break,
                PageEvent::Report(report) => {
                    let figures: Vec<String> = report
                        .figures
                        .iter()
                        .map(|(name, value)| {
                            format!("{name} = {:.1}", value.as_f64().unwrap_or(f64::NAN))
                        })
                        .collect();
                    if report.ok {
                        say(&format!("  ok      {}: {}", report.case, report.detail));
                        passed.push(report.case);
                    } else {
                        say(&format!("  FAILED  {}: {}", report.case, report.detail));
                        failed.push(report.case);
                    }
                    if !figures.is_empty() {
                        say(&format!("          figures: {}", figures.join(", ")));
                    }
                }
            }
        }
    };
    let finished = tokio::time::timeout(RUN_DEADLINE, run).await.is_ok();
    for name in CASE_NAMES {
        if !passed.iter().chain(&failed).any(|case| case == name) {
            say(&format!("  FAILED  {name}: never reported"));
            failed.push((*name).to_owned());
        }
    }
    http.abort();
    ticker.abort();
    server.shutdown(Reason::ServerShutdown, "test over").await;
    let _ = acceptor.await;
    say(&format!(
        "browser cases: {} passed, {} failed",
        passed.len(),
        failed.len()
    ));
    assert!(finished, "the page did not finish within {RUN_DEADLINE:?}");
    assert!(failed.is_empty(), "browser cases failed: {failed:?}");
}

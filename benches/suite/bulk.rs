//! Bulk feed throughput on loopback: quicfeed's feed channel against bare quinn on one stream.

use std::time::Instant;

use quicfeed::{Client, ClientConfig, ServerConfig};
use serde_json::json;

use crate::common::{Tls, identity, loopback, server};
use crate::report::Section;

/// Message size: large messages, as a bulk transfer would use (the frame limit is 64 KiB).
const CHUNK: usize = 32 * 1024;

/// MB/s through quicfeed's feed, server to client; with `narrow`, the client's receive windows
/// are a server's defaults (sized to bound memory per session) instead of a client's.
async fn quicfeed(total: usize, narrow: bool) -> f64 {
    let (server, trust) = server(ServerConfig::new(loopback(), identity())).await;
    let mut config = ClientConfig::new(server.local_addr(), trust);
    if narrow {
        let server_side = quicfeed::TransportConfig::default();
        config.transport.stream_receive_window = server_side.stream_receive_window;
        config.transport.receive_window = server_side.receive_window;
    }
    let client = Client::connect(&config).await.expect("connect");
    let side = server.accept().await.expect("session");
    let chunks = total / CHUNK;
    let (_handle, _main, feed) = client.into_parts();
    let (_, receiver) = feed.split();
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while received < chunks * CHUNK {
            received += receiver.recv_bytes().await.expect("recv").len();
        }
        Instant::now()
    });
    let payload = vec![7u8; CHUNK];
    let started = Instant::now();
    for _ in 0..chunks {
        side.feed().send_bytes(&payload).await.expect("send");
    }
    let finished = reader.await.expect("reader");
    (chunks * CHUNK) as f64 / (finished - started).as_secs_f64() / 1e6
}

/// MB/s through one bare quinn stream, server to client (quinn's default settings).
async fn bare_quinn(total: usize) -> f64 {
    let tls = Tls::generate();
    let server = tls.quinn_server();
    let client = tls.quinn_client();
    let addr = server.local_addr().expect("addr");
    let chunks = total / CHUNK;
    let sender = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("conn");
        let mut stream = conn.open_uni().await.expect("stream");
        let payload = vec![7u8; CHUNK];
        let started = Instant::now();
        for _ in 0..chunks {
            stream.write_all(&payload).await.expect("write");
        }
        stream.finish().expect("finish");
        let _ = stream.stopped().await;
        (started, conn, server)
    });
    let conn = client
        .connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("connection");
    let mut stream = conn.accept_uni().await.expect("stream");
    let mut buffer = vec![0u8; CHUNK];
    let mut received = 0;
    while let Some(n) = stream.read(&mut buffer).await.expect("read") {
        received += n;
    }
    let finished = Instant::now();
    let (started, _conn, _server) = sender.await.expect("sender");
    received as f64 / (finished - started).as_secs_f64() / 1e6
}

pub(crate) async fn run(quick: bool) -> Section {
    let total = if quick { 64 << 20 } else { 512 << 20 };
    let rounds = if quick { 1 } else { 3 };
    let (mut ours, mut narrow, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(quicfeed(total, false).await);
        narrow.push(quicfeed(total, true).await);
        bare.push(bare_quinn(total).await);
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ours_median, narrow_median, bare_median) =
        (median(&mut ours), median(&mut narrow), median(&mut bare));
    let ratio = ours_median / bare_median;
    let mut section = Section::new(
        "Bulk feed throughput (loopback)",
        &format!(
            "{} MiB sent server to client as {} KiB messages, {rounds} alternating rounds; the \
             median round. quicfeed sends on its reliable feed channel with default settings (the \
             client's receive windows: 1.25 MiB per stream, 2.5 MiB per connection), and again \
             with the client's windows set to a server's defaults (128 KiB and 192 KiB); bare \
             quinn writes one unidirectional stream with quinn's default settings.",
            total >> 20,
            CHUNK >> 10
        ),
        &["", "MB/s (median)", "MB/s (best)", "vs bare quinn"],
    );
    section.row(vec![
        "quicfeed feed".into(),
        format!("{ours_median:.0}"),
        format!("{:.0}", best(&ours)),
        format!("{ratio:.2}x"),
    ]);
    section.row(vec![
        "quicfeed feed, client windows as a server's (128 / 192 KiB)".into(),
        format!("{narrow_median:.0}"),
        format!("{:.0}", best(&narrow)),
        format!("{:.2}x", narrow_median / bare_median),
    ]);
    section.row(vec![
        "bare quinn, one stream".into(),
        format!("{bare_median:.0}"),
        format!("{:.0}", best(&bare)),
        "1.00x".into(),
    ]);
    section.target(
        "bulk feed throughput vs bare quinn",
        format!("{ratio:.2}x ({ours_median:.0} vs {bare_median:.0} MB/s)"),
        ">= 0.90x",
        ratio >= 0.9,
    );
    section.figures = json!({
        "bytes": total, "quicfeed_mb_s": ours, "quicfeed_server_windows_mb_s": narrow,
        "bare_quinn_mb_s": bare, "ratio": ratio,
    });
    section
}

//! What this process costs: resident memory and CPU time, from /proc, and
//! the loopback WebSocket round-trip floor to compare latencies with.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

/// (resident KiB, CPU seconds) of a process at one moment.
pub type Usage = (u64, f64);

/// (resident KiB, CPU seconds) of this process.
pub fn own() -> Option<Usage> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss, ticks / 100.0))
}

/// p50 and p99 (ms) of `n` WebSocket round trips to an echo server on
/// loopback: the floor under any push→ack latency on this machine.
pub async fn loopback_floor(n: usize) -> Option<(f64, f64)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
    let addr = listener.local_addr().ok()?;
    let echo = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.ok()?;
        let mut ws = tokio_tungstenite::accept_async(tcp).await.ok()?;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() && ws.send(message).await.is_err() {
                break;
            }
        }
        Some(())
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .ok()?;
    let _ = ws.get_mut();
    let mut h = Histogram::<u64>::new(3).ok()?;
    let payload = r#"{"type":"command","data":{"command_id":"floor"}}"#;
    for _ in 0..n {
        let sent = Instant::now();
        ws.send(Message::text(payload)).await.ok()?;
        loop {
            match tokio::time::timeout(Duration::from_secs(1), ws.next())
                .await
                .ok()??
            {
                Ok(Message::Text(_)) => break,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        h.saturating_record(sent.elapsed().as_micros() as u64);
    }
    let _ = ws.close(None).await;
    echo.abort();
    Some((
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    ))
}

/// What the fleet cost this process, into the report's notes: RSS once
/// connected, RSS per socket (connected minus before), and CPU during the
/// injection as a percentage of one core. `usage` is [`own`] before the
/// fleet, once connected, and after the injection.
pub fn note_harness_cost(
    notes: &mut std::collections::BTreeMap<String, f64>,
    usage: [Option<Usage>; 3],
    sockets: usize,
    injected_s: f64,
) {
    if let [Some((rss0, _)), Some((rss1, cpu1)), Some((_, cpu2))] = usage {
        notes.insert("harness_rss_kib".into(), rss1 as f64);
        notes.insert(
            "harness_rss_per_socket_bytes".into(),
            rss1.saturating_sub(rss0) as f64 * 1024.0 / sockets.max(1) as f64,
        );
        notes.insert(
            "harness_cpu_pct_of_a_core".into(),
            (cpu2 - cpu1) / injected_s.max(0.001) * 100.0,
        );
    }
}

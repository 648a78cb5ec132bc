//! `kiln serve` flooded at several times its capacity for 30 s on loopback: memory stays
//! bounded, health checks answer throughout, every answer is 200 or 503 (with `Retry-After`),
//! and the server answers normally right after.
#![allow(clippy::unwrap_used)]

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const FLOOD: Duration = Duration::from_secs(30);
const CLIENTS: usize = 96;
const ROWS: usize = 400;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn body() -> Value {
    let mut reader =
        csv::Reader::from_path(util::repo_root().join("examples/data/breast_cancer.csv")).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows: Vec<Vec<f64>> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .zip(r.iter())
                .filter(|(h, _)| *h != "label")
                .map(|(_, v)| v.parse().unwrap())
                .collect()
        })
        .collect();
    let width = rows[0].len();
    let data: Vec<f64> = rows.iter().cycle().take(ROWS).flatten().copied().collect();
    json!({ "inputs": [{ "name": "x", "shape": [ROWS, width], "datatype": "FP64", "data": data }] })
}

#[test]
fn a_flood_is_answered_200_or_503_with_bounded_memory_and_health_throughout() {
    let k = util::Kiln::new();
    k.ok(&[
        "train",
        "--data",
        "examples/data/breast_cancer.csv",
        "--target",
        "label",
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--register",
        "bc",
    ]);
    k.ok(&["models", "alias", "set", "bc", "champion", "1"]);
    let server = util::Served::start(
        &k,
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--max-inflight",
            "32",
            "--log-sample",
            "0",
        ],
    );
    let pid = server.child.id();
    let infer = format!("{}/v2/models/bc/infer", server.url);
    let payload = Arc::new(serde_json::to_vec(&body()).unwrap());
    let send = |agent: &ureq::Agent| -> (u16, bool) {
        let r = agent
            .post(&infer)
            .header("Content-Type", "application/json")
            .send(payload.as_slice())
            .unwrap();
        (r.status().as_u16(), r.headers().contains_key("retry-after"))
    };
    let agent = util::agent();
    for _ in 0..20 {
        assert_eq!(send(&agent).0, 200);
    }
    let warm = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, busy, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, ok, busy, other) = (stop.clone(), ok.clone(), busy.clone(), other.clone());
            let (infer, payload) = (infer.clone(), payload.clone());
            std::thread::spawn(move || {
                let agent = util::agent();
                while !stop.load(Ordering::Relaxed) {
                    let r = agent
                        .post(&infer)
                        .header("Content-Type", "application/json")
                        .send(payload.as_slice());
                    match r.map(|r| (r.status().as_u16(), r.headers().contains_key("retry-after")))
                    {
                        Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        Ok((503, true)) => busy.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let health = format!("{}/v2/health/live", server.url);
    let checker = util::agent().config().clone().new_agent();
    let started = Instant::now();
    let (mut peak, mut checks, mut slowest) = (warm, 0, Duration::ZERO);
    while started.elapsed() < FLOOD {
        let t = Instant::now();
        let status = checker.get(&health).call().unwrap().status().as_u16();
        assert_eq!(status, 200, "health check during the flood");
        slowest = slowest.max(t.elapsed());
        checks += 1;
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, busy, other) = (
        ok.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood: {ok} answered, {busy} turned away (503), {other} other; RSS warm {warm} KiB, peak {peak} KiB; {checks} health checks, slowest {slowest:?}"
    );
    assert_eq!(other, 0, "answers other than 200 and 503 with Retry-After");
    assert!(
        ok > 0 && busy > 0,
        "the flood did not pass the server's capacity"
    );
    // The bound: the server's own working set plus what 32 requests in flight and the full
    // compute queue hold (a 400-row request is about 150 KiB of JSON).
    assert!(
        peak < warm + 256 * 1024,
        "RSS grew from {warm} KiB to {peak} KiB under the flood"
    );
    // Right after, the server answers every request at once.
    for _ in 0..20 {
        assert_eq!(send(&agent), (200, false));
    }
}

//! Schedules on tokio's paused clock: cron fires on time, missed fires follow the catch-up
//! policy after a restart, overlapping fires follow the overlap policy, a paused schedule does
//! not fire, and the state survives restarts.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use kiln_core::registry::{Registry, ScheduleState};
use kiln_scheduler::pipeline::{Catchup, Overlap, Schedule};
use kiln_scheduler::schedule::{Clock, Launcher, ScheduleLoop, catch_up, fires_between};
use tokio::sync::watch;

/// Records each fire and when (on the paused clock) its run started; each run takes `seconds`.
struct Record {
    clock: Clock,
    seconds: u64,
    runs: Mutex<Vec<(DateTime<Utc>, DateTime<Utc>)>>,
}

impl Launcher for Record {
    async fn launch(&self, fire: DateTime<Utc>) {
        self.runs.lock().unwrap().push((fire, (self.clock)()));
        tokio::time::sleep(Duration::from_secs(self.seconds)).await;
    }
}

fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, h, m, s).unwrap()
}

/// A clock that starts at `base` and moves with tokio's (paused) time.
fn clock(base: DateTime<Utc>) -> Clock {
    let start = tokio::time::Instant::now();
    Arc::new(move || base + (tokio::time::Instant::now() - start))
}

fn schedule(cron: &str, catchup: Catchup, overlap: Overlap) -> Schedule {
    Schedule {
        cron: cron.into(),
        catchup,
        overlap,
    }
}

/// Runs a schedule loop from `start` for `for_secs` of paused time; returns the fires and their
/// start times.
async fn drive(
    registry: &Arc<Registry>,
    schedule: Schedule,
    start: DateTime<Utc>,
    for_secs: u64,
    seconds: u64,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let clock = clock(start);
    let launcher = Arc::new(Record {
        clock: clock.clone(),
        seconds,
        runs: Mutex::new(Vec::new()),
    });
    let (stop_tx, stop) = watch::channel(false);
    let l = ScheduleLoop {
        pipeline: "nightly".into(),
        file: "p.toml".into(),
        schedule,
        registry: registry.clone(),
        launcher: launcher.clone(),
        clock,
    };
    let task = tokio::spawn(l.run(stop));
    tokio::time::sleep(Duration::from_secs(for_secs)).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    launcher.runs.lock().unwrap().clone()
}

fn open() -> (tempfile::TempDir, Arc<Registry>) {
    let dir = tempfile::tempdir().unwrap();
    let r = Arc::new(Registry::open(dir.path()).unwrap());
    (dir, r)
}

#[tokio::test(start_paused = true)]
async fn cron_fires_on_time() {
    let (_d, reg) = open();
    // Every minute, from 10:00:30 to 10:03:50: fires at 10:01, 10:02, 10:03.
    let runs = drive(
        &reg,
        schedule("* * * * *", Catchup::Skip, Overlap::Skip),
        t(10, 0, 30),
        200,
        1,
    )
    .await;
    let fires: Vec<_> = runs.iter().map(|r| r.0).collect();
    assert_eq!(fires, vec![t(10, 1, 0), t(10, 2, 0), t(10, 3, 0)]);
    for (fire, started) in &runs {
        assert!(
            (*started - *fire).num_milliseconds().abs() < 50,
            "{fire} started {started}"
        );
    }
    let state = reg.schedule_state("nightly").unwrap().unwrap();
    assert_eq!(state.last_fire_ms, Some(t(10, 3, 0).timestamp_millis()));
}

#[test]
fn missed_fires_and_catch_up_policies() {
    let cron = "0 * * * *".parse().unwrap();
    let missed = fires_between(&cron, t(1, 0, 0), t(4, 30, 0), 100);
    assert_eq!(missed, vec![t(2, 0, 0), t(3, 0, 0), t(4, 0, 0)]);
    assert!(catch_up(Catchup::Skip, &missed).is_empty());
    assert_eq!(catch_up(Catchup::Latest, &missed), vec![t(4, 0, 0)]);
    assert_eq!(catch_up(Catchup::All, &missed), missed);
}

async fn after_downtime(catchup: Catchup) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let (_d, reg) = open();
    // The last fire handled was 06:00; kiln comes back at 09:30 (missed 07:00, 08:00, 09:00).
    reg.save_schedule_state(&ScheduleState {
        pipeline: "nightly".into(),
        file: "p.toml".into(),
        cron: "0 * * * *".into(),
        paused: false,
        last_fire_ms: Some(t(6, 0, 0).timestamp_millis()),
    })
    .unwrap();

    drive(
        &reg,
        schedule("0 * * * *", catchup, Overlap::Queue),
        t(9, 30, 0),
        45 * 60,
        60,
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn catch_up_skip_runs_only_the_next_fire() {
    let runs = after_downtime(Catchup::Skip).await;
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![t(10, 0, 0)]
    );
}

#[tokio::test(start_paused = true)]
async fn catch_up_latest_runs_the_last_missed_fire_at_once() {
    let runs = after_downtime(Catchup::Latest).await;
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![t(9, 0, 0), t(10, 0, 0)]
    );
    assert_eq!(runs[0].1, t(9, 30, 0));
}

#[tokio::test(start_paused = true)]
async fn catch_up_all_runs_every_missed_fire_one_after_another() {
    let runs = after_downtime(Catchup::All).await;
    let fires: Vec<_> = runs.iter().map(|r| r.0).collect();
    assert_eq!(fires, vec![t(7, 0, 0), t(8, 0, 0), t(9, 0, 0), t(10, 0, 0)]);
    // Each takes a minute and they do not overlap.
    let starts: Vec<_> = runs.iter().map(|r| r.1).collect();
    assert_eq!(
        starts,
        vec![t(9, 30, 0), t(9, 31, 0), t(9, 32, 0), t(10, 0, 0)]
    );
}

#[tokio::test(start_paused = true)]
async fn overlapping_fires_are_skipped_or_queued() {
    // Runs take 150 s and the cron fires every minute, from 10:00:30 for 6 minutes.
    let (_d, reg) = open();
    let skip = drive(
        &reg,
        schedule("* * * * *", Catchup::Skip, Overlap::Skip),
        t(10, 0, 30),
        360,
        150,
    )
    .await;
    // 10:01 runs until 10:03:30; 10:02 and 10:03 are skipped; 10:04 runs until 10:06:30.
    assert_eq!(
        skip.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![t(10, 1, 0), t(10, 4, 0)]
    );

    let (_d, reg) = open();
    let queue = drive(
        &reg,
        schedule("* * * * *", Catchup::Skip, Overlap::Queue),
        t(10, 0, 30),
        360,
        150,
    )
    .await;
    // Every fire runs, each when the previous has ended.
    let fires: Vec<_> = queue.iter().map(|r| r.0).collect();
    assert_eq!(fires, vec![t(10, 1, 0), t(10, 2, 0), t(10, 3, 0)]);
    let starts: Vec<_> = queue.iter().map(|r| r.1).collect();
    assert_eq!(starts, vec![t(10, 1, 0), t(10, 3, 30), t(10, 6, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_paused_schedule_does_not_fire_and_state_survives_restarts() {
    let (_d, reg) = open();
    let first = drive(
        &reg,
        schedule("* * * * *", Catchup::All, Overlap::Skip),
        t(10, 0, 30),
        80,
        1,
    )
    .await;
    assert_eq!(first.len(), 1);
    let mut state = reg.schedule_state("nightly").unwrap().unwrap();
    state.paused = true;
    reg.save_schedule_state(&state).unwrap();
    // Paused: neither the missed fires nor new ones run, but they count as handled.
    let paused = drive(
        &reg,
        schedule("* * * * *", Catchup::All, Overlap::Skip),
        t(10, 5, 30),
        120,
        1,
    )
    .await;
    assert!(paused.is_empty(), "{paused:?}");
    let state = reg.schedule_state("nightly").unwrap().unwrap();
    assert_eq!(state.last_fire_ms, Some(t(10, 7, 0).timestamp_millis()));
}

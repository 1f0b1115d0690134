//! The Collector with synthetic times: percentiles at finish, tick
//! boundaries, duplicates and losses, a storm's way back, merge.

use super::*;

const MS: Duration = Duration::from_millis(1);

/// Command `seq` scheduled at `t0 + at`, sent `late` after, accepted,
/// received and acked `took` after its schedule.
fn command(c: &mut Collector, t0: Instant, seq: u64, at: Duration, late: Duration, took: Duration) {
    let scheduled = t0 + at;
    c.push(Sample::Started {
        seq,
        target: 0,
        scheduled,
        sent: scheduled + late,
    });
    c.push(Sample::Answered {
        seq,
        status: 202,
        at: scheduled + late + MS,
    });
    c.push(Sample::Received {
        seq,
        persona: Persona::WellBehaved,
        at: scheduled + took,
    });
    c.push(Sample::Acked {
        seq,
        at: scheduled + took,
    });
}

/// Command `seq` sent at `t0` and answered with `status` 1 ms later.
fn answered(c: &mut Collector, t0: Instant, seq: u64, status: u16) {
    c.push(Sample::Started {
        seq,
        target: 0,
        scheduled: t0,
        sent: t0,
    });
    c.push(Sample::Answered {
        seq,
        status,
        at: t0 + MS,
    });
}

#[test]
fn finish_gives_the_percentiles_from_the_scheduled_time() {
    let t0 = Instant::now();
    let mut c = Collector::new(1);
    // 1..=100 ms, each sent 1 ms late: the corrected latency counts the
    // lateness, the uncorrected does not.
    for seq in 0..100 {
        command(
            &mut c,
            t0,
            seq,
            seq as u32 * 10 * MS,
            MS,
            (seq as u32 + 1) * MS,
        );
    }
    let done = c.finish();
    assert_eq!(
        (done.scheduled, done.accepted, done.received, done.acked),
        (100, 100, 100, 100)
    );
    assert_eq!(done.lost, 0);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    assert!(
        (ms(&done.push_ack, 0.5) - 50.0).abs() < 0.1,
        "{}",
        ms(&done.push_ack, 0.5)
    );
    assert!((ms(&done.push_ack, 0.99) - 99.0).abs() < 0.1);
    assert!((ms(&done.push_ack_uncorrected, 0.5) - 49.0).abs() < 0.1);
    assert_eq!(done.push_ack.max(), done.push_receive.max());
    assert_eq!(done.accept.len(), 100);
    assert_eq!(done.ack_sample.len(), 100);
}

#[test]
fn a_tick_closes_one_second_of_the_timeline() {
    let t0 = Instant::now();
    let mut c = Collector::new(1);
    c.push(Sample::Connected {
        persona: Persona::WellBehaved,
        took: 3 * MS,
        reconnect: false,
        at: t0,
    });
    command(&mut c, t0, 0, Duration::ZERO, Duration::ZERO, 5 * MS);
    command(&mut c, t0, 1, 10 * MS, Duration::ZERO, 7 * MS);
    let live = c.tick();
    assert_eq!((live.connected, live.sent, live.acked), (1, 2, 2));
    // Nothing in the second second but a disconnect.
    c.push(Sample::Disconnected {
        persona: Persona::WellBehaved,
        reason: "1006".into(),
    });
    c.tick();
    let done = c.finish();
    assert_eq!(done.timeline.len(), 2);
    let (first, second) = (&done.timeline[0], &done.timeline[1]);
    assert_eq!(
        (
            first.t,
            first.sent,
            first.received,
            first.acked,
            first.connected
        ),
        (0, 2, 2, 2, 1)
    );
    assert!((first.p99_ms - 7.0).abs() < 0.01, "{}", first.p99_ms);
    assert!((first.p50_ms - 5.0).abs() < 0.01, "{}", first.p50_ms);
    assert!((first.p999_ms - 7.0).abs() < 0.01, "{}", first.p999_ms);
    assert_eq!(
        (second.t, second.sent, second.acked, second.connected),
        (1, 0, 0, 0)
    );
    assert_eq!(
        (second.p50_ms, second.p99_ms, second.p999_ms),
        (0.0, 0.0, 0.0),
        "the second's histogram was reset"
    );
    assert_eq!(done.personas["well_behaved"].disconnects["1006"], 1);
}

#[test]
fn duplicates_lost_commands_and_rejections_are_counted_once() {
    let t0 = Instant::now();
    let mut c = Collector::new(1);
    command(&mut c, t0, 0, Duration::ZERO, Duration::ZERO, 2 * MS);
    // Delivered twice, acked twice: one receipt, one duplicate, one ack.
    c.push(Sample::Received {
        seq: 0,
        persona: Persona::WellBehaved,
        at: t0 + 9 * MS,
    });
    c.push(Sample::Acked {
        seq: 0,
        at: t0 + 9 * MS,
    });
    // Accepted and never received: lost.
    answered(&mut c, t0, 1, 202);
    // Refused: not lost, counted by its status.
    answered(&mut c, t0, 2, 503);
    answered(&mut c, t0, 3, 0);
    // No answer (a crash cut the post off), yet stored and delivered:
    // received and unanswered, neither accepted nor lost.
    answered(&mut c, t0, 4, 0);
    c.push(Sample::Received {
        seq: 4,
        persona: Persona::WellBehaved,
        at: t0 + 9 * MS,
    });
    let done = c.finish();
    assert_eq!(
        (done.received, done.duplicates, done.acked, done.lost),
        (2, 1, 1, 1)
    );
    assert_eq!((done.accepted, done.unanswered), (2, 1));
    assert_eq!(done.rejected["HTTP 503"], 1);
    assert_eq!(done.rejected["no answer"], 2);
}

#[test]
fn a_storm_measures_the_way_back() {
    let t0 = Instant::now();
    let mut c = Collector::new(1);
    for _ in 0..3 {
        c.push(Sample::Connected {
            persona: Persona::WellBehaved,
            took: MS,
            reconnect: false,
            at: t0,
        });
    }
    c.push(Sample::Storm {
        at: t0 + Duration::from_secs(1),
    });
    for k in 1..=3u32 {
        c.push(Sample::Disconnected {
            persona: Persona::WellBehaved,
            reason: "1012".into(),
        });
        c.push(Sample::Connected {
            persona: Persona::WellBehaved,
            took: k * 100 * MS,
            reconnect: true,
            at: t0 + Duration::from_secs(1) + k * 100 * MS,
        });
    }
    // The first ack of a command sent after the storm: traffic flows again.
    command(
        &mut c,
        t0,
        7,
        Duration::from_millis(1500),
        Duration::ZERO,
        20 * MS,
    );
    let done = c.finish();
    assert_eq!(done.storm_fleet, 3);
    assert_eq!(done.storm_returns, [100 * MS, 200 * MS, 300 * MS]);
    assert_eq!(done.storm_flowing, Some(520 * MS));
    assert_eq!(done.reconnect.len(), 3);
    assert_eq!(done.connect.len(), 3);
}

#[test]
fn merge_adds_two_collectors_of_one_run() {
    let t0 = Instant::now();
    let (mut a, mut b) = (Collector::new(1), Collector::new(2));
    command(&mut a, t0, 0, Duration::ZERO, Duration::ZERO, 10 * MS);
    a.tick();
    command(
        &mut a,
        t0,
        1,
        Duration::from_secs(1),
        Duration::ZERO,
        30 * MS,
    );
    a.tick();
    command(&mut b, t0, 2, Duration::ZERO, Duration::ZERO, 20 * MS);
    b.tick();
    // Command 3 was sent through `a` and delivered to an agent of `b`.
    answered(&mut a, t0, 3, 202);
    b.push(Sample::Received {
        seq: 3,
        persona: Persona::WellBehaved,
        at: t0 + 5 * MS,
    });
    b.push(Sample::Error { kind: "x".into() });
    a.merge(b);
    let done = a.finish();
    assert_eq!((done.scheduled, done.accepted, done.acked), (4, 4, 3));
    assert_eq!(done.received, 4);
    assert_eq!(done.lost, 0, "received through the other collector");
    assert_eq!(done.push_ack.len(), 3);
    assert_eq!(done.errors["x"], 1);
    assert_eq!(done.timeline.len(), 2);
    assert_eq!((done.timeline[0].sent, done.timeline[0].acked), (2, 2));
    assert_eq!((done.timeline[1].t, done.timeline[1].sent), (1, 1));
    assert!(
        (done.timeline[0].p99_ms - 20.0).abs() < 0.05,
        "the larger p99 of the two"
    );
    assert!(
        (done.timeline[0].p50_ms - 20.0).abs() < 0.05
            && (done.timeline[0].p999_ms - 20.0).abs() < 0.05,
        "the larger p50 and p99.9 too"
    );
}

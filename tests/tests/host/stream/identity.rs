//! Guests that pretend: a connection that says hello as another guest first, one that takes a
//! dropped guest's resume point and extends its chain, one that sits on a guest's name. Each
//! attack runs twice: against a listener with the guest's key (refused, the real guest's copy
//! completes byte for byte) and against the same listener without one (`--no-auth`), where it
//! succeeds, which is what shows the proof is the defence.
use std::time::Duration;

use super::harness::*;
use guard::stream::{
    CollectorOptions, FailureKind, GuestStatus, RefusalCode, StreamKey, StreamVerdict,
    wire::Control,
};

/// The attack of issue 29: an impostor says hello as web-1 before web-1 does and sends a
/// made-up session; then web-1 streams its own.
fn impersonate(keyed: bool) -> (Vec<GuestStatus>, guard::stream::SenderStats, bool) {
    let scratch = TempDir::new("impersonate");
    let host = Host::start(&scratch);
    let web = host.listen("web-1", keyed.then(|| StreamKey::generate().unwrap()));
    let other = host.guest("evil-1");
    let mut seen = Vec::new();
    // From another guest's transport, with that guest's own valid key: the name is not its.
    let (_raw, answer) = Raw::handshake(&other.socket, "web-1", other.key.as_ref());
    assert!(
        matches!(
            &answer,
            Control::Refused {
                code: RefusalCode::NameMismatch,
                ..
            }
        ),
        "{answer:?}"
    );
    seen.push(host.verdict_of(Some("evil-1")));
    // On web-1's own transport (a tenant inside web-1), with a key of its own making.
    let guess = StreamKey::generate().unwrap();
    let (mut impostor, answer) = Raw::handshake(&web.socket, "web-1", Some(&guess));
    if let Control::Resume(_) = answer {
        for line in forged_session(5) {
            impostor.send(&line).unwrap();
        }
        impostor.connection.shutdown();
    }
    seen.push(host.verdict_of(Some("web-1")));
    let log = scratch.0.join("web-1-log");
    write_session(&log, 50, false);
    let stats = ship(&web, &log, Duration::from_secs(30));
    seen.push(host.stream_of("web-1"));
    let identical = files_of(&host.collector.guest_dir("web-1")) == files_of(&log);
    (seen, stats, identical)
}

#[test]
fn first_come_impersonation_is_refused() {
    let (seen, stats, identical) = impersonate(true);
    assert!(
        seen[0]
            .to_string()
            .contains("this transport is guest evil-1's"),
        "{}",
        seen[0]
    );
    assert_eq!(
        seen[1].verdict,
        Some(StreamVerdict::Refused {
            code: RefusalCode::AuthenticationFailed,
            reason: "authentication failed".into()
        }),
        "{}",
        seen[1]
    );
    assert!(
        seen[2].verdict.as_ref().unwrap().is_complete(),
        "{}",
        seen[2]
    );
    assert!(stats.delivered && stats.healthy(), "{stats:?}");
    assert!(
        identical,
        "the host's copy is web-1's own log, byte for byte"
    );

    // The defence removed (no key): the impostor's made-up session is the copy, and web-1 is
    // forked from it on every try.
    let (seen, stats, identical) = impersonate(false);
    assert!(
        seen[1].verdict.as_ref().unwrap().is_complete(),
        "{}",
        seen[1]
    );
    assert_eq!(
        seen[2].verdict,
        Some(StreamVerdict::Forked { at_seq: 0 }),
        "{}",
        seen[2]
    );
    assert_eq!(stats.failure.unwrap().kind, FailureKind::Forked);
    assert!(!identical && !stats.delivered);
}

/// db-1 drops after some records; a tenant connects as db-1, takes the resume point, extends
/// the chain with a forged record and a stop; then db-1 comes back.
fn hijack(keyed: bool) -> (GuestStatus, GuestStatus, guard::stream::SenderStats, bool) {
    let scratch = TempDir::new("hijack");
    let host = Host::start(&scratch);
    let db = host.listen("db-1", keyed.then(|| StreamKey::generate().unwrap()));
    let log = scratch.0.join("db-1-log");
    write_session(&log, 4, true);
    ship(&db, &log, Duration::from_secs(2));
    let died = host.stream_of("db-1");
    assert!(
        matches!(died.verdict, Some(StreamVerdict::GuestDied { .. })),
        "{died}"
    );
    let guess = StreamKey::generate().unwrap();
    let (mut tenant, answer) = Raw::handshake(&db.socket, "db-1", Some(&guess));
    if let Control::Resume(resume) = &answer {
        let forged = forge(
            resume.next_seq,
            "oom_kill",
            r#"{"made_up":true}"#,
            &resume.head,
        );
        let stop = forge(
            resume.next_seq + 1,
            "stop",
            &format!(
                r#"{{"count":{},"head":"{}"}}"#,
                resume.next_seq + 1,
                head_after(&forged)
            ),
            &head_after(&forged),
        );
        tenant.send(&forged).unwrap();
        tenant.send(&stop).unwrap();
        tenant.connection.shutdown();
    }
    let hijacked = host.verdict_of(Some("db-1"));
    // db-1 comes back: its log goes on and closes.
    write_session(&log, 3, false);
    let stats = ship(&db, &log, Duration::from_secs(30));
    let back = host.stream_of("db-1");
    let identical = files_of(&host.collector.guest_dir("db-1")) == files_of(&log);
    (hijacked, back, stats, identical)
}

#[test]
fn a_resume_point_cannot_be_hijacked() {
    let (hijacked, back, stats, identical) = hijack(true);
    assert!(
        matches!(
            &hijacked.verdict,
            Some(StreamVerdict::Refused {
                code: RefusalCode::AuthenticationFailed,
                ..
            })
        ),
        "{hijacked}"
    );
    assert!(back.verdict.as_ref().unwrap().is_complete(), "{back}");
    assert!(stats.delivered, "{stats:?}");
    assert!(identical, "the copy is db-1's log, byte for byte");

    // Without a key the tenant's forged record and stop are the copy; db-1 is forked.
    let (hijacked, back, stats, identical) = hijack(false);
    assert!(
        hijacked.verdict.as_ref().unwrap().is_complete(),
        "{hijacked}"
    );
    assert!(
        matches!(back.verdict, Some(StreamVerdict::Forked { .. })),
        "{back}"
    );
    assert!(!identical && !stats.delivered, "{stats:?}");
}

/// Connections that sit on a guest's name: twenty that say hello and never prove anything
/// (more than the per-guest handshake cap), then, on a listener without a key, one that
/// completes its handshake and goes quiet. The agent gets in each time; with the replacement
/// of an idle stream disabled, the quiet squatter locks it out, as in issue 29.
#[test]
fn squatting_a_name_does_not_lock_the_agent_out() {
    let scratch = TempDir::new("squat");
    let host = Host::start(&scratch);
    let app = host.guest("app-1");
    let squatters: Vec<Raw> = (0..20)
        .map(|_| {
            let mut raw = Raw::connect(&app.socket);
            raw.hello("app-1");
            raw
        })
        .collect();
    let log = scratch.0.join("app-1-log");
    write_session(&log, 50, false);
    let stats = ship(&app, &log, Duration::from_secs(30));
    assert!(stats.delivered, "{stats:?}");
    assert!(host.first_complete("app-1").authenticated);
    assert_eq!(files_of(&host.collector.guest_dir("app-1")), files_of(&log));
    assert!(
        host.collector.counters().evicted >= 12,
        "{:?}",
        host.collector.counters()
    );
    drop(squatters);

    let squat = |replace_after: Duration| {
        let scratch = TempDir::new("squat-quiet");
        let mut options = CollectorOptions::new(scratch.0.join("collected"));
        options.limits.replace_after = replace_after;
        let host = Host::with(&scratch, options);
        let app = host.listen("app-2", None);
        let (squatter, answer) = Raw::handshake(&app.socket, "app-2", None);
        assert!(matches!(answer, Control::Resume(_)), "{answer:?}");
        std::thread::sleep(Duration::from_millis(300));
        let log = scratch.0.join("app-2-log");
        write_session(&log, 20, false);
        let stats = ship(&app, &log, Duration::from_secs(5));
        let identical = files_of(&host.collector.guest_dir("app-2")) == files_of(&log);
        drop(squatter);
        (stats, identical, host.collector.counters())
    };
    let (stats, identical, counters) = squat(Duration::from_millis(100));
    assert!(stats.delivered && identical, "{stats:?}");
    assert_eq!(counters.cut, 1, "the squatter was replaced: {counters:?}");
    let (stats, identical, _) = squat(Duration::from_secs(3600));
    assert_eq!(
        stats.failure.map(|failure| failure.kind),
        Some(FailureKind::AlreadyStreaming)
    );
    assert!(!stats.delivered && !identical);
}

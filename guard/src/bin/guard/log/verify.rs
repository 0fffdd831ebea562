//! `guard log verify`: the verifier's report, as text or JSON, and its exit status.
use std::process::ExitCode;

use guard::forensic::{self, RepairOutcome, VerifyReport};

use super::{EXIT_ENDED_ABRUPTLY, EXIT_TORN_TAIL, VerifyArgs};

pub(super) fn verify(dir: &std::path::Path, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let print = |report: &VerifyReport| {
        if args.json {
            print_json_report(report)
        } else {
            print_report(dir, report)
        }
    };
    if !args.repair {
        let report = forensic::verify(dir)?;
        return Ok(print(&report));
    }
    match forensic::repair(dir)? {
        RepairOutcome::Clean(report) => {
            if !args.json {
                outln!("nothing to repair");
            }
            Ok(print(&report))
        }
        RepairOutcome::Repaired {
            torn,
            removed,
            report,
        } => {
            if !args.json {
                outln!(
                    "repaired: removed torn line {} of {} ({} bytes): {}",
                    torn.line,
                    torn.path.display(),
                    torn.bytes,
                    preview(&removed)
                );
            }
            Ok(print(&report))
        }
        RepairOutcome::Refused(report) => {
            let code = print(&report);
            if !args.json {
                outln!(
                    "not repaired: --repair only removes a torn final line; the log was left \
                     untouched"
                );
            }
            Ok(code)
        }
    }
}

fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let ellipsis = if bytes.len() > MAX { "…" } else { "" };
    format!("{:?}{ellipsis}", text)
}

fn print_report(dir: &std::path::Path, report: &VerifyReport) -> ExitCode {
    let (_, code) = verdict(report);
    let seqs = match report.last_seq {
        Some(last) => format!("seq 0..={last}"),
        None => "no records".to_owned(),
    };
    let summary = format!(
        "{} file(s), {} complete record(s), {seqs}",
        report.files, report.records
    );
    if let Some(problem) = &report.problem {
        outln!("FAILED: {problem}");
        outln!("{summary} verified before the first defect");
        return code;
    }
    let head = report.head.as_deref().unwrap_or("-");
    if let Some(torn) = &report.torn_tail {
        outln!("TORN TAIL: {torn}");
        outln!("{summary} verified; head {head}");
        return code;
    }
    if let Some(dropped) = &report.dropped {
        outln!(
            "note: {}..={} (records seq {}..={}) were removed under the log's byte budget, as \
             its dropped records say",
            dropped.first_file,
            dropped.last_file,
            dropped.first_seq,
            dropped.last_seq
        );
    }
    if report.abrupt_earlier_sessions > 0 {
        outln!(
            "note: {} earlier session(s) ended without a stop record (the guard died and a \
             later one continued the log)",
            report.abrupt_earlier_sessions
        );
    }
    if report.gaps > 0 {
        outln!(
            "note: {} gap record(s) name {} record(s) the writer counted but could not write \
             (a full or failing disk)",
            report.gaps,
            report.missing_records
        );
    }
    if let Some(session) = report.ended_abruptly() {
        outln!("ENDED ABRUPTLY: {}", abrupt_end(&session));
        outln!("{summary} verified; head {head}");
        return code;
    }
    outln!("ok: {}: {summary}; head {head}", dir.display());
    code
}

fn abrupt_end(session: &forensic::Session) -> String {
    format!(
        "the last session (from seq {}) ended without a stop after seq {}: records after it may \
         be missing",
        session.started_at, session.last_seq
    )
}

/// What `verify` concludes, most serious first, and its exit status.
fn verdict(report: &VerifyReport) -> (&'static str, ExitCode) {
    if report.problem.is_some() {
        ("failed", ExitCode::FAILURE)
    } else if report.torn_tail.is_some() {
        ("torn_tail", ExitCode::from(EXIT_TORN_TAIL))
    } else if report.ended_abruptly().is_some() {
        ("ended_abruptly", ExitCode::from(EXIT_ENDED_ABRUPTLY))
    } else {
        ("ok", ExitCode::SUCCESS)
    }
}

fn print_json_report(report: &VerifyReport) -> ExitCode {
    let (verdict, code) = verdict(report);
    let session = report.last_session.map(|session| {
        serde_json::json!({
            "started_at": session.started_at,
            "last_seq": session.last_seq,
            "stopped": session.stopped,
        })
    });
    let json = serde_json::json!({
        "verdict": verdict,
        "files": report.files,
        "records": report.records,
        "last_seq": report.last_seq,
        "head": report.head,
        "sessions": report.sessions,
        "abrupt_earlier_sessions": report.abrupt_earlier_sessions,
        "gaps": report.gaps,
        "missing_records": report.missing_records,
        "last_session": session,
        "ended_abruptly": report.ended_abruptly().map(|session| abrupt_end(&session)),
        "torn_tail": report.torn_tail.as_ref().map(ToString::to_string),
        "problem": report.problem.as_ref().map(ToString::to_string),
        "dropped": report.dropped.as_ref().map(|dropped| serde_json::json!({
            "first_file": dropped.first_file,
            "last_file": dropped.last_file,
            "first_seq": dropped.first_seq,
            "last_seq": dropped.last_seq,
        })),
    });
    outln!("{json}");
    code
}

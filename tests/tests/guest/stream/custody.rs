//! Custody of the evidence, in real guests: a tenant process inside a container that `guard
//! run` started tries to reach the host's evidence port and speak as its guest
//! (`guard-forge`: a made-up log, the guest's name and boot id, a proof with a key it
//! invents).
//!
//! - With the default spec it is refused in the guest: the seccomp rule denies its AF_VSOCK
//!   socket.
//! - With the rule removed (`guard run --omit-seccomp-rule`, tests only) it connects and says
//!   hello as its guest, before the agent streams and while it does; it has no key, so the
//!   host refuses it (`authentication failed`), and the agent's own streams end `complete`
//!   with a copy byte for byte the guest's log.
//! - Two-sided: against a collector that takes the VM without a key (`--no-auth`), the same
//!   tenant's forgery becomes the host's copy (`complete`, its records), and the agent's own
//!   history is then refused as a fork: the test above could fail.
use std::time::Duration;

use guard::stream::{GuestStatus, RefusalCode, StreamVerdict};
use guard_tests::{
    guest::{assert_log_verifies, guest},
    vsock_kernels,
};
use serde_json::Value;
use xtask::vm::{Completed, VmEntry};

use super::host::{HostEnd, PORT, boot, files_of, guest_files, run, stream_options};

/// The records the forger makes up (its `start`, three of its own, its `stop`).
const FORGED_RECORDS: u64 = 5;

/// The scenario: a busybox rootfs with the forger; the forger first while the agent is not
/// streaming (rule removed), then twice while the agent streams its own log (default spec,
/// rule removed). Each step's status and the forger's summary go to /results.
fn scenario(name: &str, stream: &str) -> String {
    format!(
        r#"set -u
mkdir -p /tmp/rootfs/bin /tmp/rootfs/lib /tmp/rootfs/lib64 /tmp/rootfs/tmp
cp /bin/busybox /tmp/rootfs/bin/ && ln -s busybox /tmp/rootfs/bin/sh
cp -a /lib/. /tmp/rootfs/lib/ && cp -a /lib64/. /tmp/rootfs/lib64/
cp /bin/guard-forge /tmp/rootfs/bin/
forge="guard-forge --port {PORT} --guest {name}"
# 0: the rule removed, the agent not streaming yet: the tenant comes first.
guard run --no-budget --quiet --id first --rootfs /tmp/rootfs --omit-seccomp-rule -- $forge \
    > /results/first.out 2> /results/first.err
echo "first exit=$?"
# 1: the default spec, the agent streaming its own log.
guard run --no-budget --quiet --id default --rootfs /tmp/rootfs --log /results/log {stream} -- $forge \
    > /results/default.out 2> /results/default.err
echo "default exit=$?"
# 2: the rule removed, the agent streaming.
guard run --no-budget --quiet --id unfiltered --rootfs /tmp/rootfs --log /results/log {stream} \
    --omit-seccomp-rule -- $forge > /results/unfiltered.out 2> /results/unfiltered.err
echo "unfiltered exit=$?"
"#
    )
}

/// The forger's summary line in `/results/<step>.out`.
fn summary(done: &Completed, step: &str) -> Value {
    let out = done.file_str(&format!("{step}.out")).unwrap_or_default();
    out.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|line| line.get("summary").cloned())
        .unwrap_or_else(|| {
            panic!(
                "{step}: no summary from the forger in {out:?}\nstderr: {}",
                done.file_str(&format!("{step}.err")).unwrap_or_default()
            )
        })
}

/// A step's exit status, from the scenario's stdout.
fn exit_of(done: &Completed, step: &str) -> String {
    let out = done.stdout_str();
    out.lines()
        .find_map(|line| line.strip_prefix(&format!("{step} exit=")))
        .unwrap_or_else(|| panic!("no exit status of {step} in {out}"))
        .to_string()
}

/// Boots the guest of `vm` with the forger, runs the scenario, and returns its results and
/// every stream of the guest the collector ended, until `until` says the last one is in.
fn attack(
    kernel: &str,
    host: &HostEnd,
    vm: &VmEntry,
    stream: &str,
    until: impl FnMut(&StreamVerdict) -> bool,
) -> (Completed, Vec<GuestStatus>) {
    let guest = guest(kernel).expect("checked by the caller");
    let forge = guest.bin_dir.join("guard-forge");
    assert!(forge.is_file(), "{} is missing", forge.display());
    let config = boot(&guest, "stream-custody", &scenario(&vm.name, stream), vm).binary(forge);
    let outcome = run(&config);
    let done = outcome.expect_completed().clone();
    assert_eq!(done.exit_code, 0, "{}", done.stderr_str());
    let until = std::cell::RefCell::new(until);
    let ended = host.streams_until(
        &vm.name,
        |verdict| (until.borrow_mut())(verdict),
        Duration::from_secs(120),
        &done.stderr_str(),
    );
    (done, ended)
}

fn refused_for_authentication(summary: &Value) -> bool {
    summary["replies"]
        .as_array()
        .and_then(|replies| replies.last())
        .is_some_and(|last| last["refused"]["code"] == "authentication_failed")
}

fn tenant_cannot_reach_or_forge_the_copy(kernel: &str) {
    if guest(kernel).is_none() {
        return;
    }
    let name = format!("custody-{}", kernel.replace('.', "-"));
    let host = HostEnd::start("custody");
    let vm = host.vm(&name);
    // Until the agent's two runs' streams are complete (the forger's are refused), or the
    // agent's history was refused as a fork: the copy is then not the agent's, and the
    // assertions below say why.
    let mut complete = 0;
    let (done, streams) = attack(kernel, &host, &vm, &stream_options(&name), |verdict| {
        complete += usize::from(verdict.is_complete());
        complete == 2 || matches!(verdict, StreamVerdict::Forked { .. })
    });

    // (a) The default spec: no socket at all.
    let default = summary(&done, "default");
    assert!(
        default["socket"]
            .as_str()
            .is_some_and(|error| error.contains("Operation not permitted")),
        "the default spec must refuse the tenant's socket: {default}"
    );
    assert_eq!(default["connect"], "not tried", "{default}");
    // (b) The rule removed: the tenant reaches the port and speaks as its guest, first and
    // while the agent streams; without the key it is refused, nothing of it is stored.
    for step in ["first", "unfiltered"] {
        let forged = summary(&done, step);
        assert_eq!(
            (&forged["socket"], &forged["connect"]),
            (&"ok".into(), &"ok".into()),
            "{step}: {forged}"
        );
        assert!(
            forged["replies"][0]["challenge"]["nonce"].is_string(),
            "{step}: the host challenges: {forged}"
        );
        assert!(refused_for_authentication(&forged), "{step}: {forged}");
        assert_eq!(forged["sent"], 0, "{step}: {forged}");
    }
    let refused: Vec<&GuestStatus> = streams
        .iter()
        .filter(|status| {
            matches!(
                &status.verdict,
                Some(StreamVerdict::Refused {
                    code: RefusalCode::AuthenticationFailed,
                    ..
                })
            )
        })
        .collect();
    assert!(
        refused.len() >= 2,
        "the host refused the tenant's connections: {streams:#?}"
    );
    // The agent's own streams: authenticated, and the copy is its log.
    let agent: Vec<&GuestStatus> = streams.iter().filter(|s| s.is_stream()).collect();
    for status in &agent {
        assert!(status.authenticated, "{status}");
    }
    for step in ["default", "unfiltered"] {
        assert_eq!(
            exit_of(&done, step),
            "0",
            "{step}: the agent's log was delivered"
        );
    }
    assert_eq!(exit_of(&done, "first"), "0");
    let copy = host.copy(&name);
    assert_eq!(
        files_of(&copy),
        guest_files(&done, "log"),
        "the host's copy is the agent's log, byte for byte"
    );
    assert_log_verifies(&copy);
    eprintln!(
        "{kernel}: the tenant refused in the guest (default spec) and by the host (no key, {} \
         connection(s)); the agent's {} stream(s) complete, {} record(s) held",
        refused.len(),
        agent.len(),
        agent.last().map_or(0, |status| status.records)
    );
}

/// The same tenant against a collector that takes the VM without a key: its forgery is what
/// the host holds, and the agent's real history is refused as a fork from seq 0.
fn without_a_key_the_tenant_forges_the_copy(kernel: &str) {
    if guest(kernel).is_none() {
        return;
    }
    let name = format!("nokey-{}", kernel.replace('.', "-"));
    let host = HostEnd::start_with("nokey", true);
    let vm = host.vm_without_key(&name);
    let stream = format!("--stream vsock:{PORT} --stream-name {name}");
    // The forger's stream, then the agent's refused as a fork.
    let (done, streams) = attack(kernel, &host, &vm, &stream, |verdict| {
        matches!(verdict, StreamVerdict::Forked { .. })
    });
    let first = summary(&done, "first");
    assert_eq!(first["replies"][0]["resume"]["next_seq"], 0, "{first}");
    assert_eq!(first["sent"], FORGED_RECORDS, "{first}");
    assert_eq!(first["acked"], FORGED_RECORDS, "{first}");
    let forged = &streams
        .iter()
        .find(|status| status.is_stream())
        .expect("the forger's stream");
    assert!(!forged.authenticated, "{forged}");
    assert_eq!(
        forged.verdict,
        Some(StreamVerdict::Complete {
            last_seq: FORGED_RECORDS - 1
        }),
        "the forgery is a complete copy: {streams:#?}"
    );
    let copy = host.copy(&name);
    let held: Vec<u8> = files_of(&copy)
        .into_iter()
        .flat_map(|(_, bytes)| bytes)
        .collect();
    assert!(
        String::from_utf8_lossy(&held).contains("\"forged\""),
        "the host holds the tenant's records"
    );
    assert_ne!(files_of(&copy), guest_files(&done, "log"));
    assert!(
        streams
            .iter()
            .any(|status| matches!(status.verdict, Some(StreamVerdict::Forked { at_seq: 0 }))),
        "the agent's own history is refused as a fork: {streams:#?}"
    );
    assert_eq!(
        exit_of(&done, "default"),
        "5",
        "the agent says its log was not delivered"
    );
}

vsock_kernels!(
    tenant_cannot_reach_or_forge_the_copy,
    without_a_key_the_tenant_forges_the_copy,
);

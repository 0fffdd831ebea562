//! guard-forge: a tenant that tries to speak to the host's evidence port as its guest. It
//! makes up a forensic log of its own (a valid chain, closed with a `stop`), connects to the
//! host (CID 2) at the port the guest agent streams to, and follows docs/STREAM.md as the
//! guest would: a hello with the guest's name and boot id, a proof made with a key it invents
//! (it cannot read the guest's), then its records from the host's resume point. It reports
//! each step as it goes, and a summary as its last line:
//! `{"summary":{"socket":…,"connect":…,"replies":[…],"sent":N,"acked":M}}`.
//!
//! Run inside a container with guard's default spec, the socket is refused (seccomp); with the
//! rule removed it gets as far as the host lets it.
use std::{
    io::{BufRead, BufReader, Write},
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use guard::forensic::{self, FsyncPolicy, LogOptions, LogWriter, StartInfo, serde_json::json};
use serde_json::Value;
use sha2::{Digest, Sha256};

const USAGE: &str = "usage: guard-forge --port PORT --guest NAME [--records N]";

/// How long the forger waits for any line from the host.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let option = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|index| args.get(index + 1))
            .cloned()
    };
    let (Some(port), Some(guest)) = (
        option("--port").and_then(|port| port.parse::<u32>().ok()),
        option("--guest"),
    ) else {
        eprintln!("guard-forge: --port PORT and --guest NAME are required\n{USAGE}");
        return ExitCode::from(2);
    };
    let records: u64 = option("--records")
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let summary = forge(port, &guest, records);
    println!("{}", json!({ "summary": summary }));
    ExitCode::SUCCESS
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

/// The guest's boot id: the forger claims to be this boot's agent.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A log of `records` made-up records, closed, in a scratch folder: its lines.
fn forged_log(records: u64) -> Result<Vec<Vec<u8>>, String> {
    let dir = PathBuf::from(format!("/tmp/forged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some(boot_id()),
        ..LogOptions::default()
    };
    let mut writer = LogWriter::create(&dir, options, &StartInfo::new(1, json!(null)))
        .map_err(|error| format!("writing the forged log: {error}"))?;
    for i in 0..records.saturating_sub(2) {
        writer
            .append(
                "oom_victim",
                Some("made-up"),
                &json!({"forged": i, "victim_pid": 1}),
            )
            .map_err(|error| format!("writing the forged log: {error}"))?;
    }
    writer
        .close()
        .map_err(|error| format!("closing the forged log: {error}"))?;
    let mut lines = Vec::new();
    for file in forensic::layout::list_files(&dir).map_err(|error| error.to_string())? {
        let bytes = std::fs::read(&file.path).map_err(|error| error.to_string())?;
        lines.extend(bytes.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
    }
    Ok(lines)
}

/// A vsock stream connected to the host at `port`, or the failed step's error.
fn connect(port: u32) -> Result<std::fs::File, (&'static str, String)> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(("socket", format!("socket(AF_VSOCK): {}", errno_text())));
    }
    // SAFETY: the kernel just returned this descriptor; it is owned here from now on.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: a zeroed sockaddr_vm is valid; sizes are passed with the pointers.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let mut address: libc::sockaddr_vm = std::mem::zeroed();
        address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        address.svm_cid = libc::VMADDR_CID_HOST;
        address.svm_port = port;
        if libc::connect(
            fd,
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ) != 0
        {
            return Err((
                "connect",
                format!("connect to CID 2 port {port}: {}", errno_text()),
            ));
        }
    }
    Ok(std::fs::File::from(socket))
}

fn forge(port: u32, guest: &str, records: u64) -> Value {
    let mut summary =
        json!({"socket": "ok", "connect": "ok", "replies": [], "sent": 0, "acked": 0});
    let lines = match forged_log(records) {
        Ok(lines) => lines,
        Err(error) => {
            summary["error"] = json!(error);
            return summary;
        }
    };
    let stream = match connect(port) {
        Ok(stream) => stream,
        Err((step, error)) => {
            summary[step] = json!(error);
            if step == "socket" {
                summary["connect"] = json!("not tried");
            }
            return summary;
        }
    };
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    let mut replies = Vec::new();
    let mut send = |line: &[u8]| writer.write_all(line).map_err(|error| error.to_string());
    let mut reply = || -> Option<Value> {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => {
                let value: Value = serde_json::from_str(line.trim_end())
                    .unwrap_or_else(|_| json!({"unparsed": line.trim_end()}));
                Some(value)
            }
            _ => None,
        }
    };
    let hello = json!({"hello": {"version": 2, "guest": guest, "boot_id": boot_id()}});
    if let Err(error) = send(format!("{hello}\n").as_bytes()) {
        summary["error"] = json!(format!("sending the hello: {error}"));
        return summary;
    }
    let mut answer = reply();
    if let Some(challenge) = answer.as_ref().and_then(|a| a.get("challenge")).cloned() {
        replies.push(json!({"challenge": challenge}));
        // Without the guest's key: a MAC over the right message with a key of its own.
        let nonce = challenge["nonce"].as_str().unwrap_or_default();
        let mac = Sha256::digest(format!("made-up key {nonce} {guest}"));
        let proof = json!({"proof": {"mac": format!("{mac:x}")}});
        if let Err(error) = send(format!("{proof}\n").as_bytes()) {
            summary["error"] = json!(format!("sending the proof: {error}"));
            summary["replies"] = json!(replies);
            return summary;
        }
        answer = reply();
    }
    let Some(answer) = answer else {
        replies.push(json!("the host hung up"));
        summary["replies"] = json!(replies);
        return summary;
    };
    replies.push(answer.clone());
    let Some(next) = answer["resume"]["next_seq"].as_u64() else {
        summary["replies"] = json!(replies);
        return summary;
    };
    let to_send = &lines[usize::try_from(next).unwrap_or(usize::MAX).min(lines.len())..];
    let mut sent = 0u64;
    for line in to_send {
        if send(line).is_err() {
            break;
        }
        sent += 1;
    }
    summary["sent"] = json!(sent);
    // The acks that cover what was sent (or the host's last word).
    let mut acked = next;
    while acked < next + sent {
        match reply() {
            Some(line) => {
                if let Some(upto) = line["ack"]["next_seq"].as_u64() {
                    acked = upto;
                } else {
                    replies.push(line);
                    break;
                }
            }
            None => break,
        }
    }
    summary["acked"] = json!(acked);
    summary["replies"] = json!(replies);
    summary
}

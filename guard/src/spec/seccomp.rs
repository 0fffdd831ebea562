//! The seccomp rule every container gets: no AF_VSOCK sockets and no io_uring.
//!
//! Inside a guest, AF_VSOCK is not confined by network namespaces (before Linux 7.0): any
//! process, a container's included, can connect to the host (CID 2) and reach the port the
//! guest agent streams its evidence to (docs/STREAM.md). The rule denies `socket` and
//! `socketpair` with domain `AF_VSOCK` (40), and `io_uring_setup`, `io_uring_enter` and
//! `io_uring_register`, since io_uring creates sockets (`IORING_OP_SOCKET`) without the
//! `socket` syscall the rule filters. Everything else is allowed.
//!
//! The errno is `EPERM`: a refusal by policy, as the kernel gives for a socket family a caller
//! may not use, as Docker's default profile gives for AF_VSOCK, and as `kernel.io_uring_disabled`
//! gives for io_uring, so software written for containers already reads it as "not here". It
//! also tells the rule's refusal apart from the `EAFNOSUPPORT` of a guest without vsock.
//!
//! A bundle's own profile keeps its rules, and the guard's are merged in so that they hold
//! whatever the profile says: libseccomp lets a rule without argument conditions override a
//! conditional one of the same syscall, so the profile's permissive rules (allow, log, notify,
//! trace) lose the io_uring calls and get `domain != AF_VSOCK` added for `socket` and
//! `socketpair` (and `call != SYS_SOCKET` for i386's `socketcall`). A profile that cannot be
//! enforced as written is refused with an error naming the rule, never passed on for
//! libcontainer to skip with a warning.
use libseccomp::ScmpSyscall;
use oci_spec::{
    OciSpecError,
    runtime::{
        Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
        LinuxSeccompOperator, LinuxSyscall,
    },
};

/// The socket family the rule denies (`AF_VSOCK`).
pub const AF_VSOCK: u64 = libc::AF_VSOCK as u64;
/// The errno a denied call returns.
pub const DENIED_ERRNO: u32 = libc::EPERM as u32;
/// Calls that create sockets of a family given in their first argument.
pub const SOCKET_CALLS: &[&str] = &["socket", "socketpair"];
/// io_uring's calls: it creates sockets without `socket`.
pub const IO_URING_CALLS: &[&str] = &["io_uring_setup", "io_uring_enter", "io_uring_register"];
/// i386's multiplexed socket call, whose first argument is the operation; libseccomp turns a
/// `socket` rule into a rule on `socketcall`'s `SYS_SOCKET` for that ABI (the family sits in
/// memory seccomp cannot read, so every socket made through it is denied there).
const SOCKETCALL: &str = "socketcall";
const SYS_SOCKET: u64 = 1;
/// The highest argument index a seccomp rule can compare (six arguments).
const MAX_ARG_INDEX: usize = 5;

/// A seccomp profile that cannot be enforced as written, or that would undo the guard's rule.
#[derive(Debug, thiserror::Error)]
pub enum SeccompProfileError {
    /// A rule that restricts names a syscall libseccomp does not know: libcontainer would
    /// skip it with a warning and the container would run without the restriction.
    #[error(
        "the bundle's seccomp rule {rule} ({action}) names {name:?}, a syscall libseccomp does \
         not know: the restriction could not be enforced"
    )]
    UnknownSyscall {
        /// The rule's position in `linux.seccomp.syscalls`.
        rule: usize,
        /// Its action.
        action: String,
        /// The name.
        name: String,
    },
    /// A permissive rule for a socket call whose own condition on the family admits
    /// AF_VSOCK; a second condition on the same argument would be OR'd, not AND'd.
    #[error(
        "the bundle's seccomp rule {rule} ({action} {name} when {condition}) lets AF_VSOCK \
         sockets through, which guard denies to every container: narrow it to exclude domain 40"
    )]
    AdmitsVsock {
        /// The rule's position in `linux.seccomp.syscalls`.
        rule: usize,
        /// Its action.
        action: String,
        /// The socket call.
        name: String,
        /// Its conditions, as written.
        condition: String,
    },
    /// An argument index past the sixth argument.
    #[error("the bundle's seccomp rule {rule} compares argument {index}: syscalls have six (0-5)")]
    ArgumentIndex {
        /// The rule's position in `linux.seccomp.syscalls`.
        rule: usize,
        /// The index given.
        index: usize,
    },
    /// oci-spec refused to build a comparison of the guard's rule (its builder has defaults
    /// for every field: not seen).
    #[error("building the guard's seccomp rule: {0}")]
    Build(#[from] OciSpecError),
    /// `SCMP_ACT_NOTIFY` where libcontainer cannot honour it.
    #[error("the bundle's seccomp profile cannot be enforced: {what}")]
    Notify {
        /// What is wrong.
        what: &'static str,
    },
}

fn deny(names: &[&str], args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|name| name.to_string()).collect());
    rule.set_action(LinuxSeccompAction::ScmpActErrno);
    rule.set_errno_ret(Some(DENIED_ERRNO));
    rule.set_args(args);
    rule
}

fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
) -> Result<LinuxSeccompArg, SeccompProfileError> {
    Ok(LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value)
        .build()?)
}

/// The guard's rules: `socket`/`socketpair` with domain AF_VSOCK and the io_uring calls fail
/// with [`DENIED_ERRNO`].
pub fn guard_rules() -> Result<Vec<LinuxSyscall>, SeccompProfileError> {
    Ok(vec![
        deny(
            SOCKET_CALLS,
            Some(vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, AF_VSOCK)?]),
        ),
        deny(IO_URING_CALLS, None),
    ])
}

/// The profile a container without one of its own gets: everything allowed but the guard's
/// rules. On x86-64 it covers the i386 and x32 ABIs too (a filter of the native ABI alone
/// would kill every 32-bit call).
pub fn default_profile() -> Result<LinuxSeccomp, SeccompProfileError> {
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActAllow);
    if cfg!(target_arch = "x86_64") {
        profile.set_architectures(Some(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ]));
    }
    profile.set_syscalls(Some(guard_rules()?));
    Ok(profile)
}

/// An action and its errno as libcontainer enforces them (an errno action without a value
/// returns EPERM; `KILL` is `KILL_THREAD`).
fn enforced(action: LinuxSeccompAction, errno: Option<u32>) -> (LinuxSeccompAction, Option<u32>) {
    match action {
        LinuxSeccompAction::ScmpActKill => (LinuxSeccompAction::ScmpActKillThread, None),
        LinuxSeccompAction::ScmpActErrno => (action, Some(errno.unwrap_or(DENIED_ERRNO))),
        LinuxSeccompAction::ScmpActTrace => (action, errno),
        other => (other, None),
    }
}

/// Whether a rule with this action can let the call run (the call is not refused outright).
fn permissive(action: LinuxSeccompAction) -> bool {
    matches!(
        action,
        LinuxSeccompAction::ScmpActAllow
            | LinuxSeccompAction::ScmpActLog
            | LinuxSeccompAction::ScmpActNotify
            | LinuxSeccompAction::ScmpActTrace
    )
}

/// Whether one comparison holds for a first argument of `value`, as libcontainer compiles it
/// (`SCMP_CMP_MASKED_EQ`: `value & valueTwo == value` of the rule).
fn holds(comparison: &LinuxSeccompArg, value: u64) -> bool {
    let datum = comparison.value();
    match comparison.op() {
        LinuxSeccompOperator::ScmpCmpNe => value != datum,
        LinuxSeccompOperator::ScmpCmpLt => value < datum,
        LinuxSeccompOperator::ScmpCmpLe => value <= datum,
        LinuxSeccompOperator::ScmpCmpEq => value == datum,
        LinuxSeccompOperator::ScmpCmpGe => value >= datum,
        LinuxSeccompOperator::ScmpCmpGt => value > datum,
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            value & comparison.value_two().unwrap_or(0) == datum
        }
    }
}

fn describe(args: &[LinuxSeccompArg]) -> String {
    args.iter()
        .map(|arg| format!("arg{} {} {}", arg.index(), arg.op(), arg.value()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rule` (permissive, naming `call`) narrowed so it cannot admit a first argument of
/// `excluded`: unchanged when its conditions already exclude it, else with `arg0 !=
/// excluded` added. libcontainer ANDs a rule's conditions only when each argument appears
/// once (runc's semantics: repeated indices become one rule per condition, OR'd).
fn narrowed(
    position: usize,
    rule: &LinuxSyscall,
    call: &str,
    excluded: u64,
) -> Result<LinuxSyscall, SeccompProfileError> {
    let args = rule.args().clone().unwrap_or_default();
    let on_first: Vec<&LinuxSeccompArg> = args.iter().filter(|arg| arg.index() == 0).collect();
    let mut indices: Vec<usize> = args.iter().map(|arg| arg.index()).collect();
    indices.sort_unstable();
    indices.dedup();
    let anded = indices.len() == args.len();
    let admits = if anded {
        on_first.iter().all(|arg| holds(arg, excluded))
    } else {
        // OR'd: any condition on another argument, or any on the first that holds, admits.
        on_first.len() != args.len() || on_first.iter().any(|arg| holds(arg, excluded))
    };
    if !admits {
        return Ok(rule.clone());
    }
    if !on_first.is_empty() {
        return Err(SeccompProfileError::AdmitsVsock {
            rule: position,
            action: rule.action().to_string(),
            name: call.to_string(),
            condition: describe(&args),
        });
    }
    let mut narrowed = rule.clone();
    narrowed.set_names(vec![call.to_string()]);
    let mut args = args;
    args.push(arg(0, LinuxSeccompOperator::ScmpCmpNe, excluded)?);
    narrowed.set_args(Some(args));
    Ok(narrowed)
}

/// The rule's names libseccomp knows. One it does not know may be left out only where that
/// cannot let the call run: where the profile's default refuses it anyway (the call stays
/// refused, as on a kernel without it), or where the rule would have allowed it and the
/// default allows it too. A refusal the default would not repeat is an error.
fn known_names(
    position: usize,
    rule: &LinuxSyscall,
    default: (LinuxSeccompAction, Option<u32>),
) -> Result<Vec<String>, SeccompProfileError> {
    let loosens = !permissive(rule.action()) && permissive(default.0);
    let mut known = Vec::new();
    for name in rule.names() {
        if ScmpSyscall::from_name(name).is_ok() {
            known.push(name.clone());
        } else if loosens {
            return Err(SeccompProfileError::UnknownSyscall {
                rule: position,
                action: rule.action().to_string(),
                name: name.clone(),
            });
        } else {
            tracing::info!(
                syscall = %name,
                rule = position,
                "the bundle's seccomp profile names a syscall libseccomp does not know: its \
                 default action applies to it"
            );
        }
    }
    Ok(known)
}

fn check_notify(profile: &LinuxSeccomp) -> Result<(), SeccompProfileError> {
    let rules = profile.syscalls().as_deref().unwrap_or_default();
    let notify = |rule: &&LinuxSyscall| rule.action() == LinuxSeccompAction::ScmpActNotify;
    if profile.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(SeccompProfileError::Notify {
            what: "SCMP_ACT_NOTIFY as the default action",
        });
    }
    if rules
        .iter()
        .filter(notify)
        .any(|rule| rule.names().iter().any(|name| name == "write"))
    {
        return Err(SeccompProfileError::Notify {
            what: "SCMP_ACT_NOTIFY for write, which the notification itself needs",
        });
    }
    if rules.iter().any(|rule| notify(&rule)) && profile.listener_path().is_none() {
        return Err(SeccompProfileError::Notify {
            what: "SCMP_ACT_NOTIFY without a listenerPath",
        });
    }
    Ok(())
}

/// `profile` (a bundle's) checked and with the guard's rules merged in (see the module doc).
pub fn merged(profile: &LinuxSeccomp) -> Result<LinuxSeccomp, SeccompProfileError> {
    rebuilt(profile, true)
}

/// `profile` (a bundle's) checked, without the guard's rules (tests only:
/// [`SpecOptions::omit_seccomp_rule`](super::SpecOptions::omit_seccomp_rule)).
pub fn checked(profile: &LinuxSeccomp) -> Result<LinuxSeccomp, SeccompProfileError> {
    rebuilt(profile, false)
}

fn rebuilt(profile: &LinuxSeccomp, guard: bool) -> Result<LinuxSeccomp, SeccompProfileError> {
    check_notify(profile)?;
    let default = enforced(profile.default_action(), profile.default_errno_ret());
    let mut rules = Vec::new();
    for (position, rule) in profile
        .syscalls()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if let Some(arg) = rule
            .args()
            .iter()
            .flatten()
            .find(|arg| arg.index() > MAX_ARG_INDEX)
        {
            return Err(SeccompProfileError::ArgumentIndex {
                rule: position,
                index: arg.index(),
            });
        }
        let names = known_names(position, rule, default)?;
        if !guard || !permissive(rule.action()) {
            if !names.is_empty() {
                let mut kept = rule.clone();
                kept.set_names(names);
                rules.push(kept);
            }
            continue;
        }
        // The rule's names the guard's rules do not touch stay in it; io_uring's go; each
        // socket call gets a rule of its own, narrowed.
        let mut rest = Vec::new();
        for name in names {
            let excluded = match name.as_str() {
                name if IO_URING_CALLS.contains(&name) => continue,
                name if SOCKET_CALLS.contains(&name) => AF_VSOCK,
                SOCKETCALL => SYS_SOCKET,
                _ => {
                    rest.push(name);
                    continue;
                }
            };
            rules.push(narrowed(position, rule, &name, excluded)?);
        }
        if !rest.is_empty() {
            let mut kept = rule.clone();
            kept.set_names(rest);
            rules.push(kept);
        }
    }
    if guard {
        // A rule with the default's own action adds nothing (libcontainer would skip it with
        // a warning): the default already refuses what it names.
        rules.extend(
            guard_rules()?
                .into_iter()
                .filter(|rule| enforced(rule.action(), rule.errno_ret()) != default),
        );
    }
    let mut rebuilt = profile.clone();
    rebuilt.set_syscalls(Some(rules));
    Ok(rebuilt)
}

#[cfg(test)]
mod tests;

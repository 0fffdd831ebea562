//! The eBPF side as userspace sees it: loading the object, attaching every signal's programs,
//! typed access to their maps, and the programs' own log messages.
mod loader;
mod maps;
mod program_log;

pub(crate) use loader::Programs;
pub use loader::{
    BpfError, EBPF_OBJECT, EBPF_OBJECT_ORIGIN, EBPF_OBJECT_SHA256, EbpfObjectOrigin, RingOptions,
};
pub(crate) use program_log::forward_program_logs;

//! The eBPF side as userspace sees it: loading the object, attaching every signal's programs,
//! and typed access to their maps.
mod loader;
mod maps;

pub(crate) use loader::Probes;
pub use loader::{
    EBPF_OBJECT, EBPF_OBJECT_ORIGIN, EBPF_OBJECT_SHA256, EbpfObjectOrigin, ProbeError,
    StreamOptions,
};

//! Loading the eBPF object and attaching what the tier allows, signal by signal.
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{KProbe, ProgramError, TracePoint},
};
use guard_common::{CounterRow, LostCounts, ProbeConfig, TaskEntry, WatchEntry};
use tracing::{debug, warn};

use crate::signals::{self, Hook, Program, SignalError};
use crate::tracefs::{self, TracefsError};

/// The eBPF object built by `build.rs`: the binary, tests and benches all load these bytes.
/// [`EBPF_OBJECT_ORIGIN`] says how the build got it, [`EBPF_OBJECT_SHA256`] which one it is.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

/// The SHA-256 of [`EBPF_OBJECT`] in lowercase hex, computed by the build script. With a
/// prebuilt object (`GUARD_EBPF_OBJECT`) it is the hash the build checked; an agent can log it
/// beside [`EBPF_OBJECT_ORIGIN`] to say which programs it runs (guard's own `guard started`
/// line does).
pub const EBPF_OBJECT_SHA256: &str = env!("GUARD_EBPF_OBJECT_BUILT_SHA256");

/// How the build got [`EBPF_OBJECT`].
pub const EBPF_OBJECT_ORIGIN: EbpfObjectOrigin = if cfg!(guard_ebpf_prebuilt) {
    EbpfObjectOrigin::Prebuilt
} else {
    EbpfObjectOrigin::Source
};

/// Where the embedded eBPF object came from (README: "Building guard as a dependency").
///
/// ```
/// // Either way, the hash is the embedded object's.
/// println!("eBPF object {} ({})", guard::EBPF_OBJECT_SHA256, guard::EBPF_OBJECT_ORIGIN);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EbpfObjectOrigin {
    /// Built from guard-ebpf's sources by guard's build script (nightly, bpf-linker).
    Source,
    /// The prebuilt object `GUARD_EBPF_OBJECT` named, its SHA-256 checked at build time.
    Prebuilt,
}

impl EbpfObjectOrigin {
    /// `source` or `prebuilt`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Prebuilt => "prebuilt",
        }
    }
}

impl std::fmt::Display for EbpfObjectOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The eBPF side failed (inside [`GuardError::Bpf`](crate::GuardError::Bpf)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BpfError {
    /// tracefs could not be mounted, or a tracepoint's `format` file is unusable.
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// A tracepoint layout the programs cannot use.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// The kernel refused the object or one of its maps (e.g. a ring size that is not a power
    /// of two).
    #[error("loading the guard eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The embedded object lacks a map (a build mismatch).
    #[error("the eBPF object has no map {name}")]
    MissingMap {
        /// The map.
        name: &'static str,
    },
    /// A map could not be taken, read or updated.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// aya's error.
        source: MapError,
    },
    /// The embedded object lacks a program (a build mismatch).
    #[error("the eBPF object has no program {name}")]
    MissingProgram {
        /// The program.
        name: &'static str,
    },
    /// A program could not be loaded or attached to its hook.
    #[error("eBPF program {name} on {tracepoint}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// Its hook (`tracepoint category:name` or `kretprobe function`).
        tracepoint: String,
        /// aya's error.
        source: ProgramError,
    },
}

/// Sizes and thresholds of the ring buffer that carries individual events from the programs
/// to the reader (not the log's stream to a host: that is [`guard::stream`](crate::stream)).
///
/// The defaults: a 256 KiB ring buffer (262144 bytes), a wakeup once 32 KiB (32768 bytes)
/// wait, and at most 2000 individual events per container per CPU per second.
///
/// ```
/// use guard::RingOptions;
///
/// let options = RingOptions::default();
/// assert_eq!(options.ring_bytes, 256 * 1024);
/// assert_eq!(options.wakeup_bytes, 32 * 1024);
/// assert_eq!(options.max_events_per_sec, 2000);
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RingOptions {
    /// Ring-buffer size in bytes (a power of two, at least a page; the kernel refuses others
    /// when the guard starts). Default 256 KiB. The kernel maps it twice: see
    /// [`Footprint`](crate::footprint::Footprint).
    pub ring_bytes: u32,
    /// Wake the reader once this many bytes wait; it polls for less (0 = wake on every record).
    /// Default 32 KiB.
    pub wakeup_bytes: u64,
    /// Individual events streamed per container per CPU per second (0 = unbounded); the rest
    /// are counted and reported by throttle records. Counters stay exact. Default 2000. OOM
    /// victims are never bounded.
    pub max_events_per_sec: u32,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 256 * 1024,
            wakeup_bytes: 32 * 1024,
            max_events_per_sec: 2000,
        }
    }
}

/// The loaded, attached programs and their maps.
pub(crate) struct Programs {
    // Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    pub(super) config_map: Array<MapData, ProbeConfig>,
    pub(super) config: ProbeConfig,
    pub(super) watched: HashMap<MapData, u64, WatchEntry>,
    pub(super) slots: Array<MapData, u64>,
    pub(super) tasks: Array<MapData, TaskEntry>,
    pub(super) tasks_spill: HashMap<MapData, u32, TaskEntry>,
    pub(super) descendants: HashMap<MapData, u64, TaskEntry>,
    pub(super) counters: PerCpuArray<MapData, CounterRow>,
    lost: Option<PerCpuArray<MapData, LostCounts>>,
    ring: Option<RingBuf<MapData>>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub(super) nr_cpus: usize,
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(BpfError::MissingMap { name })?;
    T::try_from(map).map_err(|source| BpfError::Map { name, source })
}

impl Programs {
    /// Mounts tracefs if needed, raises RLIMIT_MEMLOCK, loads the object, reads tracepoint
    /// layouts, attaches every signal's programs (kretprobes only `with_kprobes`), and only
    /// then arms them (`ready = 1`).
    pub fn load(options: RingOptions, with_kprobes: bool) -> Result<Self, BpfError> {
        let tracefs_root = tracefs::ensure_mounted()?;
        raise_memlock_limit();

        // No kernel BTF: the programs read tracepoint records at offsets from tracefs and need
        // no CO-RE relocation, and parsing vmlinux BTF would triple the guard's peak memory
        // and double its attach time.
        let task_maps = TaskMapSizes::for_pid_max(read_pid_max());
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .map_max_entries("EVENTS", options.ring_bytes)
            .map_max_entries("TASKS", task_maps.dense)
            .map_max_entries("TASKS_SPILL", task_maps.spill)
            // aya-log's own ring (128 KiB by default) carries only the programs' rare error
            // messages, each well under a page.
            .map_max_entries("AYA_LOGS", PROGRAM_LOG_RING_BYTES)
            .load(EBPF_OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                warn!(%error, "eBPF programs' own log messages will not be shown");
                None
            }
        };

        let mut config = ProbeConfig {
            ready: 0,
            max_events_per_sec: options.max_events_per_sec,
            wakeup_bytes: options.wakeup_bytes,
            offsets: signals::read_offsets(&tracefs_root)?,
            ..Default::default()
        };
        for signal in signals::ALL {
            for program in signal.programs {
                if attach(&mut ebpf, program, with_kprobes, &mut config)? {
                    debug!(signal = signal.name, program = program.name, "attached");
                }
            }
        }

        let mut programs = Self {
            config_map: take_map(&mut ebpf, "CONFIG")?,
            watched: take_map(&mut ebpf, "WATCHED")?,
            slots: take_map(&mut ebpf, "SLOTS")?,
            tasks: take_map(&mut ebpf, "TASKS")?,
            tasks_spill: take_map(&mut ebpf, "TASKS_SPILL")?,
            descendants: take_map(&mut ebpf, "DESCENDANTS")?,
            counters: take_map(&mut ebpf, "COUNTERS")?,
            lost: Some(take_map(&mut ebpf, "LOST")?),
            ring: Some(take_map(&mut ebpf, "EVENTS")?),
            _ebpf: ebpf,
            config,
            logger,
            nr_cpus: aya::util::nr_cpus().map_err(|(path, error)| BpfError::Map {
                name: "COUNTERS",
                source: MapError::IoError(std::io::Error::new(
                    error.kind(),
                    format!("{path}: {error}"),
                )),
            })?,
        };
        programs.config.ready = 1;
        programs.write_config()?;
        Ok(programs)
    }

    /// Whether the kretprobe on `pids_can_fork` is attached and armed (tier 2).
    pub fn kretprobe_armed(&self) -> bool {
        self.config.pids_kprobe != 0
    }

    /// The ring buffer, for the event reader (only once).
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// The per-CPU counts of ring-buffer reserve failures, for the event reader (only once).
    pub fn take_lost(&mut self) -> Option<PerCpuArray<MapData, LostCounts>> {
        self.lost.take()
    }

    /// The logger of the programs' own messages, for a task that flushes it.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }
}

/// Bytes of aya-log's ring buffer for the programs' own messages.
const PROGRAM_LOG_RING_BYTES: u32 = 16 * 1024;

/// The kernel's highest thread id plus one; the default when it cannot be read.
fn read_pid_max() -> u32 {
    const PID_MAX: &str = "/proc/sys/kernel/pid_max";
    match std::fs::read_to_string(PID_MAX).map(|text| text.trim().parse::<u32>()) {
        Ok(Ok(pid_max)) => pid_max,
        other => {
            warn!(
                ?other,
                "cannot read {PID_MAX}; sizing the task map for 32768 thread ids"
            );
            32768
        }
    }
}

/// Entries of the task map's two parts: the array indexed by thread id and the hash for
/// thread ids past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskMapSizes {
    pub dense: u32,
    pub spill: u32,
}

impl TaskMapSizes {
    /// Every thread id below `pid_max` in the array when it fits under the cap (then the hash
    /// keeps one unused entry: a map cannot have none); else the array to its cap and the hash
    /// at its full size.
    pub fn for_pid_max(pid_max: u32) -> Self {
        if pid_max <= guard_common::DENSE_TASKS_CAP {
            Self {
                dense: pid_max.max(1),
                spill: 1,
            }
        } else {
            Self {
                dense: guard_common::DENSE_TASKS_CAP,
                spill: guard_common::SPILL_TASKS,
            }
        }
    }
}

/// Loads and attaches one program (a kretprobe only `with_kprobes`, then arms it); false when
/// the tier leaves it out.
fn attach(
    ebpf: &mut Ebpf,
    program: &Program,
    with_kprobes: bool,
    config: &mut ProbeConfig,
) -> Result<bool, BpfError> {
    let name = program.name;
    let error = |source| BpfError::Program {
        name,
        tracepoint: program.hook.describe(),
        source,
    };
    let loaded = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram { name })?;
    match program.hook {
        Hook::Tracepoint { category, name: tp } => {
            let tracepoint: &mut TracePoint = loaded.try_into().map_err(error)?;
            tracepoint.load().map_err(error)?;
            tracepoint.attach(category, tp).map_err(error)?;
        }
        Hook::KRetProbe { function, armed } => {
            if !with_kprobes {
                return Ok(false);
            }
            let kprobe: &mut KProbe = loaded.try_into().map_err(error)?;
            kprobe.load().map_err(error)?;
            // The start does not read /proc/kallsyms: attaching is the test of the target
            // symbol. Without it the guard stays at tier 1 (the start says so).
            if let Err(source) = kprobe.attach(function, 0) {
                warn!(program = name, %function, error = %source, "kretprobe not attached");
                return Ok(false);
            }
            armed(config);
        }
    }
    Ok(true)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the memcg. Raise it as
/// far as we may: unlimited, else the hard limit. Failing is only worth a note (a later load
/// error says what really went wrong).
fn raise_memlock_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit/getrlimit read or write a valid rlimit struct.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) == 0 {
            return;
        }
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) == 0 {
                debug!(
                    bytes = limit.rlim_cur,
                    "RLIMIT_MEMLOCK raised to its hard limit"
                );
                return;
            }
        }
    }
    debug!(
        error = %std::io::Error::last_os_error(),
        "could not raise RLIMIT_MEMLOCK (kernels before 5.11 may refuse to load)"
    );
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    #[test]
    fn the_build_time_hash_is_the_embedded_objects() {
        assert_eq!(
            format!("{:x}", Sha256::digest(EBPF_OBJECT)),
            EBPF_OBJECT_SHA256
        );
        assert_eq!(EBPF_OBJECT_ORIGIN.to_string(), EBPF_OBJECT_ORIGIN.as_str());
    }

    #[test]
    fn the_task_array_covers_every_thread_id_up_to_its_cap() {
        let cap = guard_common::DENSE_TASKS_CAP;
        let sizes = |dense, spill| TaskMapSizes { dense, spill };
        assert_eq!(TaskMapSizes::for_pid_max(32768), sizes(32768, 1));
        assert_eq!(TaskMapSizes::for_pid_max(cap), sizes(cap, 1));
        assert_eq!(
            TaskMapSizes::for_pid_max(4_194_304),
            sizes(cap, guard_common::SPILL_TASKS)
        );
        assert_eq!(TaskMapSizes::for_pid_max(0), sizes(1, 1));
    }
}

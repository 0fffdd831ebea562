//! Loading and attaching the eBPF programs, and typed access to their maps.
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::{ProgramError, TracePoint},
};
use guard_common::{COUNTER_SLOTS, ContainerCounters, EVENT_KIND_SLOTS, ProbeConfig, WatchEntry};
use tracing::{debug, warn};

use crate::tracefs::{self, Format, TracefsError};

/// The eBPF object built by `build.rs`: the binary, tests and benches all load these bytes.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("loading the guard eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("the eBPF object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("eBPF program {name} on tracepoint {tracepoint}: {source}")]
    Program {
        name: &'static str,
        tracepoint: String,
        source: ProgramError,
    },
}

/// Sizes and thresholds of the event stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Ring-buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Wake the reader once this many bytes wait; it polls for less (0 = wake on every record).
    pub wakeup_bytes: u64,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 256 * 1024,
            wakeup_bytes: 32 * 1024,
        }
    }
}

/// A tracepoint program: its name in the object and where it attaches.
struct TracepointProgram {
    name: &'static str,
    category: &'static str,
    tracepoint: &'static str,
}

const TRACEPOINT_PROGRAMS: &[TracepointProgram] = &[TracepointProgram {
    name: "sched_process_fork",
    category: "sched",
    tracepoint: "sched_process_fork",
}];

/// The loaded, attached programs and their maps.
pub struct Probes {
    // Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    config_map: Array<MapData, ProbeConfig>,
    config: ProbeConfig,
    watched: HashMap<MapData, u64, WatchEntry>,
    counters: PerCpuArray<MapData, ContainerCounters>,
    lost: PerCpuArray<MapData, u64>,
    ring: Option<RingBuf<MapData>>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    nr_cpus: usize,
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap { name })?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

impl Probes {
    /// Mounts tracefs if needed, raises RLIMIT_MEMLOCK, loads the object, reads tracepoint
    /// layouts, attaches every program, and only then arms them (`ready = 1`).
    pub fn load(options: StreamOptions) -> Result<Self, ProbeError> {
        let tracefs_root = tracefs::ensure_mounted()?;
        raise_memlock_limit();

        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", options.ring_bytes)
            .load(EBPF_OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                warn!(%error, "eBPF programs' own log messages will not be shown");
                None
            }
        };

        let fork = Format::read(&tracefs_root, "sched", "sched_process_fork")?;
        let config = ProbeConfig {
            ready: 0,
            fork_parent_pid_offset: fork.offset_of("parent_pid", 4)?,
            fork_child_pid_offset: fork.offset_of("child_pid", 4)?,
            wakeup_bytes: options.wakeup_bytes,
            ..Default::default()
        };

        for program in TRACEPOINT_PROGRAMS {
            let error = |source| ProbeError::Program {
                name: program.name,
                tracepoint: format!("{}:{}", program.category, program.tracepoint),
                source,
            };
            let tracepoint: &mut TracePoint = ebpf
                .program_mut(program.name)
                .ok_or(ProbeError::MissingProgram { name: program.name })?
                .try_into()
                .map_err(error)?;
            tracepoint.load().map_err(error)?;
            tracepoint
                .attach(program.category, program.tracepoint)
                .map_err(error)?;
            debug!(program = program.name, "attached");
        }

        let mut probes = Self {
            config_map: take_map(&mut ebpf, "CONFIG")?,
            watched: take_map(&mut ebpf, "WATCHED")?,
            counters: take_map(&mut ebpf, "COUNTERS")?,
            lost: take_map(&mut ebpf, "LOST")?,
            ring: Some(take_map(&mut ebpf, "EVENTS")?),
            _ebpf: ebpf,
            config,
            logger,
            nr_cpus: aya::util::nr_cpus().map_err(|(path, error)| ProbeError::Map {
                name: "COUNTERS",
                source: MapError::IoError(std::io::Error::new(
                    error.kind(),
                    format!("{path}: {error}"),
                )),
            })?,
        };
        probes.config.ready = 1;
        probes.write_config()?;
        Ok(probes)
    }

    fn write_config(&mut self) -> Result<(), ProbeError> {
        self.config_map
            .set(0, self.config, 0)
            .map_err(|source| ProbeError::Map {
                name: "CONFIG",
                source,
            })
    }

    /// The ring buffer, for the event reader (only once).
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// The logger of the programs' own messages, for a task that flushes it.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Registers a cgroup: its counters start at zero, then programs see it.
    pub fn watch(&mut self, cgroup_id: u64, entry: WatchEntry) -> Result<(), ProbeError> {
        let zeros = PerCpuValues::try_from(vec![ContainerCounters::default(); self.nr_cpus])
            .map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source: MapError::IoError(source),
            })?;
        self.counters
            .set(entry.slot, zeros, 0)
            .map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source,
            })?;
        self.watched
            .insert(cgroup_id, entry, 0)
            .map_err(|source| ProbeError::Map {
                name: "WATCHED",
                source,
            })
    }

    /// Stops attributing events to a cgroup.
    pub fn unwatch(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        self.watched
            .remove(&cgroup_id)
            .map_err(|source| ProbeError::Map {
                name: "WATCHED",
                source,
            })
    }

    /// Tells the programs at which cgroup levels containers are registered.
    pub fn set_watched_levels(&mut self, levels: u64) -> Result<(), ProbeError> {
        if self.config.watched_levels != levels {
            self.config.watched_levels = levels;
            self.write_config()?;
        }
        Ok(())
    }

    /// One container's counters summed over every CPU.
    pub fn counters(&self, slot: u32) -> Result<[u64; COUNTER_SLOTS], ProbeError> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source,
            })?;
        let mut total = [0u64; COUNTER_SLOTS];
        for cpu in per_cpu.iter() {
            for (sum, value) in total.iter_mut().zip(cpu.values) {
                *sum = sum.wrapping_add(value);
            }
        }
        Ok(total)
    }

    /// Ring-buffer reserve failures per event kind, summed over every CPU.
    pub fn lost(&self) -> Result<[u64; EVENT_KIND_SLOTS as usize], ProbeError> {
        let mut total = [0u64; EVENT_KIND_SLOTS as usize];
        for (kind, slot) in total.iter_mut().enumerate() {
            let per_cpu = self
                .lost
                .get(&(kind as u32), 0)
                .map_err(|source| ProbeError::Map {
                    name: "LOST",
                    source,
                })?;
            *slot = per_cpu.iter().sum();
        }
        Ok(total)
    }
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

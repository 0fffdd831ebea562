//! Loading and attaching the eBPF programs, and typed access to their maps.
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::{KProbe, ProgramError, TracePoint},
};
use guard_common::{
    ABSENT, COUNTER_SLOTS, ContainerCounters, LostCounts, ProbeConfig, TaskEntry,
    TracepointOffsets, WatchEntry,
};
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
    #[error("tracepoint layout of {tracepoint}: {reason}")]
    Layout {
        tracepoint: String,
        reason: &'static str,
    },
    #[error("eBPF program {name} on {tracepoint}: {source}")]
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
    /// Individual events streamed per container per CPU per second (0 = unbounded); the rest
    /// are counted and reported by throttle records. Counters stay exact.
    pub max_events_per_sec: u32,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 256 * 1024,
            wakeup_bytes: 32 * 1024,
            max_events_per_sec: 2000,
        }
    }
}

/// A tracepoint program: its name in the object and where it attaches.
struct TracepointProgram {
    name: &'static str,
    category: &'static str,
    tracepoint: &'static str,
}

const fn tracepoint(category: &'static str, name: &'static str) -> TracepointProgram {
    TracepointProgram {
        name,
        category,
        tracepoint: name,
    }
}

/// The baseline: tracepoints exist on every target kernel.
const TRACEPOINT_PROGRAMS: &[TracepointProgram] = &[
    tracepoint("sched", "sched_process_fork"),
    tracepoint("sched", "sched_process_exit"),
    tracepoint("cgroup", "cgroup_attach_task"),
    tracepoint("syscalls", "sys_exit_clone"),
    tracepoint("syscalls", "sys_exit_clone3"),
    tracepoint("syscalls", "sys_exit_fork"),
    tracepoint("syscalls", "sys_exit_vfork"),
    tracepoint("oom", "mark_victim"),
    tracepoint("vmscan", "mm_vmscan_memcg_reclaim_begin"),
    tracepoint("vmscan", "mm_vmscan_memcg_reclaim_end"),
];

/// The tier-2 extra: a kretprobe naming pids.max as a fork denial's exact cause.
const PIDS_KPROBE_PROGRAM: &str = "pids_can_fork_exit";
const PIDS_KPROBE_FUNCTION: &str = "pids_can_fork";

/// Reads every field offset the programs need from the tracepoints' `format` files.
pub fn read_offsets(tracefs_root: &std::path::Path) -> Result<TracepointOffsets, ProbeError> {
    let format = |category, name| Format::read(tracefs_root, category, name);
    let fork = format("sched", "sched_process_fork")?;
    let attach = format("cgroup", "cgroup_attach_task")?;
    let oom = format("oom", "mark_victim")?;
    let reclaim_end = format("vmscan", "mm_vmscan_memcg_reclaim_end")?;
    // All four fork-family exits share one layout; check rather than assume.
    let clone_exit = format("syscalls", "sys_exit_clone")?;
    for name in ["sys_exit_clone3", "sys_exit_fork", "sys_exit_vfork"] {
        let other = format("syscalls", name)?;
        if other.offset_of("ret", 8)? != clone_exit.offset_of("ret", 8)?
            || other.offset_of("__syscall_nr", 4)? != clone_exit.offset_of("__syscall_nr", 4)?
        {
            return Err(ProbeError::Layout {
                tracepoint: format!("syscalls:{name}"),
                reason: "its ret/__syscall_nr offsets differ from sys_exit_clone's",
            });
        }
    }
    let narrow = |format: &Format, field: &str, offset: u32| -> Result<u16, ProbeError> {
        u16::try_from(offset).map_err(|_| ProbeError::Layout {
            tracepoint: format!("{} field {field}", format.tracepoint),
            reason: "offset beyond 64 KiB",
        })
    };
    let required = |format: &Format, field: &str, size: u32| -> Result<u16, ProbeError> {
        narrow(format, field, format.offset_of(field, size)?)
    };
    // Older kernels' mark_victim has only `pid`: the rest is optional.
    let optional = |format: &Format, field: &str, size: u32| -> Result<u16, ProbeError> {
        match format.field(field) {
            None => Ok(ABSENT),
            Some(_) => required(format, field, size),
        }
    };
    let oom_comm = match oom.field("comm") {
        Some(comm) if comm.is_data_loc() => narrow(&oom, "comm", comm.offset)?,
        _ => ABSENT,
    };
    Ok(TracepointOffsets {
        fork_parent_pid: required(&fork, "parent_pid", 4)?,
        fork_child_pid: required(&fork, "child_pid", 4)?,
        attach_dst_root: required(&attach, "dst_root", 4)?,
        attach_dst_level: required(&attach, "dst_level", 4)?,
        attach_dst_id: required(&attach, "dst_id", 8)?,
        attach_pid: required(&attach, "pid", 4)?,
        syscall_ret: required(&clone_exit, "ret", 8)?,
        syscall_nr: required(&clone_exit, "__syscall_nr", 4)?,
        oom_pid: required(&oom, "pid", 4)?,
        oom_comm,
        oom_total_vm: optional(&oom, "total_vm", 8)?,
        oom_anon_rss: optional(&oom, "anon_rss", 8)?,
        oom_file_rss: optional(&oom, "file_rss", 8)?,
        oom_shmem_rss: optional(&oom, "shmem_rss", 8)?,
        oom_score_adj: optional(&oom, "oom_score_adj", 2)?,
        reclaim_nr_reclaimed: required(&reclaim_end, "nr_reclaimed", 8)?,
    })
}

/// The loaded, attached programs and their maps.
pub struct Probes {
    // Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    config_map: Array<MapData, ProbeConfig>,
    config: ProbeConfig,
    watched: HashMap<MapData, u64, WatchEntry>,
    tasks: HashMap<MapData, u32, TaskEntry>,
    counters: PerCpuArray<MapData, ContainerCounters>,
    lost: Option<PerCpuArray<MapData, LostCounts>>,
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
    pub fn load(options: StreamOptions, with_kprobes: bool) -> Result<Self, ProbeError> {
        let tracefs_root = tracefs::ensure_mounted()?;
        raise_memlock_limit();

        // No kernel BTF: the programs read tracepoint records at offsets from tracefs and need
        // no CO-RE relocation, and parsing vmlinux BTF would triple the guard's peak memory
        // and double its attach time.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .map_max_entries("EVENTS", options.ring_bytes)
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
            offsets: read_offsets(&tracefs_root)?,
            ..Default::default()
        };

        for program in TRACEPOINT_PROGRAMS {
            let error = |source| ProbeError::Program {
                name: program.name,
                tracepoint: format!("tracepoint {}:{}", program.category, program.tracepoint),
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
        if with_kprobes {
            let error = |source| ProbeError::Program {
                name: PIDS_KPROBE_PROGRAM,
                tracepoint: format!("kretprobe {PIDS_KPROBE_FUNCTION}"),
                source,
            };
            let kprobe: &mut KProbe = ebpf
                .program_mut(PIDS_KPROBE_PROGRAM)
                .ok_or(ProbeError::MissingProgram {
                    name: PIDS_KPROBE_PROGRAM,
                })?
                .try_into()
                .map_err(error)?;
            kprobe.load().map_err(error)?;
            kprobe.attach(PIDS_KPROBE_FUNCTION, 0).map_err(error)?;
            config.pids_kprobe = 1;
            debug!(program = PIDS_KPROBE_PROGRAM, "attached");
        }

        let mut probes = Self {
            config_map: take_map(&mut ebpf, "CONFIG")?,
            watched: take_map(&mut ebpf, "WATCHED")?,
            tasks: take_map(&mut ebpf, "TASKS")?,
            counters: take_map(&mut ebpf, "COUNTERS")?,
            lost: Some(take_map(&mut ebpf, "LOST")?),
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

    /// The per-CPU counts of ring-buffer reserve failures, for the event reader (only once).
    pub fn take_lost(&mut self) -> Option<PerCpuArray<MapData, LostCounts>> {
        self.lost.take()
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

    /// The container the task map holds for thread `tid`, by cgroup id.
    pub fn task_cgroup(&self, tid: u32) -> Result<Option<u64>, ProbeError> {
        match self.tasks.get(&tid, 0) {
            Ok(entry) => Ok(Some(entry.cgroup_id)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(ProbeError::Map {
                name: "TASKS",
                source,
            }),
        }
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
    use std::path::{Path, PathBuf};

    use super::*;

    /// Lays the captured `format` files of one kernel out as tracefs does.
    fn fake_tracefs(kernel: &str, test: &str) -> PathBuf {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/format")
            .join(kernel);
        let root = std::env::temp_dir().join(format!(
            "guard-tracefs-{kernel}-{test}-{}",
            std::process::id()
        ));
        for (category, name) in crate::capability::BASELINE_TRACEPOINTS {
            let dir = root.join("events").join(category).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(fixtures.join(format!("{name}.format")), dir.join("format")).unwrap();
        }
        root
    }

    #[test]
    fn reads_offsets_of_every_captured_kernel() {
        // (kernel, fork parent_pid, fork child_pid)
        for (kernel, parent, child) in [("6.1", 24, 44), ("6.12", 24, 44), ("6.18", 12, 20)] {
            let root = fake_tracefs(kernel, "all");
            let offsets = read_offsets(&root).unwrap();
            assert_eq!(
                (offsets.fork_parent_pid, offsets.fork_child_pid),
                (parent, child),
                "{kernel}"
            );
            assert_eq!(offsets.attach_dst_id, 16, "{kernel}");
            assert_eq!(offsets.attach_pid, 24, "{kernel}");
            assert_eq!(
                (offsets.syscall_nr, offsets.syscall_ret),
                (8, 16),
                "{kernel}"
            );
            assert_eq!((offsets.oom_pid, offsets.oom_comm), (8, 12), "{kernel}");
            assert_eq!(offsets.oom_anon_rss, 24, "{kernel}");
            assert_eq!(offsets.oom_score_adj, 64, "{kernel}");
            assert_eq!(offsets.reclaim_nr_reclaimed, 8, "{kernel}");
            std::fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn old_mark_victim_with_only_pid_leaves_the_rest_absent() {
        let root = fake_tracefs("6.1", "old");
        let format = root.join("events/oom/mark_victim/format");
        std::fs::write(
            &format,
            "name: mark_victim\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n",
        )
        .unwrap();
        let offsets = read_offsets(&root).unwrap();
        assert_eq!(offsets.oom_pid, 8);
        assert_eq!(offsets.oom_comm, ABSENT);
        assert_eq!(offsets.oom_anon_rss, ABSENT);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_field_is_an_error_naming_the_tracepoint() {
        let root = fake_tracefs("6.12", "missing");
        let format = root.join("events/sched/sched_process_fork/format");
        let text = std::fs::read_to_string(&format).unwrap();
        std::fs::write(&format, text.replace("child_pid", "kid_pid")).unwrap();
        let error = read_offsets(&root).unwrap_err().to_string();
        assert!(
            error.contains("sched_process_fork") && error.contains("child_pid"),
            "{error}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}

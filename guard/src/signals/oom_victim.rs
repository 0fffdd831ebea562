//! The oom_victim signal: `oom:mark_victim`, the OOM killer chose a victim. The program runs in
//! the task whose allocation triggered the OOM, so the victim's container comes from the task
//! map, never from the current cgroup; a victim in no container is a global OOM kill.
use guard_common::{ABSENT, EventKind, OomVictimEvent, TracepointOffsets};
use serde::Serialize;

use super::{
    DecodeError, Formats, Program, Signal, SignalError, Streamed, narrow, optional, read_record,
    required,
};
use crate::counters::Delivered;

pub(crate) static SIGNAL: Signal = Signal {
    name: "oom_victim",
    programs: &[Program::tracepoint("oom", "mark_victim")],
    read_offsets,
};

fn read_offsets(formats: &Formats<'_>, offsets: &mut TracepointOffsets) -> Result<(), SignalError> {
    let format = formats.read("oom", "mark_victim")?;
    offsets.oom_pid = required(&format, "pid", 4)?;
    // Older kernels' mark_victim has only `pid`: the rest is optional.
    offsets.oom_comm = match format.field("comm") {
        Some(comm) if comm.is_data_loc() => narrow(&format, "comm", comm.offset)?,
        _ => ABSENT,
    };
    offsets.oom_total_vm = optional(&format, "total_vm", 8)?;
    offsets.oom_anon_rss = optional(&format, "anon_rss", 8)?;
    offsets.oom_file_rss = optional(&format, "file_rss", 8)?;
    offsets.oom_shmem_rss = optional(&format, "shmem_rss", 8)?;
    offsets.oom_score_adj = optional(&format, "oom_score_adj", 2)?;
    Ok(())
}

/// The OOM killer chose a victim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OomVictim {
    /// The victim's pid as the kernel's `mark_victim` gives it.
    pub victim_pid: u32,
    /// The victim's command name; empty where the tracepoint lacks it (older kernels).
    pub comm: String,
    /// Whether the victim was in no registered container (a global OOM kill, or a task the
    /// guard never saw enter a container).
    pub outside_containers: bool,
    /// cgroup of the task whose allocation triggered the OOM.
    pub trigger_cgroup_id: u64,
    /// That cgroup's path when it is a sub-cgroup of a watched container (where the OOM was
    /// triggered, below the container's own cgroup). Filled in by the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_sub_cgroup: Option<String>,
    /// None where the kernel's tracepoint lacks the rss fields.
    pub rss: Option<OomRss>,
    /// The victim's `oom_score_adj` (-1000 to 1000); 0 where the tracepoint lacks it.
    pub oom_score_adj: i16,
    /// Which killer, where the kernel log said (`memcg` or `global`: tier 1's kmsg source);
    /// None from the tracepoint, whose verdict splits the scope by the log instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'static str>,
}

/// The victim's memory at the time of the kill, in kB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OomRss {
    /// Virtual memory size.
    pub total_vm_kb: u64,
    /// Resident anonymous memory.
    pub anon_rss_kb: u64,
    /// Resident file-backed memory.
    pub file_rss_kb: u64,
    /// Resident shared memory.
    pub shmem_rss_kb: u64,
}

impl Streamed for OomVictim {
    const KIND: EventKind = EventKind::OomVictim;

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let oom: OomVictimEvent = read_record(bytes, "OOM victim event")?;
        let comm_len = oom
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(oom.comm.len());
        Ok(OomVictim {
            victim_pid: oom.victim_pid,
            comm: String::from_utf8_lossy(&oom.comm[..comm_len]).into_owned(),
            outside_containers: oom.header.cgroup_id == 0,
            trigger_cgroup_id: oom.trigger_cgroup_id,
            trigger_sub_cgroup: None,
            rss: (oom.has_rss != 0).then_some(OomRss {
                total_vm_kb: oom.total_vm_kb,
                anon_rss_kb: oom.anon_rss_kb,
                file_rss_kb: oom.file_rss_kb,
                shmem_rss_kb: oom.shmem_rss_kb,
            }),
            oom_score_adj: oom.oom_score_adj,
            scope: None,
        })
    }

    fn tally(&self, delivered: &mut Delivered) {
        delivered.oom_victims += 1;
    }
}

#[cfg(test)]
mod tests {
    use guard_common::{EventHeader, EventKind};

    use super::*;
    use crate::signals::{
        fixtures::{FakeTracefs, KERNELS, as_bytes},
        read_offsets,
    };

    #[test]
    fn reads_the_mark_victim_layout_of_every_captured_kernel() {
        for kernel in KERNELS {
            let offsets = FakeTracefs::new(kernel, "oom").offsets();
            assert_eq!((offsets.oom_pid, offsets.oom_comm), (8, 12), "{kernel}");
            assert_eq!(offsets.oom_anon_rss, 24, "{kernel}");
            assert_eq!(offsets.oom_score_adj, 64, "{kernel}");
        }
    }

    #[test]
    fn old_mark_victim_with_only_pid_leaves_the_rest_absent() {
        let root = FakeTracefs::new("6.1", "old");
        std::fs::write(
            root.0.join("events/oom/mark_victim/format"),
            "name: mark_victim\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n",
        )
        .unwrap();
        let offsets = read_offsets(&root.0).unwrap();
        assert_eq!(offsets.oom_pid, 8);
        assert_eq!(offsets.oom_comm, ABSENT);
        assert_eq!(offsets.oom_anon_rss, ABSENT);
    }

    #[test]
    fn decodes_comm_and_scope() {
        let mut oom = OomVictimEvent {
            header: EventHeader {
                kind: EventKind::OomVictim as u16,
                cgroup_id: 0,
                ..Default::default()
            },
            victim_pid: 42,
            anon_rss_kb: 1024,
            has_rss: 1,
            ..Default::default()
        };
        oom.comm[..4].copy_from_slice(b"hog\0");
        let victim = OomVictim::decode(&as_bytes(&oom)).unwrap();
        assert_eq!((victim.victim_pid, victim.comm.as_str()), (42, "hog"));
        assert!(victim.outside_containers);
        assert_eq!(victim.rss.unwrap().anon_rss_kb, 1024);
        // Without the rss fields the event says so instead of reporting zeros.
        oom.has_rss = 0;
        oom.header.cgroup_id = 7;
        let victim = OomVictim::decode(&as_bytes(&oom)).unwrap();
        assert!(victim.rss.is_none() && !victim.outside_containers);
    }
}

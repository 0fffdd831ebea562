//! The log stream on the host, over Unix sockets (the same code carries vsock in a guest): a
//! mod per theme. `verdicts`: every verdict a stream can reach; `cli`: the commands
//! themselves; `identity`: guests that pretend to be another, hijack a resume, squat a name;
//! `bounds`: slow, idle, long-lined and reconnecting connections; `disk`: quotas, a full disk,
//! inode exhaustion, links in the store; `limits`: the open-file and process limits;
//! `vm_dir`: VMs coming and going; `crowd`: a thousand hostile connections beside a hundred
//! guests; `gaps`: a guest log's outage, honest and lying. Throughout, every legitimate
//! guest's copy must complete byte for byte.
mod bounds;
mod cli;
mod crowd;
mod disk;
mod gaps;
mod harness;
mod identity;
mod limits;
mod verdicts;
mod vm_dir;

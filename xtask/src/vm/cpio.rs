//! A minimal writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Written here rather than shelling out to `cpio` so the image is built from an in-memory
//! list (testable, no staging directory, no host ownership or timestamps leaking in).

use std::collections::BTreeMap;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// One thing in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An image under construction: absolute guest paths → nodes. Parent directories are added
/// automatically (the kernel's unpacker does not create them).
#[derive(Clone, Debug, Default)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

fn normalize(path: &str) -> String {
    let trimmed: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    trimmed.join("/")
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a node (replacing one at the same path) and its missing parent directories.
    pub fn insert(&mut self, path: &str, node: Node) {
        let path = normalize(path);
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len().saturating_sub(1)] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.nodes
                .entry(parent.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        self.nodes.insert(path, node);
    }

    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(&normalize(path))
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&normalize(path))
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Serializes as newc. BTreeMap order puts every directory before its contents.
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, node)) in (1u32..).zip(&self.nodes) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir { mode } => (S_IFDIR | mode, &[], (0, 0)),
                Node::File { mode, data } => (S_IFREG | mode, data, (0, 0)),
                Node::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Node::CharDev { mode, major, minor } => (S_IFCHR | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(node, Node::Dir { .. }) {
                2
            } else {
                1
            };
            write_entry(&mut out, ino, mode, nlink, rdev, path, data);
        }
        write_entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1, // with the NUL
        0,                     // check (unused in newc)
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_added_and_sorted_first() {
        let mut a = Archive::new();
        a.insert(
            "/usr/lib/x/libc.so",
            Node::File {
                mode: 0o644,
                data: b"x".to_vec(),
            },
        );
        let paths: Vec<&str> = a.paths().collect();
        assert_eq!(paths, ["usr", "usr/lib", "usr/lib/x", "usr/lib/x/libc.so"]);
    }

    #[test]
    fn newc_layout_is_aligned_and_terminated() {
        let mut a = Archive::new();
        a.insert(
            "/init",
            Node::File {
                mode: 0o755,
                data: b"#!/bin/sh\n".to_vec(),
            },
        );
        a.insert(
            "/bin/sh",
            Node::Symlink {
                target: "busybox".into(),
            },
        );
        let bytes = a.to_newc();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let trailer = b"TRAILER!!!\0";
        assert!(bytes.windows(trailer.len()).any(|w| w == trailer));
    }

    /// Cross-checks with the system's cpio when it is installed (setup installs it).
    #[test]
    fn system_cpio_lists_what_we_wrote() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut a = Archive::new();
        a.insert(
            "/init",
            Node::File {
                mode: 0o755,
                data: b"hello".to_vec(),
            },
        );
        a.insert(
            "/bin/sh",
            Node::Symlink {
                target: "busybox".into(),
            },
        );
        a.insert(
            "/dev/console",
            Node::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        let Ok(mut child) = Command::new("cpio")
            .args(["-t", "-v"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            eprintln!("cpio not installed, skipping the cross-check");
            return;
        };
        child.stdin.take().unwrap().write_all(&a.to_newc()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        for needle in ["init", "bin/sh -> busybox", "dev/console"] {
            assert!(
                listing.contains(needle),
                "{needle} missing from:\n{listing}"
            );
        }
    }
}

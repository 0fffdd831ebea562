//! The host's table of AF_VSOCK guests: which name (and key) each context id stands for. The
//! host assigns a VM its CID and its kernel drops packets whose source CID is not that VM's,
//! so the CID accept(2) gives is the transport's word on who is calling. The file is read
//! again when it changes (VMs come and go); a table that no longer parses keeps the last good
//! one in force.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use tracing::warn;

use super::{connection::Identity, options::Auth};
use crate::pipeline::lock;
use crate::stream::{StreamError, StreamKey, wire};

/// `CID NAME KEYFILE` per line (`#` starts a comment; a relative key file is relative to the
/// table's directory; `-` for no key, only with `--no-auth`).
///
/// ```text
/// # cid  guest  key
/// 3      web-1  keys/web-1
/// 4      db-1   /etc/guard/keys/db-1
/// ```
pub struct CidTable {
    path: PathBuf,
    no_auth: bool,
    current: Mutex<(Option<SystemTime>, HashMap<u32, Identity>)>,
}

impl CidTable {
    /// Reads the table in `path`; `no_auth` allows lines without a key.
    pub fn read(path: &Path, no_auth: bool) -> Result<Self, StreamError> {
        let (stamp, entries) = parse(path, no_auth)?;
        Ok(Self {
            path: path.to_path_buf(),
            no_auth,
            current: Mutex::new((stamp, entries)),
        })
    }

    /// The guest the table names for `cid` (Err: why not), reading the table again first if
    /// it changed.
    pub(super) fn identity(&self, cid: u32) -> Result<Identity, String> {
        let mut current = lock(&self.current);
        let stamp = modified(&self.path);
        if stamp != current.0 {
            match parse(&self.path, self.no_auth) {
                Ok(fresh) => *current = fresh,
                Err(error) => {
                    warn!(%error, "the CID table changed and does not parse: keeping the last one")
                }
            }
        }
        current.1.get(&cid).cloned().ok_or_else(|| {
            format!(
                "no guest has CID {cid} in the collector's table {}",
                self.path.display()
            )
        })
    }

    /// The names in the table.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.current)
            .1
            .values()
            .map(|identity| identity.name.clone())
            .collect();
        names.sort();
        names
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

type Parsed = (Option<SystemTime>, HashMap<u32, Identity>);

fn parse(path: &Path, no_auth: bool) -> Result<Parsed, StreamError> {
    let bad = |line: usize, why: String| StreamError::CidTable {
        path: path.to_path_buf(),
        line,
        why,
    };
    let stamp = modified(path);
    let text = std::fs::read_to_string(path).map_err(|error| bad(0, error.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut entries = HashMap::new();
    let mut names = std::collections::HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [cid, name, key] = fields[..] else {
            return Err(bad(
                number,
                format!("expected CID NAME KEYFILE, found {line:?}"),
            ));
        };
        let cid: u32 = cid
            .parse()
            .ok()
            .filter(|cid| *cid > 2)
            .ok_or_else(|| bad(number, format!("{cid:?} is not a guest CID (3 or above)")))?;
        if !wire::valid_guest_name(name) {
            return Err(bad(
                number,
                format!("{name:?} is not a guest name (1 to 64 of A-Z a-z 0-9 . _ -)"),
            ));
        }
        let auth = if key == "-" {
            if !no_auth {
                return Err(bad(
                    number,
                    format!("{name} has no key: give one, or --no-auth"),
                ));
            }
            Auth::None
        } else {
            Auth::Key(
                StreamKey::read(&base.join(key)).map_err(|error| bad(number, error.to_string()))?,
            )
        };
        if !names.insert(name.to_string()) {
            return Err(bad(number, format!("{name} is in the table twice")));
        }
        let identity = Identity {
            name: name.to_string(),
            auth,
        };
        if entries.insert(cid, identity).is_some() {
            return Err(bad(number, format!("CID {cid} is in the table twice")));
        }
    }
    Ok((stamp, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_cid_and_refuses_the_rest() {
        let dir = std::env::temp_dir().join(format!("guard-cid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        StreamKey::generate()
            .unwrap()
            .write_new(&dir.join("keys/web-1"))
            .unwrap();
        let table = dir.join("cids");
        std::fs::write(
            &table,
            "# cid guest key\n3 web-1 keys/web-1\n4 db-1 - # no key\n",
        )
        .unwrap();
        let error = CidTable::read(&table, false).err().unwrap().to_string();
        assert!(error.contains("line 3: db-1 has no key"), "{error}");
        let read = CidTable::read(&table, true).unwrap();
        assert_eq!(read.names(), ["db-1", "web-1"]);
        assert!(read.identity(3).unwrap().auth.has_key());
        assert!(!read.identity(4).unwrap().auth.has_key());
        assert!(read.identity(5).unwrap_err().contains("no guest has CID 5"));
        for (text, why) in [
            ("2 host -", "not a guest CID"),
            ("3 ../x -", "not a guest name"),
            ("3 a -\n3 b -", "CID 3 is in the table twice"),
            ("3 a", "expected CID NAME KEYFILE"),
        ] {
            std::fs::write(&table, text).unwrap();
            let error = CidTable::read(&table, true).err().unwrap().to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

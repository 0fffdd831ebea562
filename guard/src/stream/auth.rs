//! The proof that a stream comes from the guest's agent: a per-VM secret key the host gives the
//! agent (never on the kernel command line, which containers can read), and HMAC-SHA256 over
//! the host's fresh nonce, the guest's name and its boot id (docs/STREAM.md, "Authentication").
use std::{
    fmt,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The bytes of a key.
pub const KEY_BYTES: usize = 32;
/// What every MAC starts with: a proof for this protocol is never one for another.
const PROOF_CONTEXT: &[u8] = b"guard-stream-v2\0";

/// A key file or nonce that cannot be read, made or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("stream key {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold 64 hex digits (and at most a newline).
    #[error("stream key {path}: {why} (a key file holds 64 hex digits and an optional newline)")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The key file may be read or written by others than its owner.
    #[error(
        "stream key {path}: mode {mode:04o} lets others than its owner read or change it: make \
         it 0400 (chmod 0400 {path})"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A new key file could not be written (it exists already, or its directory is missing).
    #[error("writing stream key {path}: {source}")]
    Write {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The operating system's random source failed.
    #[error("reading random bytes: {0}")]
    Random(String),
}

/// A guest's stream key: 32 secret bytes the host and the guest's agent share.
#[derive(Clone, PartialEq, Eq)]
pub struct StreamKey([u8; KEY_BYTES]);

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamKey(<secret>)")
    }
}

/// A host's challenge: 32 random bytes, fresh for each connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Nonce(pub [u8; KEY_BYTES]);

impl Nonce {
    /// 32 bytes from the operating system's random source.
    pub fn fresh() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|error| KeyError::Random(error.to_string()))?;
        Ok(Self(bytes))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits (None: anything else).
    pub fn from_hex(text: &str) -> Option<Self> {
        unhex(text).map(Self)
    }
}

impl StreamKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        Nonce::fresh().map(|nonce| Self(nonce.0))
    }

    /// The key in `path`: 64 hex digits and an optional newline, in a file only its owner may
    /// read or change (mode 0400 or 0600).
    ///
    /// ```
    /// use guard::stream::StreamKey;
    ///
    /// let path = std::env::temp_dir().join(format!("guard-doc-key-{}", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let key = StreamKey::generate()?;
    /// key.write_new(&path)?; // mode 0400, never over an existing file
    /// assert_eq!(StreamKey::read(&path)?, key);
    /// assert!(key.write_new(&path).is_err());
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), guard::stream::KeyError>(())
    /// ```
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let read_error = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        // One byte more than a key with its newline tells a longer file.
        std::io::Read::read_to_string(&mut std::io::Read::take(&file, 66), &mut text).map_err(
            |error| KeyError::Format {
                path: path.to_path_buf(),
                why: format!("not text: {error}"),
            },
        )?;
        Self::from_hex(text.strip_suffix('\n').unwrap_or(&text)).ok_or_else(|| KeyError::Format {
            path: path.to_path_buf(),
            why: format!("{} bytes that are not 64 hex digits", text.len()),
        })
    }

    /// Parses 64 hex digits (None: anything else).
    pub fn from_hex(text: &str) -> Option<Self> {
        unhex(text).map(Self)
    }

    /// Writes the key to a new file `path` (mode 0400; an existing file is an error, never
    /// replaced).
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let write_error = |source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(path)
            .map_err(write_error)?;
        file.write_all(format!("{}\n", hex(&self.0)).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write_error)
    }

    /// The proof for `nonce`: HMAC-SHA256(key, "guard-stream-v2\0" ‖ nonce ‖ guest ‖ "\0" ‖
    /// boot_id), as 64 lowercase hex digits.
    pub fn proof(&self, nonce: &Nonce, guest: &str, boot_id: &str) -> String {
        hex(&self.mac(nonce, guest, boot_id).finalize().into_bytes())
    }

    /// Whether `mac` (hex) is the proof for `nonce`, compared in constant time.
    pub fn verify(&self, nonce: &Nonce, guest: &str, boot_id: &str, mac: &str) -> bool {
        let Some(given) = unhex::<KEY_BYTES>(mac) else {
            return false;
        };
        self.mac(nonce, guest, boot_id).verify_slice(&given).is_ok()
    }

    fn mac(&self, nonce: &Nonce, guest: &str, boot_id: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.0).expect("HMAC takes any key size");
        for part in [
            PROOF_CONTEXT,
            &nonce.0,
            guest.as_bytes(),
            b"\0",
            boot_id.as_bytes(),
        ] {
            mac.update(part);
        }
        mac
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_for_its_key_nonce_name_and_boot() {
        let key = StreamKey::from_hex(&"11".repeat(32)).unwrap();
        let other = StreamKey::from_hex(&"12".repeat(32)).unwrap();
        let nonce = Nonce([7; 32]);
        let proof = key.proof(&nonce, "web-1", "boot");
        assert_eq!(proof.len(), 64);
        assert!(key.verify(&nonce, "web-1", "boot", &proof));
        assert!(!other.verify(&nonce, "web-1", "boot", &proof));
        assert!(!key.verify(&Nonce([8; 32]), "web-1", "boot", &proof));
        assert!(!key.verify(&nonce, "web-2", "boot", &proof));
        assert!(!key.verify(&nonce, "web-1", "boot2", &proof));
        // The separator: ("web-1", "boot") and ("web-1\0boot"…) cannot collide, names hold no NUL.
        assert!(!key.verify(&nonce, "web-1", "boot", &proof[..62]));
        assert!(!key.verify(&nonce, "web-1", "boot", "zz"));
    }

    #[test]
    fn the_mac_is_hmac_sha256_over_the_documented_message() {
        // Independent of this module: HMAC by its definition over SHA-256 (RFC 2104).
        use sha2::Digest as _;
        let key = [0x42u8; 32];
        let nonce = [0x24u8; 32];
        let mut message = b"guard-stream-v2\0".to_vec();
        message.extend_from_slice(&nonce);
        message.extend_from_slice(b"vm\0b");
        let pad = |byte: u8| {
            let mut block = [byte; 64];
            block.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
            block
        };
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(&message)
            .finalize();
        let outer = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        assert_eq!(StreamKey(key).proof(&Nonce(nonce), "vm", "b"), hex(&outer));
    }

    #[test]
    fn key_files_must_be_hex_and_private() {
        let dir = std::env::temp_dir().join(format!("guard-key-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let key = StreamKey::generate().unwrap();
        key.write_new(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(StreamKey::read(&path).unwrap(), key);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = StreamKey::read(&path).unwrap_err().to_string();
        assert!(
            error.contains("mode 0644") && error.contains("chmod 0400"),
            "{error}"
        );
        for (text, why) in [("abc", "3 bytes"), (&"g".repeat(64)[..], "64 bytes")] {
            let bad = dir.join(format!("bad-{}", text.len()));
            std::fs::write(&bad, text).unwrap();
            std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
            let error = StreamKey::read(&bad).unwrap_err().to_string();
            assert!(
                error.contains(why) && error.contains("64 hex digits"),
                "{error}"
            );
        }
        assert_eq!(format!("{key:?}"), "StreamKey(<secret>)");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

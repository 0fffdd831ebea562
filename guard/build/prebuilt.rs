//! A prebuilt eBPF object: `GUARD_EBPF_OBJECT` names it, and it is used only if its SHA-256 is
//! the one given in `GUARD_EBPF_OBJECT_SHA256` or, without that, in `<object>.sha256` beside it
//! (`sha256sum` format). The bytes checked are the bytes embedded: the file is read once.
use std::{fs, path::Path};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

/// The object's path (absolute: a build script runs in the crate's directory, not the user's).
pub const OBJECT_ENV: &str = "GUARD_EBPF_OBJECT";
/// Its expected SHA-256, in hex; wins over the `.sha256` file.
pub const SHA256_ENV: &str = "GUARD_EBPF_OBJECT_SHA256";

const HOW_TO: &str = "`cargo xtask ebpf-object --out DIR` writes DIR/guard-ebpf and \
                      DIR/guard-ebpf.sha256; see \"Building guard as a dependency\" in guard's \
                      README";

/// Reads the object at `path`, checks it against its expected SHA-256 and that it is an eBPF
/// ELF object of `endian` (`little` or `big`), and returns its bytes.
pub fn read_verified(path: &Path, endian: &str) -> anyhow::Result<Vec<u8>> {
    if !path.is_absolute() {
        bail!(
            "{OBJECT_ENV}={} is a relative path: give an absolute one (a build script runs in \
             the crate's directory, not yours)",
            path.display()
        );
    }
    println!("cargo::rerun-if-changed={}", path.display());
    let object = fs::read(path)
        .with_context(|| format!("{OBJECT_ENV}={}: cannot read the object", path.display()))?;
    let actual = format!("{:x}", Sha256::digest(&object));
    let (expected, from) = expected_sha256(path)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{OBJECT_ENV}={path}: no expected SHA-256 (its actual SHA-256 is {actual}): set \
             {SHA256_ENV}=<hex>, or put `sha256sum` output in {path}.sha256 ({HOW_TO})",
            path = path.display()
        )
    })?;
    if expected != actual {
        bail!(
            "{OBJECT_ENV}={}: SHA-256 mismatch: expected {expected} ({from}), actual {actual}. \
             The object is not the one that hash was taken of: rebuild it or fix the hash \
             ({HOW_TO})",
            path.display()
        );
    }
    check_elf(&object, endian)
        .with_context(|| format!("{OBJECT_ENV}={} is not guard's eBPF object", path.display()))?;
    Ok(object)
}

/// The expected hash and where it came from, or None when neither source gives one.
fn expected_sha256(path: &Path) -> anyhow::Result<Option<(String, String)>> {
    if let Some(value) = std::env::var_os(SHA256_ENV).filter(|value| !value.is_empty()) {
        let value = value.to_string_lossy();
        let hex = parse_hex(&value).with_context(|| format!("{SHA256_ENV}={value}"))?;
        return Ok(Some((hex, format!("from {SHA256_ENV}"))));
    }
    let mut sidecar = path.as_os_str().to_owned();
    sidecar.push(".sha256");
    let sidecar = Path::new(&sidecar);
    let text = match fs::read_to_string(sidecar) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", sidecar.display())),
    };
    // Watched only when used: a missing file would make cargo rerun this script every build.
    println!("cargo::rerun-if-changed={}", sidecar.display());
    // `sha256sum` format: the hash, then the file name (which may differ: the hash is what
    // counts).
    let first = text.split_whitespace().next().unwrap_or_default();
    let hex =
        parse_hex(first).with_context(|| format!("{} (sha256sum format)", sidecar.display()))?;
    Ok(Some((hex, format!("from {}", sidecar.display()))))
}

fn parse_hex(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        bail!("{text:?} is not a SHA-256 (64 hex digits)");
    }
    Ok(text.to_ascii_lowercase())
}

/// An ELF relocatable for the BPF machine in the target's byte order: catches the wrong file
/// (a host binary, the .sha256 itself) or an object built for the other endianness.
fn check_elf(object: &[u8], endian: &str) -> anyhow::Result<()> {
    const EM_BPF: u16 = 247;
    if object.len() < 20 || &object[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    let (data, want) = (object[5], if endian == "big" { 2 } else { 1 });
    if data != want {
        bail!("its byte order (ELF data {data}) is not the target's ({endian}-endian)");
    }
    let field = |at: usize| {
        let bytes = [object[at], object[at + 1]];
        if want == 2 {
            u16::from_be_bytes(bytes)
        } else {
            u16::from_le_bytes(bytes)
        }
    };
    let (kind, machine) = (field(16), field(18));
    if machine != EM_BPF {
        bail!("its ELF machine is {machine}, not BPF ({EM_BPF})");
    }
    if kind != 1 {
        bail!("its ELF type is {kind}, not a relocatable object (1)");
    }
    Ok(())
}

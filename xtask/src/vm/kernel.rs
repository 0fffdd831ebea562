//! Kernel images: getting an uncompressed, PVH-bootable `vmlinux` out of a Debian `vmlinuz`.
//!
//! Under TCG, a bzImage spends seconds in the BIOS loading it and in its own decompressor
//! (Debian's 6.1 is xz: ~4 s of a ~7 s boot). QEMU boots an ELF `vmlinux` carrying the PVH
//! entry note directly, skipping both: measured 7.1 → 2.7 s (6.1) and 4.5 → 2.7 s (6.12) to
//! init. Debian kernels have CONFIG_PVH=y; setup extracts the vmlinux once.

use anyhow::{Context as _, Result, bail};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// (magic, decompressor argv) for the payload formats Debian uses or used.
const FORMATS: &[(&[u8], &[&str])] = &[
    (b"\xfd7zXZ\x00", &["xz", "-dc", "--single-stream"]),
    (b"\x28\xb5\x2f\xfd", &["zstd", "-dcq"]),
    (b"\x1f\x8b\x08", &["gzip", "-dc"]),
];

/// Decompresses the kernel inside a bzImage and checks the result is a complete ELF with a
/// PVH entry note.
pub fn extract_vmlinux(bzimage: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let mut errors = Vec::new();
    // The payload sits after the setup code; try every candidate magic in file order, since a
    // magic can also occur by chance.
    let mut candidates: Vec<(usize, &[&str])> = FORMATS
        .iter()
        .flat_map(|(magic, argv)| {
            find_all(&data, magic)
                .into_iter()
                .map(move |offset| (offset, *argv))
        })
        .collect();
    candidates.sort_by_key(|(offset, _)| *offset);
    for (offset, argv) in candidates.into_iter().take(8) {
        match decompress(argv, &data[offset..]) {
            Ok(out) => match check_elf(&out) {
                Ok(()) => return Ok(out),
                Err(e) => errors.push(format!("{} at {offset}: {e}", argv[0])),
            },
            Err(e) => errors.push(format!("{} at {offset}: {e}", argv[0])),
        }
    }
    bail!(
        "no PVH-bootable vmlinux found in {}: {}",
        bzimage.display(),
        if errors.is_empty() {
            "no known compression magic".to_string()
        } else {
            errors.join("; ")
        }
    )
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Runs a decompressor over `input`. Its exit status is ignored: the payload is followed by
/// trailing bytes that some decompressors complain about after writing everything. The ELF
/// check decides.
fn decompress(argv: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {} (install it: cargo xtask setup)", argv[0]))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // A decompressor that stops early closes the pipe: not an error here.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    Ok(out.stdout)
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

const PT_NOTE: u32 = 4;
/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point QEMU looks for.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A 64-bit little-endian ELF whose every segment lies inside the data (not truncated), with
/// a Xen PHYS32_ENTRY note (PVH entry point).
pub fn check_elf(d: &[u8]) -> Result<()> {
    if !d.starts_with(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF");
    }
    let bad = || anyhow::anyhow!("truncated ELF headers");
    let phoff = u64_at(d, 0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(d, 0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(d, 0x38).ok_or_else(bad)? as usize;
    let mut pvh = false;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(d, ph).ok_or_else(bad)?;
        let offset = u64_at(d, ph + 8).ok_or_else(bad)? as usize;
        let filesz = u64_at(d, ph + 32).ok_or_else(bad)? as usize;
        if offset + filesz > d.len() {
            bail!(
                "segment {i} ends at {} beyond the {} bytes decompressed",
                offset + filesz,
                d.len()
            );
        }
        if p_type == PT_NOTE {
            pvh |= has_pvh_note(&d[offset..offset + filesz]);
        }
    }
    if !pvh {
        bail!("no PVH entry note (kernel built without CONFIG_PVH)");
    }
    Ok(())
}

fn has_pvh_note(notes: &[u8]) -> bool {
    let align4 = |n: usize| (n + 3) & !3;
    let mut at = 0;
    while let (Some(namesz), Some(descsz), Some(kind)) = (
        u32_at(notes, at),
        u32_at(notes, at + 4),
        u32_at(notes, at + 8),
    ) {
        let name = notes
            .get(at + 12..at + 12 + namesz as usize)
            .unwrap_or_default();
        if name.starts_with(b"Xen") && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            return true;
        }
        at += 12 + align4(namesz as usize) + align4(descsz as usize);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_and_truncation() {
        assert!(check_elf(b"MZ not an elf").is_err());
        assert!(check_elf(b"\x7fELF\x02\x01\x01").is_err());
    }

    #[test]
    fn finds_the_pvh_note() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x100_0000u32.to_le_bytes());
        assert!(has_pvh_note(&note));
        assert!(!has_pvh_note(&note[..8]));
    }
}

//! The results channel: frames the guest init writes on its second serial port (ttyS1).
//!
//! ```text
//! GUARD-FRAME <byte length> <name>
//! <base64, any line breaks>
//! GUARD-END
//! ...
//! GUARD-DONE
//! ```
//! base64 keeps the stream line-oriented and immune to tty translation; the length catches
//! truncation. `GUARD-GZFRAME` instead of `GUARD-FRAME` means the bytes (and the length) are
//! gzip's: the guest compresses big files because the emulated UART moves only ~400 KB/s. `GUARD-DONE` means the guest sent everything: without it the guest died (or
//! timed out) before it finished.

use anyhow::{Result, anyhow, bail};

/// What the host read from the results port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frames {
    /// Complete frames in the order sent.
    pub frames: Vec<(String, Vec<u8>)>,
    /// `GUARD-DONE` was seen.
    pub done: bool,
}

impl Frames {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.frames
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    }
}

/// Parses the results stream. Noise outside frames is ignored; a frame cut short (the guest
/// died while sending) is dropped; a frame whose payload does not match its announced length
/// is an error, since that would be silent corruption.
pub fn parse(stream: &[u8]) -> Result<Frames> {
    let text = String::from_utf8_lossy(stream);
    let mut frames = Frames::default();
    // (name, announced length, gzipped, base64 so far)
    let mut current: Option<(String, usize, bool, String)> = None;
    for raw in text.split('\n') {
        let line = raw.trim_end_matches('\r');
        if let Some((name, len, gzipped, body)) = current.as_mut() {
            if line.trim() == "GUARD-END" {
                let data = decode_base64(body).map_err(|e| anyhow!("frame {name}: {e}"))?;
                if data.len() != *len {
                    bail!(
                        "frame {name}: announced {len} bytes, received {} (corrupted serial stream?)",
                        data.len()
                    );
                }
                let data = if *gzipped {
                    gunzip(&data).map_err(|e| anyhow!("frame {name}: {e:#}"))?
                } else {
                    data
                };
                frames.frames.push((std::mem::take(name), data));
                current = None;
            } else {
                body.push_str(line);
            }
            continue;
        }
        // Anything else written to the port may precede a header without a line break.
        let header = ["GUARD-FRAME ", "GUARD-GZFRAME "]
            .into_iter()
            .find_map(|tag| {
                line.find(tag)
                    .map(|at| (&line[at + tag.len()..], tag == "GUARD-GZFRAME "))
            });
        if let Some((rest, gzipped)) = header {
            let (len, name) = rest
                .split_once(' ')
                .ok_or_else(|| anyhow!("malformed frame header {line:?}"))?;
            let len: usize = len
                .trim()
                .parse()
                .map_err(|_| anyhow!("malformed frame length in {line:?}"))?;
            current = Some((name.to_string(), len, gzipped, String::new()));
        } else if line.trim_end().ends_with("GUARD-DONE") {
            frames.done = true;
        }
    }
    Ok(frames)
}

/// Decompresses with the system's gzip (Essential on Debian), which keeps xtask free of a
/// compression crate.
fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("running gzip -dc: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "gzip -dc failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Standard base64 (RFC 4648, padded), whitespace ignored.
pub fn decode_base64(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut padding = 0;
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            other => bail!("invalid base64 byte 0x{other:02x}"),
        };
        if padding > 0 {
            bail!("base64 data after padding");
        }
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(decode_base64(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(decode_base64("Zm9v\r\nYmFy\n").unwrap(), b"foobar");
        assert!(decode_base64("Zm9v!").is_err());
    }

    #[test]
    fn frames_parse_with_noise_and_crlf() {
        let stream = b"junk\r\nGUARD-FRAME 2 exit\r\nMAo=\r\nGUARD-END\r\nGUARD-FRAME 6 results/a b\nZm9v\nYmFy\nGUARD-END\nGUARD-DONE\n";
        let frames = parse(stream).unwrap();
        assert!(frames.done);
        assert_eq!(frames.get("exit").unwrap(), b"0\n");
        assert_eq!(frames.get("results/a b").unwrap(), b"foobar");
    }

    #[test]
    fn garbage_before_a_header_without_newline_is_tolerated() {
        let frames =
            parse(b"\x00\xffrandomGUARD-FRAME 2 exit\nMAo=\nGUARD-END\nxyGUARD-DONE\n").unwrap();
        assert!(frames.done);
        assert_eq!(frames.get("exit").unwrap(), b"0\n");
    }

    #[test]
    fn gzipped_frames_are_inflated() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let pipe = |cmd: &str, arg: Option<&str>, input: &[u8]| {
            let mut c = Command::new(cmd);
            c.args(arg).stdin(Stdio::piped()).stdout(Stdio::piped());
            let mut child = c.spawn().unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            child.wait_with_output().unwrap().stdout
        };
        let gz = pipe("gzip", Some("-c"), b"hello hello hello");
        let b64 = String::from_utf8(pipe("base64", None, &gz)).unwrap();
        let stream = format!(
            "GUARD-GZFRAME {} log\n{b64}GUARD-END\nGUARD-DONE\n",
            gz.len()
        );
        let frames = parse(stream.as_bytes()).unwrap();
        assert_eq!(frames.get("log").unwrap(), b"hello hello hello");
    }

    #[test]
    fn truncated_stream_is_not_done_and_drops_partial_frame() {
        let frames =
            parse(b"GUARD-FRAME 2 exit\nMAo=\nGUARD-END\nGUARD-FRAME 100 stdout\nZm9v").unwrap();
        assert!(!frames.done);
        assert_eq!(frames.frames.len(), 1);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        assert!(parse(b"GUARD-FRAME 4 x\nZm9v\nGUARD-END\n").is_err());
    }
}

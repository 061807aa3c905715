//! Where `quicast listen` writes: stdout, or a file that is created (or truncated) only when
//! the first audio arrives, so a refused listen (no such stream, a bad token, a node that
//! cannot be reached or trusted) leaves no empty file, and never empties an existing one.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::bail;

pub enum Output {
    Stdout(io::Stdout),
    File {
        path: PathBuf,
        /// Open once audio arrived.
        file: Option<File>,
        /// What came before the audio (the Ogg headers), written with it.
        pending: Vec<u8>,
    },
}

impl Output {
    /// `-` for stdout, or a file path, checked now without being touched: an existing file
    /// must be a file we may write, a new one must have its directory.
    pub fn new(spec: &str) -> anyhow::Result<Output> {
        if spec == "-" {
            return Ok(Output::Stdout(io::stdout()));
        }
        let path = PathBuf::from(spec);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => bail!("--output {spec}: a directory, not a file"),
            Ok(_) => {
                // Opened for writing without truncating: its contents stay as they are.
                if let Err(e) = std::fs::OpenOptions::new().write(true).open(&path) {
                    bail!(
                        "--output {spec}: cannot write it ({})",
                        super::io_reason(&e)
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                if !dir.is_dir() {
                    bail!("--output {spec}: no such directory {}", dir.display());
                }
            }
            Err(e) => bail!("--output {spec}: {}", super::io_reason(&e)),
        }
        Ok(Output::File {
            path,
            file: None,
            pending: Vec::new(),
        })
    }

    /// Writes `bytes`; `audio` says whether they carry audio (a file is created at the first
    /// that do; what comes before is held until then).
    pub fn write(&mut self, bytes: &[u8], audio: bool) -> io::Result<()> {
        match self {
            Output::Stdout(out) => {
                out.write_all(bytes)?;
                out.flush()
            }
            Output::File {
                path,
                file,
                pending,
            } => {
                if file.is_none() {
                    if !audio {
                        pending.extend_from_slice(bytes);
                        return Ok(());
                    }
                    let mut f = File::create(&path).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot create {}: {}", path.display(), super::io_reason(&e)),
                        )
                    })?;
                    f.write_all(pending)?;
                    pending.clear();
                    *file = Some(f);
                }
                match file {
                    Some(f) => {
                        f.write_all(bytes)?;
                        f.flush()
                    }
                    None => Ok(()),
                }
            }
        }
    }

    /// Writes the stream's end, if anything was written (a file never created stays so).
    pub fn finish(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Output::File { file: None, .. } => Ok(()),
            _ => self.write(bytes, true),
        }
    }
}

//! The one way the collector reads a file: regular files only, bounded by size.
//!
//! A run folder is written by an instrument and shared over the network; anything can be put in
//! it. Before a file is opened, its metadata (following symlinks) must say "regular file", so a
//! FIFO, a socket, a device (a symlink to `/dev/zero`) or a directory is refused without being
//! opened: opening a FIFO for reading would block until a writer appears. Where the platform
//! allows, the file is also opened non-blocking, so a file swapped for a FIFO between the check
//! and the open still cannot hang the collector; the handle's own metadata is then checked again
//! (the file it names is the one read). Reads stop one byte past the cap, so a file that grows
//! while it is read is refused too, never read without bound.

use std::io::Read;
use std::path::{Path, PathBuf};

/// One MiB.
pub const MIB: u64 = 1024 * 1024;

/// Size caps, in bytes. The defaults leave a wide margin over real files: RunInfo.xml and
/// RunParameters.xml of the sample runs are 0.6 to 37 KB (a NovaSeq X RunInfo.xml that lists
/// every tile stays well under 1 MiB); InterOp files are 4 KB to 3.6 MB here and reach some
/// hundreds of MB on the largest flow cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RunInfo.xml, RunParameters.xml.
    pub xml_max_bytes: u64,
    /// Each InterOp/*.bin file.
    pub interop_max_bytes: u64,
    /// The watcher's own state file per run.
    pub state_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            xml_max_bytes: 4 * MIB,
            interop_max_bytes: 2048 * MIB,
            state_max_bytes: 256 * MIB,
        }
    }
}

/// What a refused path turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Other,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Other => "not a regular file",
        })
    }
}

/// Why a file was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Absent, unreadable, or the read failed.
    #[error("{file}: cannot read: {message}")]
    Io { file: PathBuf, message: String },
    /// Not a regular file (after following symlinks): refused without reading.
    #[error("{file}: refused: {kind}, not a regular file")]
    NotRegular { file: PathBuf, kind: FileKind },
    /// Larger than the cap: refused without reading past the cap.
    #[error("{file}: refused: larger than the cap of {cap} bytes ({size} bytes or more)")]
    TooLarge { file: PathBuf, size: u64, cap: u64 },
}

fn kind_of(t: std::fs::FileType) -> FileKind {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return FileKind::Fifo;
        }
        if t.is_socket() {
            return FileKind::Socket;
        }
        if t.is_char_device() {
            return FileKind::CharDevice;
        }
        if t.is_block_device() {
            return FileKind::BlockDevice;
        }
    }
    if t.is_dir() {
        FileKind::Directory
    } else {
        FileKind::Other
    }
}

/// `O_NONBLOCK` where its value is known without the libc crate (Linux on the common
/// architectures); elsewhere 0 and the check before opening is what keeps FIFOs out.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "s390x",
        target_arch = "powerpc64",
        target_arch = "loongarch64"
    )
))]
const O_NONBLOCK: i32 = 0o4000;
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "s390x",
        target_arch = "powerpc64",
        target_arch = "loongarch64"
    )
)))]
const O_NONBLOCK: i32 = 0;

fn open(file: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(O_NONBLOCK);
    }
    options.open(file)
}

/// Reads a whole regular file of at most `cap` bytes.
pub fn read_bounded(file: &Path, cap: u64) -> Result<Vec<u8>, FileError> {
    let io = |e: std::io::Error| FileError::Io {
        file: file.to_path_buf(),
        message: e.to_string(),
    };
    let check = |meta: &std::fs::Metadata| -> Result<(), FileError> {
        if !meta.is_file() {
            return Err(FileError::NotRegular {
                file: file.to_path_buf(),
                kind: kind_of(meta.file_type()),
            });
        }
        if meta.len() > cap {
            return Err(FileError::TooLarge {
                file: file.to_path_buf(),
                size: meta.len(),
                cap,
            });
        }
        Ok(())
    };
    // Follows symlinks: a link to a regular file is read, a link to a device is not.
    check(&std::fs::metadata(file).map_err(io)?)?;
    let handle = open(file).map_err(io)?;
    let meta = handle.metadata().map_err(io)?;
    check(&meta)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    handle
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(FileError::TooLarge {
            file: file.to_path_buf(),
            size: bytes.len() as u64,
            cap,
        });
    }
    Ok(bytes)
}

/// Reads a regular UTF-8 text file of at most `cap` bytes.
pub fn read_text_bounded(file: &Path, cap: u64) -> Result<String, FileError> {
    String::from_utf8(read_bounded(file, cap)?).map_err(|e| FileError::Io {
        file: file.to_path_buf(),
        message: format!("not UTF-8 text: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn regular_files_within_the_cap_are_read_and_others_refused() {
        let d = dir("unit");
        let f = d.join("RunInfo.xml");
        std::fs::write(&f, b"<RunInfo/>").unwrap();
        assert_eq!(read_bounded(&f, 10).unwrap(), b"<RunInfo/>");
        let e = read_bounded(&f, 9).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { cap: 9, .. }), "{e}");
        assert!(e.to_string().contains("RunInfo.xml") && e.to_string().contains("cap of 9"));
        assert!(matches!(
            read_bounded(&d, 100).unwrap_err(),
            FileError::NotRegular {
                kind: FileKind::Directory,
                ..
            }
        ));
        assert!(matches!(
            read_bounded(&d.join("absent"), 100).unwrap_err(),
            FileError::Io { .. }
        ));
        #[cfg(unix)]
        {
            let link = d.join("link.xml");
            std::os::unix::fs::symlink(&f, &link).unwrap();
            assert_eq!(read_bounded(&link, 100).unwrap(), b"<RunInfo/>");
            let zero = d.join("zero.xml");
            std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
            assert!(matches!(
                read_bounded(&zero, 100).unwrap_err(),
                FileError::NotRegular {
                    kind: FileKind::CharDevice,
                    ..
                }
            ));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}

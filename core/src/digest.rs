//! Model files by content: sha256, lowercase hex.

use std::fs::Metadata;
use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// sha256 of bytes in memory, lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A digest is 64 lowercase hex digits; anything else could name a path.
pub fn valid_digest(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a remembered digest holds for: a file's size and modification time. A file
/// changed in place almost always moves one of them, so hashing again only when either
/// moved keeps a large model from being read whole on every load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
}

impl FileStamp {
    /// None where the platform keeps no mtime, or one before 1970.
    pub fn of(meta: &Metadata) -> Option<FileStamp> {
        let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some(FileStamp {
            len: meta.len(),
            mtime_ns: mtime.as_nanos(),
        })
    }

    /// The stamp of the file at `path` now.
    pub fn read(path: &Path) -> Option<FileStamp> {
        FileStamp::of(&std::fs::metadata(path).ok()?)
    }

    /// One line of text, as kept in a marker file; [`FileStamp::decode`] reads it back.
    pub fn encode(&self) -> String {
        format!("{} {}\n", self.len, self.mtime_ns)
    }

    /// None for anything [`FileStamp::encode`] did not write (a torn or foreign marker).
    pub fn decode(text: &str) -> Option<FileStamp> {
        let mut fields = text.trim_end_matches('\n').split(' ');
        let len = fields.next()?.parse().ok()?;
        let mtime_ns = fields.next()?.parse().ok()?;
        fields
            .next()
            .is_none()
            .then_some(FileStamp { len, mtime_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_bytes_digests_agree_and_paths_are_not_digests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"model bytes").expect("write");
        let d = sha256_file(&path).expect("read");
        assert_eq!(d, sha256_bytes(b"model bytes"));
        assert!(valid_digest(&d));
        assert!(!valid_digest("../etc/passwd"));
        assert!(!valid_digest(&d.to_uppercase()));
    }

    #[test]
    fn a_stamp_reads_back_what_it_wrote_and_moves_with_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"model bytes").expect("write");
        let stamp = FileStamp::read(&path).expect("stamp");
        assert_eq!(stamp.len, 11);
        assert_eq!(FileStamp::decode(&stamp.encode()), Some(stamp));
        for torn in ["", "11", "11 x", "11 5 7", "-1 5"] {
            assert_eq!(FileStamp::decode(torn), None, "{torn:?}");
        }
        // Set the mtime rather than wait for the clock: filesystems keep it coarsely.
        let file = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .expect("set mtime");
        let moved = FileStamp::read(&path).expect("stamp");
        assert_eq!(moved.len, stamp.len);
        assert_eq!(moved.mtime_ns, 1_000_000_000_000_000);
    }
}

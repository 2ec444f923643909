//! The full sync's deletes, held back until the listing is through: spooled to an unlinked
//! file in the share's state directory (one framed key each, as the listing spool), counted,
//! and carried out only if the mass-delete guard ([`crate::engine::guard`]) lets them.
//!
//! Holding them back also means no delete is ever decided on a listing that later turns out
//! to be disordered or cut short: the merge must end cleanly first. Memory stays a buffer,
//! whatever the number of deletes.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::cache::journal::{self, FRAME_CRC, FRAME_HEADER_LEN, MAX_FRAME};

/// Keys to delete, on disk.
pub(super) struct DeleteSpool {
    out: BufWriter<File>,
    count: u64,
    frame: Vec<u8>,
}

impl DeleteSpool {
    /// A new, empty spool at `path` (unlinked at once: a crash leaves nothing behind, and the
    /// next full sync decides again).
    pub(super) fn create(path: &Path) -> io::Result<DeleteSpool> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        std::fs::remove_file(path)?;
        Ok(DeleteSpool {
            out: BufWriter::with_capacity(64 * 1024, file),
            count: 0,
            frame: Vec::new(),
        })
    }

    pub(super) fn push(&mut self, key: &str) -> io::Result<()> {
        journal::encode_record(&key, &mut self.frame).map_err(io::Error::other)?;
        self.out.write_all(&self.frame)?;
        self.count += 1;
        Ok(())
    }

    pub(super) fn len(&self) -> u64 {
        self.count
    }

    /// The keys, in the order they were pushed.
    pub(super) fn into_keys(self) -> io::Result<SpooledKeys> {
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(SpooledKeys {
            input: BufReader::with_capacity(64 * 1024, file),
            left: self.count,
            payload: Vec::new(),
        })
    }
}

pub(super) struct SpooledKeys {
    input: BufReader<File>,
    left: u64,
    payload: Vec<u8>,
}

impl Iterator for SpooledKeys {
    type Item = io::Result<String>;

    fn next(&mut self) -> Option<io::Result<String>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut read = || -> io::Result<String> {
            let mut head = [0u8; FRAME_HEADER_LEN];
            self.input.read_exact(&mut head)?;
            let (len, crc) = journal::parse_frame_header(&head)
                .ok_or_else(|| io::Error::other("short frame header"))?;
            if len > MAX_FRAME {
                return Err(io::Error::other("over-long frame"));
            }
            self.payload.resize(len, 0);
            self.input.read_exact(&mut self.payload)?;
            if FRAME_CRC.checksum(&self.payload) != crc {
                return Err(io::Error::other("frame checksum mismatch"));
            }
            postcard::from_bytes(&self.payload).map_err(io::Error::other)
        };
        let item = read();
        if item.is_err() {
            self.left = 0;
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_in_order_and_nothing_stays_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deletes.spool");
        let mut spool = DeleteSpool::create(&path).unwrap();
        assert!(!path.exists());
        let keys: Vec<String> = (0..5000).map(|i| format!("dir/{i:05} é+%")).collect();
        for k in &keys {
            spool.push(k).unwrap();
        }
        assert_eq!(spool.len(), 5000);
        let back: Vec<String> = spool.into_keys().unwrap().map(Result::unwrap).collect();
        assert_eq!(back, keys);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

//! Append-only journals of postcard records, framed so a torn tail is detected and dropped.
//!
//! Layout: an 8-byte header (`b"SGWJ"`, u16 LE format version, u16 LE kind) and then frames
//! `u32 LE payload length | u32 LE CRC-32/ISCSI of the payload | payload`. A kill or power
//! cut while appending can leave a short, zeroed or garbled last frame; reading stops cleanly
//! at the first frame that does not check out and reports how many bytes are valid, so the
//! writer truncates there before appending again. The header, by contrast, is never torn
//! (callers create journals under a temporary name and rename them into place), so a bad
//! header is an error, not a reason to start over.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 4] = *b"SGWJ";
/// The framing version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 8;
/// Bytes before each payload: length and CRC.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a frame may carry. Bigger lengths are treated as garbage.
pub const MAX_FRAME: usize = 64 * 1024;
/// Appended records are buffered up to this much before they are written to the file.
pub const JOURNAL_BUFFER: usize = 1024 * 1024;

/// CRC-32C guards each payload (catches torn and flipped bytes).
pub(crate) static FRAME_CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

#[derive(Debug)]
pub enum JournalError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// The file does not start with the journal magic (or is shorter than a header).
    BadMagic {
        path: PathBuf,
    },
    /// Written by a newer (or unknown) format version: refusing beats misreading it.
    UnsupportedVersion {
        path: PathBuf,
        found: u16,
    },
    /// The header is valid but the journal holds another kind of record.
    WrongKind {
        path: PathBuf,
        expected: u16,
        found: u16,
    },
    /// A record is bigger than [`MAX_FRAME`] once encoded.
    RecordTooLarge {
        bytes: usize,
    },
    /// A record could not be encoded.
    Encode(postcard::Error),
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io { path, source } => {
                write!(f, "journal {}: {source}", path.display())
            }
            JournalError::BadMagic { path } => write!(
                f,
                "journal {}: not an sgw journal (bad or missing header); \
                 move it aside to start over",
                path.display()
            ),
            JournalError::UnsupportedVersion { path, found } => write!(
                f,
                "journal {}: format version {found} is not supported (this agent reads \
                 version {FORMAT_VERSION}); was it written by a newer agent?",
                path.display()
            ),
            JournalError::WrongKind {
                path,
                expected,
                found,
            } => write!(
                f,
                "journal {}: holds record kind {found}, expected kind {expected}",
                path.display()
            ),
            JournalError::RecordTooLarge { bytes } => write!(
                f,
                "journal record of {bytes} bytes exceeds the {MAX_FRAME}-byte frame limit"
            ),
            JournalError::Encode(e) => write!(f, "journal record could not be encoded: {e}"),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { source, .. } => Some(source),
            JournalError::Encode(e) => Some(e),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encode the 8-byte file header.
pub fn encode_header(kind: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&kind.to_le_bytes());
    h
}

/// Check a file header. `bytes` shorter than a header counts as bad magic.
pub fn check_header(path: &Path, bytes: &[u8], kind: u16) -> Result<(), JournalError> {
    if bytes.len() < HEADER_LEN || bytes[..4] != MAGIC {
        return Err(JournalError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(JournalError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let found = u16::from_le_bytes([bytes[6], bytes[7]]);
    if found != kind {
        return Err(JournalError::WrongKind {
            path: path.to_path_buf(),
            expected: kind,
            found,
        });
    }
    Ok(())
}

/// Append one frame (header + payload) to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), JournalError> {
    if payload.len() > MAX_FRAME {
        return Err(JournalError::RecordTooLarge {
            bytes: payload.len(),
        });
    }
    // Lossless: checked against MAX_FRAME above.
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&FRAME_CRC.checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Serialize `record` with postcard and frame it into `out` (which is cleared first).
pub fn encode_record<T: Serialize>(record: &T, out: &mut Vec<u8>) -> Result<(), JournalError> {
    out.clear();
    let payload = postcard::to_stdvec(record).map_err(JournalError::Encode)?;
    encode_frame(&payload, out)
}

/// Parse the frame header at the start of `bytes`: `(payload length, crc)`, or `None` when
/// fewer than [`FRAME_HEADER_LEN`] bytes are there.
pub fn parse_frame_header(bytes: &[u8]) -> Option<(usize, u32)> {
    let head: [u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    Some((len, crc))
}

/// What reading a journal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Records passed to the callback.
    pub records: u64,
    /// Length of the valid prefix (header + whole good frames). Truncate to this.
    pub valid_len: u64,
    /// Bytes after the valid prefix that were dropped (0 for a clean journal).
    pub dropped_bytes: u64,
}

/// Read every valid record of the journal at `path`, in order, into `on_record`.
///
/// Stops at the first frame that is short, fails its CRC, is over-long or does not decode:
/// that is the torn tail, and everything from there on is reported in
/// [`Recovery::dropped_bytes`]. Memory is one frame at a time.
pub fn read_journal<T, F>(path: &Path, kind: u16, on_record: F) -> Result<Recovery, JournalError>
where
    T: DeserializeOwned,
    F: FnMut(T),
{
    let file = File::open(path).map_err(io_err(path))?;
    read_journal_file(file, path, kind, on_record)
}

/// [`read_journal`] of a file the caller opened (the share's staging sidecars are opened
/// relative to a directory descriptor, never by path); `path` only names it in errors.
pub fn read_journal_file<T, F>(
    file: File,
    path: &Path,
    kind: u16,
    mut on_record: F,
) -> Result<Recovery, JournalError>
where
    T: DeserializeOwned,
    F: FnMut(T),
{
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut header = [0u8; HEADER_LEN];
    let got = read_up_to(&mut reader, &mut header).map_err(io_err(path))?;
    check_header(path, &header[..got], kind)?;

    let mut valid_len = HEADER_LEN as u64;
    let mut records = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; FRAME_HEADER_LEN];
        let got = read_up_to(&mut reader, &mut head).map_err(io_err(path))?;
        let Some((len, crc)) = parse_frame_header(&head[..got]) else {
            break;
        };
        if len > MAX_FRAME {
            break;
        }
        payload.resize(len, 0);
        let got = read_up_to(&mut reader, &mut payload).map_err(io_err(path))?;
        if got < len || FRAME_CRC.checksum(&payload) != crc {
            break;
        }
        let Ok(record) = postcard::from_bytes::<T>(&payload) else {
            break;
        };
        on_record(record);
        records += 1;
        valid_len += (FRAME_HEADER_LEN + len) as u64;
    }
    Ok(Recovery {
        records,
        valid_len,
        dropped_bytes: file_len.saturating_sub(valid_len),
    })
}

/// Fill `buf` as far as the reader allows; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Appends records of type `T` to a journal. Appends are buffered; [`JournalWriter::sync`]
/// makes everything appended so far durable.
pub struct JournalWriter<T> {
    path: PathBuf,
    out: BufWriter<File>,
    scratch: Vec<u8>,
    _records: PhantomData<fn(&T)>,
}

impl<T: Serialize> JournalWriter<T> {
    /// Create (or truncate) a journal holding just the header, and make it durable.
    /// The caller fsyncs the directory if the file is new.
    pub fn create(path: &Path, kind: u16) -> Result<Self, JournalError> {
        let mut file = File::create(path).map_err(io_err(path))?;
        file.write_all(&encode_header(kind)).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        Ok(Self::from_file(path, file))
    }

    /// Open an existing journal for appending after [`read_journal`] recovered it: checks the
    /// header, cuts the torn tail at `valid_len` (durably) and positions at the end.
    pub fn open_append(path: &Path, kind: u16, valid_len: u64) -> Result<Self, JournalError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut header = [0u8; HEADER_LEN];
        let got = read_up_to(&mut file, &mut header).map_err(io_err(path))?;
        check_header(path, &header[..got], kind)?;
        let valid_len = valid_len.max(HEADER_LEN as u64);
        let len = file.metadata().map_err(io_err(path))?.len();
        if len != valid_len {
            file.set_len(valid_len).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
        }
        file.seek(SeekFrom::Start(valid_len))
            .map_err(io_err(path))?;
        Ok(Self::from_file(path, file))
    }

    fn from_file(path: &Path, file: File) -> Self {
        JournalWriter {
            path: path.to_path_buf(),
            // Appends stay in memory until `sync` (callers sync far more often than every
            // MiB), so a record cannot reach the disk before what it describes is durable.
            // Only the bytes actually buffered are touched: RSS is what is between syncs.
            out: BufWriter::with_capacity(JOURNAL_BUFFER, file),
            scratch: Vec::new(),
            _records: PhantomData,
        }
    }

    /// Buffer one record. Nothing is durable until [`Self::sync`].
    pub fn append(&mut self, record: &T) -> Result<(), JournalError> {
        encode_record(record, &mut self.scratch)?;
        self.out
            .write_all(&self.scratch)
            .map_err(io_err(&self.path))
    }

    /// Write out buffered records and `fdatasync` the journal.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.out.flush().map_err(io_err(&self.path))?;
        self.out.get_ref().sync_data().map_err(io_err(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const KIND: u16 = 7;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        key: String,
        n: u64,
    }

    fn recs() -> Vec<Rec> {
        vec![
            Rec {
                key: "a".into(),
                n: 1,
            },
            Rec {
                key: "bb/c".into(),
                n: 300,
            },
            Rec {
                key: "ddd".repeat(20),
                n: u64::MAX,
            },
        ]
    }

    fn write_three(path: &Path) -> Vec<u64> {
        let mut w = JournalWriter::<Rec>::create(path, KIND).expect("create");
        let mut ends = vec![HEADER_LEN as u64];
        for r in recs() {
            w.append(&r).expect("append");
            w.sync().expect("sync");
            ends.push(std::fs::metadata(path).expect("meta").len());
        }
        ends
    }

    fn read_all(path: &Path) -> Result<(Vec<Rec>, Recovery), JournalError> {
        let mut out = Vec::new();
        let rec = read_journal(path, KIND, |r: Rec| out.push(r))?;
        Ok((out, rec))
    }

    #[test]
    fn round_trip_and_append_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        write_three(&path);
        let (got, rec) = read_all(&path).expect("read");
        assert_eq!(got, recs());
        assert_eq!(rec.records, 3);
        assert_eq!(rec.dropped_bytes, 0);
        let mut w = JournalWriter::<Rec>::open_append(&path, KIND, rec.valid_len).expect("open");
        let extra = Rec {
            key: "z".into(),
            n: 9,
        };
        w.append(&extra).expect("append");
        w.sync().expect("sync");
        let (got, _) = read_all(&path).expect("read");
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], extra);
    }

    #[test]
    fn truncation_at_every_offset_recovers_exactly_the_whole_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let ends = write_three(&path);
        let full = std::fs::read(&path).expect("read");
        let cut_path = dir.path().join("cut");
        for cut in HEADER_LEN..=full.len() {
            std::fs::write(&cut_path, &full[..cut]).expect("write");
            let (got, rec) = read_all(&cut_path).expect("torn tail is not an error");
            let whole = ends.iter().filter(|&&e| e <= cut as u64).count() - 1;
            assert_eq!(got, recs()[..whole], "cut at {cut}");
            assert_eq!(rec.valid_len, ends[whole], "cut at {cut}");
            assert_eq!(rec.dropped_bytes, cut as u64 - ends[whole]);

            // The writer cuts the tail, and what it appends next is read back after the prefix.
            let mut w =
                JournalWriter::<Rec>::open_append(&cut_path, KIND, rec.valid_len).expect("open");
            let extra = Rec {
                key: "new".into(),
                n: cut as u64,
            };
            w.append(&extra).expect("append");
            w.sync().expect("sync");
            let (again, _) = read_all(&cut_path).expect("read");
            assert_eq!(again.len(), whole + 1);
            assert_eq!(again[whole], extra, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_in_the_last_frame_drops_only_that_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let ends = write_three(&path);
        let full = std::fs::read(&path).expect("read");
        for pos in ends[2] as usize..full.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = full.clone();
                bad[pos] ^= bit;
                std::fs::write(&path, &bad).expect("write");
                let (got, rec) = read_all(&path).expect("read");
                assert_eq!(got, recs()[..2], "flip at {pos}");
                assert_eq!(rec.valid_len, ends[2]);
            }
        }
    }

    #[test]
    fn garbage_and_zero_tails_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let ends = write_three(&path);
        let full = std::fs::read(&path).expect("read");
        let tails: Vec<Vec<u8>> = vec![
            vec![0; 4096],                                        // zero-filled (power cut)
            vec![0xff; 100],                                      // huge length
            [&u32::MAX.to_le_bytes()[..], &[0; 4]].concat(),      // over-long length
            [&8u32.to_le_bytes()[..], &[0; 4], &[1; 8]].concat(), // wrong CRC
        ];
        for tail in tails {
            let mut bad = full.clone();
            bad.extend_from_slice(&tail);
            std::fs::write(&path, &bad).expect("write");
            let (got, rec) = read_all(&path).expect("read");
            assert_eq!(got, recs());
            assert_eq!(rec.valid_len, ends[3]);
            assert_eq!(rec.dropped_bytes, tail.len() as u64);
        }
    }

    #[test]
    fn a_frame_with_good_crc_but_undecodable_payload_ends_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let ends = write_three(&path);
        let mut bytes = std::fs::read(&path).expect("read");
        // A string length varint that runs past the payload.
        encode_frame(&[0xff, 0xff, 0xff, 0x0f], &mut bytes).expect("frame");
        std::fs::write(&path, &bytes).expect("write");
        let (got, rec) = read_all(&path).expect("read");
        assert_eq!(got, recs());
        assert_eq!(rec.valid_len, ends[3]);
    }

    #[test]
    fn bad_headers_are_errors_not_resets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        write_three(&path);
        let good = std::fs::read(&path).expect("read");

        let mut wrong_magic = good.clone();
        wrong_magic[0] = b'X';
        std::fs::write(&path, &wrong_magic).expect("write");
        let err = read_all(&path).expect_err("wrong magic");
        assert!(matches!(err, JournalError::BadMagic { .. }), "{err}");
        assert!(JournalWriter::<Rec>::open_append(&path, KIND, 8).is_err());
        // Nothing was truncated by the refused open.
        assert_eq!(std::fs::read(&path).expect("read"), wrong_magic);

        let mut newer = good.clone();
        newer[4..6].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        std::fs::write(&path, &newer).expect("write");
        let err = read_all(&path).expect_err("newer version");
        assert!(
            matches!(err, JournalError::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1)
        );
        assert!(err.to_string().contains("version 2"), "{err}");

        let mut other_kind = good.clone();
        other_kind[6..8].copy_from_slice(&(KIND + 1).to_le_bytes());
        std::fs::write(&path, &other_kind).expect("write");
        assert!(matches!(
            read_all(&path),
            Err(JournalError::WrongKind { .. })
        ));

        for short in [&b""[..], b"SGW", b"SGWJ\x01"] {
            std::fs::write(&path, short).expect("write");
            assert!(matches!(
                read_all(&path),
                Err(JournalError::BadMagic { .. })
            ));
        }
    }

    #[test]
    fn oversized_records_are_refused_on_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let mut w = JournalWriter::<Rec>::create(&path, KIND).expect("create");
        let big = Rec {
            key: "x".repeat(MAX_FRAME + 1),
            n: 0,
        };
        assert!(matches!(
            w.append(&big),
            Err(JournalError::RecordTooLarge { .. })
        ));
        w.sync().expect("sync");
        let (got, rec) = read_all(&path).expect("read");
        assert!(got.is_empty());
        assert_eq!(rec.dropped_bytes, 0);
    }
}

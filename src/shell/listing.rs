//! The bucket listing of a full sync: one pass over the bucket, spooled to local disk.
//!
//! A helper thread lists page after page as fast as the server answers and appends every
//! entry to an unlinked spool file (framed postcard, CRC-checked like the journal); the
//! share thread reads the spool in key order at the pace of its downloads. So:
//!
//! - the bucket is listed once per full sync, yet SyncProgress knows the totals as soon as
//!   the listing is through, long before the downloads are (the totals arrive on the
//!   receiver [`SpooledListing::open`] returns);
//! - memory is a page and two 64 KiB buffers whatever the bucket size; the spool takes about
//!   the listing's size on disk, for as long as the sync runs (the file is unlinked at
//!   once, so nothing is left behind by a crash).
//!
//! A listing that fails or is cut short is an error item, never a silent end: a short
//! listing would turn into deletes.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, channel, sync_channel};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ShareError;
use crate::cache::journal::{self, FRAME_CRC, FRAME_HEADER_LEN, MAX_FRAME};
use crate::cloud::ObjectStore;
use crate::daemon::Shutdown;
use crate::model::ObjectMeta;

/// One listing entry as spooled (listings never carry a CRC-64).
#[derive(Serialize, Deserialize)]
struct SpoolEntry {
    key: String,
    size: u64,
    etag: Option<String>,
    last_modified: i64,
}

/// What the lister tells the reader, in order.
enum Spooled {
    /// This many more entries are complete in the spool file.
    Entries(u64),
    /// The last page was spooled.
    End,
    Failed(ShareError),
}

/// Objects and bytes under the prefix, once the whole listing is spooled.
pub type Totals = (u64, u64);

/// The remote listing as a key-ordered stream of [`ObjectMeta`] (see the module docs).
pub struct SpooledListing {
    shutdown: Shutdown,
    spool: BufReader<File>,
    news: Receiver<Spooled>,
    /// Entries complete in the spool and not read yet.
    ready: u64,
    done: bool,
    payload: Vec<u8>,
}

impl SpooledListing {
    /// Start listing `prefix` into a spool created at `spool_path` (and unlinked at once).
    pub fn open(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        shutdown: &Shutdown,
        spool_path: &Path,
    ) -> io::Result<(SpooledListing, Receiver<Totals>)> {
        let writer = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(spool_path)?;
        let reader = File::open(spool_path)?;
        std::fs::remove_file(spool_path)?;
        let (news_tx, news) = channel();
        let (totals_tx, totals) = sync_channel(1);
        let (prefix, stop) = (prefix.to_owned(), shutdown.clone());
        std::thread::Builder::new()
            .name("sgw-list".into())
            .spawn(move || {
                let out = BufWriter::with_capacity(64 * 1024, writer);
                list_into_spool(&*store, &prefix, &stop, out, &news_tx, &totals_tx);
            })?;
        Ok((
            SpooledListing {
                shutdown: shutdown.clone(),
                spool: BufReader::with_capacity(64 * 1024, reader),
                news,
                ready: 0,
                done: false,
                payload: Vec::new(),
            },
            totals,
        ))
    }

    fn read_entry(&mut self) -> io::Result<ObjectMeta> {
        let mut head = [0u8; FRAME_HEADER_LEN];
        self.spool.read_exact(&mut head)?;
        let (len, crc) = journal::parse_frame_header(&head)
            .ok_or_else(|| io::Error::other("short frame header"))?;
        if len > MAX_FRAME {
            return Err(io::Error::other("over-long frame"));
        }
        self.payload.resize(len, 0);
        self.spool.read_exact(&mut self.payload)?;
        if FRAME_CRC.checksum(&self.payload) != crc {
            return Err(io::Error::other("frame checksum mismatch"));
        }
        let e: SpoolEntry = postcard::from_bytes(&self.payload).map_err(io::Error::other)?;
        Ok(ObjectMeta {
            key: e.key,
            size: e.size,
            etag: e.etag,
            last_modified: e.last_modified,
            crc64nvme: None,
        })
    }
}

/// The lister thread: pages → spool, news after each page, totals at the end.
fn list_into_spool(
    store: &dyn ObjectStore,
    prefix: &str,
    stop: &Shutdown,
    mut out: BufWriter<File>,
    news: &Sender<Spooled>,
    totals: &SyncSender<Totals>,
) {
    let mut token: Option<String> = None;
    let (mut objects, mut bytes) = (0u64, 0u64);
    let mut frame = Vec::new();
    while !stop.is_triggered() {
        let page = match store.list_page(prefix, token.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                let _ = news.send(Spooled::Failed(ShareError::Cloud(e)));
                return;
            }
        };
        let mut added = 0u64;
        let written: io::Result<()> = (|| {
            for o in page.objects {
                // A server that ignores the prefix must not make us act outside it.
                if !o.key.starts_with(prefix) {
                    continue;
                }
                objects += 1;
                bytes += o.size;
                let entry = SpoolEntry {
                    key: o.key,
                    size: o.size,
                    etag: o.etag,
                    last_modified: o.last_modified,
                };
                journal::encode_record(&entry, &mut frame).map_err(io::Error::other)?;
                out.write_all(&frame)?;
                added += 1;
            }
            out.flush()
        })();
        if let Err(e) = written {
            let _ = news.send(Spooled::Failed(ShareError::Io(io::Error::new(
                e.kind(),
                format!("spooling the bucket listing: {e}"),
            ))));
            return;
        }
        // A send fails once the reader is dropped: nobody wants the rest.
        if added > 0 && news.send(Spooled::Entries(added)).is_err() {
            return;
        }
        match page.next {
            Some(next) => token = Some(next),
            None => {
                let _ = totals.send((objects, bytes));
                let _ = news.send(Spooled::End);
                return;
            }
        }
    }
}

impl Iterator for SpooledListing {
    type Item = Result<ObjectMeta, ShareError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.ready > 0 {
                self.ready -= 1;
                return Some(self.read_entry().map_err(|e| {
                    self.done = true;
                    self.ready = 0;
                    ShareError::Plan(format!("the listing spool cannot be read back: {e}"))
                }));
            }
            if self.done {
                return None;
            }
            if self.shutdown.is_triggered() {
                self.done = true;
                return Some(Err(ShareError::Stopped));
            }
            // Waiting for the lister: wake now and then, so a stop is not held up by a slow
            // server (the lister notices the stop between pages).
            let news = match self.news.recv_timeout(Duration::from_millis(200)) {
                Err(RecvTimeoutError::Timeout) => continue,
                Ok(news) => Ok(news),
                Err(RecvTimeoutError::Disconnected) => Err(()),
            };
            match news {
                Ok(Spooled::Entries(n)) => self.ready += n,
                Ok(Spooled::End) => self.done = true,
                Ok(Spooled::Failed(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                // The lister ended without the last page: never mistake that for the end of
                // the bucket.
                Err(_) => {
                    self.done = true;
                    return Some(Err(if self.shutdown.is_triggered() {
                        ShareError::Stopped
                    } else {
                        ShareError::Plan("the listing ended before its last page".into())
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{CloudError, ListPage};
    use std::sync::Mutex;

    /// A bucket of `keys` served `per_page` at a time; `fail_at` makes that page an error,
    /// `panic_at` kills the fetching thread there.
    struct PagedStore {
        keys: Vec<String>,
        per_page: usize,
        fail_at: Option<usize>,
        panic_at: Option<usize>,
        calls: Mutex<usize>,
    }

    impl PagedStore {
        fn new(n: usize, per_page: usize) -> PagedStore {
            PagedStore {
                keys: (0..n).map(|i| format!("p/{i:05}")).collect(),
                per_page,
                fail_at: None,
                panic_at: None,
                calls: Mutex::new(0),
            }
        }
    }

    impl ObjectStore for PagedStore {
        fn list_page(&self, _prefix: &str, token: Option<&str>) -> Result<ListPage, CloudError> {
            let start: usize = token.map_or(0, |t| t.parse().expect("our token"));
            let index = start / self.per_page;
            *self.calls.lock().expect("lock") += 1;
            if self.fail_at == Some(index) {
                return Err(CloudError::Transport("page lost".into()));
            }
            assert_ne!(self.panic_at, Some(index), "fetcher dies");
            let end = (start + self.per_page).min(self.keys.len());
            Ok(ListPage {
                objects: self.keys[start..end]
                    .iter()
                    .map(|k| ObjectMeta {
                        key: k.clone(),
                        size: 1,
                        etag: None,
                        last_modified: 0,
                        crc64nvme: None,
                    })
                    .collect(),
                next: (end < self.keys.len()).then(|| end.to_string()),
            })
        }
        fn head(&self, _: &str) -> Result<Option<ObjectMeta>, CloudError> {
            unreachable!()
        }
        fn get(
            &self,
            _: &str,
            _: u64,
            _: Option<&str>,
        ) -> Result<crate::cloud::ObjectBody, CloudError> {
            unreachable!()
        }
    }

    fn open(
        store: Arc<dyn ObjectStore>,
        shutdown: &Shutdown,
    ) -> (tempfile::TempDir, SpooledListing, Receiver<Totals>) {
        let dir = tempfile::tempdir().expect("tmp");
        let (listing, totals) =
            SpooledListing::open(store, "p/", shutdown, &dir.path().join("spool")).expect("open");
        (dir, listing, totals)
    }

    fn collect(store: PagedStore) -> Vec<Result<String, String>> {
        let (_dir, listing, _) = open(Arc::new(store), &Shutdown::new());
        listing
            .map(|r| r.map(|o| o.key).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn listing_yields_every_key_in_order_across_pages() {
        let got = collect(PagedStore::new(2345, 1000));
        assert_eq!(got.len(), 2345);
        assert!(got.iter().all(Result::is_ok));
        assert_eq!(got[0].as_deref(), Ok("p/00000"));
        assert_eq!(got[2344].as_deref(), Ok("p/02344"));
        assert!(collect(PagedStore::new(0, 1000)).is_empty());
    }

    #[test]
    fn a_failed_page_ends_the_listing_with_an_error() {
        let mut store = PagedStore::new(3000, 1000);
        store.fail_at = Some(1);
        let got = collect(store);
        assert_eq!(got.len(), 1001, "first page, then the error, then nothing");
        assert!(got[1000].as_ref().is_err_and(|e| e.contains("page lost")));
    }

    #[test]
    fn a_fetcher_that_dies_is_an_error_not_the_end_of_the_bucket() {
        let mut store = PagedStore::new(3000, 1000);
        store.panic_at = Some(2);
        let got = collect(store);
        assert_eq!(got.len(), 2001);
        assert!(
            got[2000]
                .as_ref()
                .is_err_and(|e| e.contains("before its last page"))
        );
    }

    #[test]
    fn the_lister_runs_ahead_and_the_totals_come_before_the_downloads_do() {
        let (dir, mut listing, totals) =
            open(Arc::new(PagedStore::new(10_000, 100)), &Shutdown::new());
        assert!(listing.next().is_some_and(|r| r.is_ok()));
        // The reader took one entry; the lister still lists the whole bucket.
        let (objects, bytes) = totals
            .recv_timeout(Duration::from_secs(10))
            .expect("totals");
        assert_eq!((objects, bytes), (10_000, 10_000));
        // The spool is unlinked: nothing is left in the directory, even now.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        assert_eq!(listing.count(), 9_999);
    }

    #[test]
    fn keys_outside_the_prefix_are_dropped() {
        let mut store = PagedStore::new(10, 4);
        store.keys[3] = "other/x".into();
        let got = collect(store);
        assert_eq!(got.len(), 9);
        assert!(
            got.iter()
                .all(|k| k.as_ref().is_ok_and(|k| k.starts_with("p/")))
        );
    }

    #[test]
    fn a_spool_that_cannot_be_created_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("no/such/dir/spool");
        let store: Arc<dyn ObjectStore> = Arc::new(PagedStore::new(1, 1));
        assert!(SpooledListing::open(store, "p/", &Shutdown::new(), &missing).is_err());
    }

    #[test]
    fn a_stopped_share_stops_listing() {
        let shutdown = Shutdown::new();
        let (_dir, mut listing, _) = open(Arc::new(PagedStore::new(5000, 1000)), &shutdown);
        assert!(listing.next().is_some_and(|r| r.is_ok()));
        shutdown.trigger();
        let rest: Vec<_> = listing.by_ref().skip_while(Result::is_ok).collect();
        assert_eq!(rest.len(), 1);
        assert!(matches!(rest[0], Err(ShareError::Stopped)));
    }
}

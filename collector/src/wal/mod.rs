//! The write-ahead log: a request is acknowledged only once its scrubbed spans are here and
//! fsync'd.
//!
//! One thread owns the open segment. Receivers encode their record on their own thread and hand
//! it over; the commit thread takes everything queued, writes it, and makes it durable with one
//! `fdatasync` (group commit), so concurrent requests share the cost of a flush. Durable batches
//! go on to the Parquet writer in log order. Segments are deleted once the writer has published
//! everything in them.

pub mod format;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

use crate::config::WalConfig;
use crate::error::{Error, Result};
use crate::record::SpanBatch;
use crate::telemetry::Telemetry;
use format::{Damage, SEGMENT_MAGIC};

/// The end of a record in the log: records are totally ordered by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WalPosition {
    pub segment: u64,
    pub offset: u64,
}

impl fmt::Display for WalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

impl FromStr for WalPosition {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<WalPosition, ()> {
        let (segment, offset) = s.split_once(':').ok_or(())?;
        Ok(WalPosition {
            segment: segment.parse().map_err(|_| ())?,
            offset: offset.parse().map_err(|_| ())?,
        })
    }
}

/// Receives every batch once it is durable, in log order; the flag is true for batches replayed
/// from an earlier run (which may already be published).
pub type DurableSink = Box<dyn FnMut(SpanBatch, WalPosition, bool) + Send>;

/// Most bytes one group commit gathers before it writes.
const MAX_GROUP_BYTES: usize = 32 << 20;

struct Append {
    record: Vec<u8>,
    batch: SpanBatch,
    done: oneshot::Sender<Result<WalPosition>>,
}

pub struct Wal {
    /// Taken on close, so appends after it fail fast.
    tx: RwLock<Option<mpsc::Sender<Append>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Sequence numbers of the segment files in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        if let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Bytes in the segment files in `dir`: what is written and not yet published and deleted.
/// Unreadable entries count as empty (a segment may be deleted while this runs).
pub fn size_on_disk(dir: &Path) -> u64 {
    list_segments(dir).map_or(0, |seqs| {
        seqs.into_iter()
            .filter_map(|seq| fs::metadata(segment_path(dir, seq)).ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Makes a directory's entries (new, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Replays the log in `dir` into `sink` (cutting torn or corrupt tails), then starts the
    /// commit thread on a fresh segment, feeding `sink` from then on.
    pub fn open(
        dir: &Path,
        config: &WalConfig,
        telemetry: Arc<Telemetry>,
        mut sink: DurableSink,
    ) -> Result<Wal> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let segments = list_segments(dir)?;
        for &seq in &segments {
            replay_segment(dir, seq, &telemetry, &mut sink)?;
        }
        let next_seq = segments.last().map_or(1, |s| s + 1);
        let (tx, rx) = mpsc::channel(1024);
        let mut committer = Committer {
            dir: dir.to_path_buf(),
            segment_bytes: config.segment_bytes,
            commit_delay: config.commit_delay,
            next_seq,
            current: None,
            telemetry,
            sink,
        };
        let thread = std::thread::Builder::new()
            .name("idtrail-wal".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| Error::io("starting the WAL thread", e))?;
        Ok(Wal {
            tx: RwLock::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Makes `batch` durable; resolves once it is fsync'd and handed to the sink.
    pub async fn append(&self, batch: SpanBatch) -> Result<WalPosition> {
        let mut record = Vec::with_capacity(256 * batch.spans.len() + 64);
        format::encode_record(&batch, &mut record)?;
        let (done, result) = oneshot::channel();
        let tx = self.tx.read().clone().ok_or(Error::ShuttingDown)?;
        tx.send(Append {
            record,
            batch,
            done,
        })
        .await
        .map_err(|_| Error::ShuttingDown)?;
        result.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Deletes segments wholly before `upto`: everything in them is published.
    pub fn checkpoint(dir: &Path, upto: WalPosition) -> Result<usize> {
        let mut removed = 0;
        for seq in list_segments(dir)? {
            if seq >= upto.segment {
                break;
            }
            let path = segment_path(dir, seq);
            fs::remove_file(&path)
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Stops accepting appends, lets queued ones commit, and waits for the commit thread.
    pub fn close(&self) {
        self.tx.write().take();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

fn replay_segment(
    dir: &Path,
    seq: u64,
    telemetry: &Telemetry,
    sink: &mut DurableSink,
) -> Result<()> {
    let path = segment_path(dir, seq);
    let bytes = fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let (records, damage) = format::read_segment(&bytes);
    for (offset, batch) in records {
        telemetry.wal_replayed(batch.spans.len());
        let position = WalPosition {
            segment: seq,
            offset,
        };
        sink(batch, position, true);
    }
    if let Some((offset, damage)) = damage {
        // Keep the valid prefix; what follows the first bad record in this segment is lost
        // (and was never acknowledged if the damage is a torn write).
        let lost = bytes.len() as u64 - offset;
        telemetry.wal_tail_cut(&path, offset, lost);
        if damage == Damage::Corrupt {
            tracing::error!(segment = %path.display(), offset, "WAL record failed its checksum");
        }
        if offset == 0 {
            // Not even the header survived: nothing in it was ever acknowledged.
            fs::remove_file(&path)
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        file.set_len(offset)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(format!("truncating {}", path.display()), e))?;
    }
    Ok(())
}

struct OpenSegment {
    seq: u64,
    file: File,
    len: u64,
}

struct Committer {
    dir: PathBuf,
    segment_bytes: u64,
    commit_delay: Duration,
    next_seq: u64,
    current: Option<OpenSegment>,
    telemetry: Arc<Telemetry>,
    sink: DurableSink,
}

impl Committer {
    fn run(&mut self, mut rx: mpsc::Receiver<Append>) {
        while let Some(first) = rx.blocking_recv() {
            if !self.commit_delay.is_zero() {
                std::thread::sleep(self.commit_delay);
            }
            let mut group_bytes = first.record.len();
            let mut group = vec![first];
            while group_bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(append) => {
                        group_bytes += append.record.len();
                        group.push(append);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group, group_bytes);
        }
    }

    fn commit(&mut self, group: Vec<Append>, group_bytes: usize) {
        let started = Instant::now();
        match self.write_group(&group) {
            Ok(positions) => {
                self.telemetry.wal_committed(group_bytes, started.elapsed());
                for (append, position) in group.into_iter().zip(positions) {
                    (self.sink)(append.batch, position, false);
                    let _ = append.done.send(Ok(position));
                }
            }
            Err(error) => {
                self.telemetry.wal_write_failed(&error);
                // The segment's tail is now unknown (fsyncgate): never write to it again. Replay
                // cuts whatever partial record it holds.
                self.current = None;
                let message = error.to_string();
                for append in group {
                    let _ = append
                        .done
                        .send(Err(Error::WalUnavailable(message.clone())));
                }
            }
        }
    }

    fn write_group(&mut self, group: &[Append]) -> std::io::Result<Vec<WalPosition>> {
        if self
            .current
            .as_ref()
            .is_none_or(|s| s.len >= self.segment_bytes)
        {
            self.current = Some(self.open_segment()?);
        }
        let segment = self
            .current
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no open segment"))?;
        let mut positions = Vec::with_capacity(group.len());
        for append in group {
            segment.file.write_all(&append.record)?;
            segment.len += append.record.len() as u64;
            positions.push(WalPosition {
                segment: segment.seq,
                offset: segment.len,
            });
        }
        segment.file.sync_data()?;
        Ok(positions)
    }

    fn open_segment(&mut self) -> std::io::Result<OpenSegment> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = segment_path(&self.dir, seq);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(SEGMENT_MAGIC)?;
        file.sync_all()?;
        // The new file's directory entry must be durable too, or a crash could lose the segment.
        sync_dir(&self.dir)?;
        Ok(OpenSegment {
            seq,
            file,
            len: SEGMENT_MAGIC.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SpanRow;
    use std::sync::Mutex;

    fn batch(n: u8) -> SpanBatch {
        SpanBatch {
            header: Default::default(),
            spans: vec![SpanRow {
                trace_id: [n; 16],
                span_id: [n; 8],
                ..Default::default()
            }],
        }
    }

    type Seen = Arc<Mutex<Vec<(u8, WalPosition)>>>;

    fn collecting() -> (Seen, DurableSink) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (
            seen,
            Box::new(move |b: SpanBatch, p, _| s.lock().unwrap().push((b.spans[0].trace_id[0], p))),
        )
    }

    #[tokio::test]
    async fn appends_are_replayed_in_order_and_checkpoint_removes_segments() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            segment_bytes: 100,
            ..Default::default()
        };
        let telemetry = Arc::new(Telemetry::new());
        let (live, sink) = collecting();
        let wal = Wal::open(dir.path(), &config, telemetry.clone(), sink).unwrap();
        for n in 1..=5 {
            wal.append(batch(n)).await.unwrap();
        }
        wal.close();
        let live = live.lock().unwrap().clone();
        assert_eq!(
            live.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );

        let (replayed, sink) = collecting();
        let wal = Wal::open(dir.path(), &config, telemetry.clone(), sink).unwrap();
        wal.close();
        assert_eq!(*replayed.lock().unwrap(), live);

        Wal::checkpoint(dir.path(), live[3].1).unwrap();
        let (after, sink) = collecting();
        drop(Wal::open(dir.path(), &config, telemetry, sink).unwrap());
        let first_kept = after.lock().unwrap()[0].0;
        assert!(first_kept >= 3, "segments before the checkpoint are gone");
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig::default();
        let telemetry = Arc::new(Telemetry::new());
        let (_, sink) = collecting();
        let wal = Wal::open(dir.path(), &config, telemetry.clone(), sink).unwrap();
        wal.append(batch(1)).await.unwrap();
        wal.append(batch(2)).await.unwrap();
        wal.close();
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();

        let (replayed, sink) = collecting();
        drop(Wal::open(dir.path(), &config, telemetry.clone(), sink).unwrap());
        assert_eq!(replayed.lock().unwrap().len(), 1);
        assert!(
            telemetry
                .encode()
                .contains("idtrail_wal_torn_records_total 1")
        );
    }
}

//! The WAL's on-disk format.
//!
//! A segment is `IDTWAL01` followed by records. A record is `len: u32 LE`, `crc32c(payload):
//! u32 LE`, then `payload` = format version (1 byte) + the postcard encoding of one
//! [`SpanBatch`]. The CRC makes a torn or bit-flipped tail detectable; the version byte lets a
//! later collector read an older WAL.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{BatchHeader, SpanBatch, SpanRow};

pub const SEGMENT_MAGIC: &[u8; 8] = b"IDTWAL01";
pub const RECORD_HEADER_LEN: usize = 8;
const PAYLOAD_V1: u8 = 1;

/// Largest record a reader accepts; a length past it is corruption, not a huge batch.
pub const MAX_RECORD_LEN: usize = 1 << 30;

#[derive(Serialize)]
struct BatchRef<'a> {
    header: &'a BatchHeader,
    spans: &'a [SpanRow],
}

#[derive(Deserialize)]
struct BatchOwned {
    header: BatchHeader,
    spans: Vec<SpanRow>,
}

/// Appends one framed record holding `batch` to `out`.
pub fn encode_record(batch: &SpanBatch, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    out.push(PAYLOAD_V1);
    let body = BatchRef {
        header: &batch.header,
        spans: &batch.spans,
    };
    let mut out_vec = std::mem::take(out);
    out_vec = postcard::to_extend(&body, out_vec)
        .map_err(|e| Error::WalUnavailable(format!("encoding a WAL record: {e}")))?;
    *out = out_vec;
    let payload = &out[start + RECORD_HEADER_LEN..];
    // A reader takes a longer record for corruption, so never acknowledge one.
    if payload.len() > MAX_RECORD_LEN {
        out.truncate(start);
        return Err(Error::TooLarge {
            limit: MAX_RECORD_LEN,
        });
    }
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Why reading stopped before the end of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Damage {
    /// The last record is incomplete (a write cut short by a crash).
    Torn,
    /// A record's checksum or payload is wrong (bit rot, overwritten bytes).
    Corrupt,
}

/// A segment's valid records (`(end offset, batch)`), then where and why reading stopped early.
pub type SegmentContents = (Vec<(u64, SpanBatch)>, Option<(u64, Damage)>);

/// Reads a segment's records in order: `(end offset, batch)` for each valid one, then where and
/// why reading stopped, if before the end.
pub fn read_segment(bytes: &[u8]) -> SegmentContents {
    let mut records = Vec::new();
    if bytes.len() < SEGMENT_MAGIC.len() || &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        let damage = if bytes.len() < SEGMENT_MAGIC.len() {
            Damage::Torn
        } else {
            Damage::Corrupt
        };
        return (records, Some((0, damage)));
    }
    let mut offset = SEGMENT_MAGIC.len();
    while offset < bytes.len() {
        let Some(header) = bytes.get(offset..offset + RECORD_HEADER_LEN) else {
            return (records, Some((offset as u64, Damage::Torn)));
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_RECORD_LEN {
            return (records, Some((offset as u64, Damage::Corrupt)));
        }
        let start = offset + RECORD_HEADER_LEN;
        let Some(payload) = bytes.get(start..start + len) else {
            return (records, Some((offset as u64, Damage::Torn)));
        };
        if crc32c::crc32c(payload) != crc {
            return (records, Some((offset as u64, Damage::Corrupt)));
        }
        match decode_payload(payload) {
            Some(batch) => {
                offset = start + len;
                records.push((offset as u64, batch));
            }
            None => return (records, Some((offset as u64, Damage::Corrupt))),
        }
    }
    (records, None)
}

fn decode_payload(payload: &[u8]) -> Option<SpanBatch> {
    let (&version, body) = payload.split_first()?;
    if version != PAYLOAD_V1 {
        return None;
    }
    let owned: BatchOwned = postcard::from_bytes(body).ok()?;
    Some(SpanBatch {
        header: Arc::new(owned.header),
        spans: owned.spans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> SpanBatch {
        SpanBatch {
            header: Arc::new(BatchHeader {
                ingested_at: 5,
                ..Default::default()
            }),
            spans: vec![SpanRow {
                trace_id: [n; 16],
                span_id: [n; 8],
                name: format!("span {n}"),
                api_protocol: Some(crate::record::ApiProtocol::Http),
                ..Default::default()
            }],
        }
    }

    fn segment(batches: &[SpanBatch]) -> Vec<u8> {
        let mut out = SEGMENT_MAGIC.to_vec();
        for b in batches {
            encode_record(b, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn round_trip() {
        let bytes = segment(&[batch(1), batch(2)]);
        let (records, damage) = read_segment(&bytes);
        assert_eq!(damage, None);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].1, batch(2));
        assert_eq!(records[1].0, bytes.len() as u64);
    }

    #[test]
    fn torn_tail_keeps_the_valid_prefix() {
        let bytes = segment(&[batch(1), batch(2)]);
        let (full, _) = read_segment(&bytes);
        let first_end = full[0].0;
        let (records, damage) = read_segment(&bytes[..bytes.len() - 3]);
        assert_eq!(records.len(), 1);
        assert_eq!(damage, Some((first_end, Damage::Torn)));
    }

    #[test]
    fn bit_flip_is_corruption() {
        let mut bytes = segment(&[batch(1), batch(2)]);
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        let (records, damage) = read_segment(&bytes);
        assert_eq!(records.len(), 1);
        assert!(matches!(damage, Some((_, Damage::Corrupt))));
    }
}

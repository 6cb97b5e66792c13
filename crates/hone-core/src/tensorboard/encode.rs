//! TensorBoard event files as bytes: `Event` protobufs encoded by hand, framed as TFRecords.
//! Nothing here touches the file system, so it builds for wasm32 too.
//!
//! The messages (tensorboard/compat/proto/event.proto and summary.proto):
//! `Event { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3;
//! Summary summary = 5; ... } }`, `Summary { repeated Value value = 1; }`,
//! `Summary.Value { string tag = 1; oneof value { float simple_value = 2; ... } }`.
//! Fields are written in field-number order and proto3 defaults (a zero wall time or step) are
//! left out, so the bytes equal what protobuf's own serializer produces.
//!
//! A TFRecord is `u64 length (LE) | u32 masked_crc32c(length bytes) | data |
//! u32 masked_crc32c(data)`.

use super::crc32c::masked_crc32c;
use crate::error::{Error, Result};

/// The `file_version` of the first event of every file, as TensorBoard's own writers use.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn put_key(out: &mut Vec<u8>, field: u8, wire: u8) {
    // Every field number used here is below 16, so the key is one byte.
    out.push((field << 3) | wire);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len_delimited(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The Event header fields shared by every event: wall_time (1) and step (2).
fn put_event_header(out: &mut Vec<u8>, wall_time: f64, step: i64) {
    if wall_time.to_bits() != 0 {
        put_key(out, 1, FIXED64);
        out.extend_from_slice(&wall_time.to_le_bytes());
    }
    if step != 0 {
        put_key(out, 2, VARINT);
        put_varint(out, step as u64);
    }
}

/// The encoded `Event` that opens a file: `wall_time` and `file_version = "brain.Event:2"`.
pub fn file_version_event(wall_time: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    put_event_header(&mut out, wall_time, 0);
    put_len_delimited(&mut out, 3, FILE_VERSION.as_bytes());
    out
}

/// The encoded `Event` holding one scalar: `Summary { value { tag, simple_value } }`.
pub fn scalar_event(wall_time: f64, step: i64, tag: &str, value: f32) -> Vec<u8> {
    let mut summary_value = Vec::with_capacity(tag.len() + 8);
    put_len_delimited(&mut summary_value, 1, tag.as_bytes());
    put_key(&mut summary_value, 2, FIXED32);
    summary_value.extend_from_slice(&value.to_le_bytes());

    let mut summary = Vec::with_capacity(summary_value.len() + 4);
    put_len_delimited(&mut summary, 1, &summary_value);

    let mut out = Vec::with_capacity(summary.len() + 24);
    put_event_header(&mut out, wall_time, step);
    put_len_delimited(&mut out, 5, &summary);
    out
}

/// Appends `data` to `out` as one TFRecord (length, masked CRCs).
pub fn encode_record(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// An event file being built in memory: the `file_version` record, then one record per scalar.
/// The caller supplies wall times (seconds since the Unix epoch), so this works in the browser.
#[derive(Debug, Clone, Default)]
pub struct EventEncoder {
    pending: Vec<u8>,
}

impl EventEncoder {
    /// A new file whose first record carries `file_version` and `wall_time`.
    pub fn new(wall_time: f64) -> Self {
        let mut pending = Vec::with_capacity(256);
        encode_record(&file_version_event(wall_time), &mut pending);
        EventEncoder { pending }
    }

    /// Appends one scalar event; the tag must not be empty and the step must fit an int64.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: u64, wall_time: f64) -> Result<()> {
        if tag.is_empty() {
            return Err(Error::Invalid("tensorboard: empty scalar tag".into()));
        }
        let step = i64::try_from(step).map_err(|_| {
            Error::Invalid(format!(
                "tensorboard: step {step} of '{tag}' does not fit an int64"
            ))
        })?;
        encode_record(
            &scalar_event(wall_time, step, tag, value),
            &mut self.pending,
        );
        Ok(())
    }

    /// The bytes encoded and not yet taken.
    pub fn bytes(&self) -> &[u8] {
        &self.pending
    }

    /// Takes the bytes encoded so far (for streaming them out), leaving the encoder empty.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// All the bytes not yet taken.
    pub fn into_bytes(self) -> Vec<u8> {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // The expected bytes below come from tensorboard 2.21's own protobuf classes
    // (event_pb2.Event(...).SerializeToString()) and its RecordWriter.

    #[test]
    fn file_version_event_and_record_match_tensorboard() {
        let event = file_version_event(1.5);
        assert_eq!(
            hex(&event),
            "09000000000000f83f1a0d627261696e2e4576656e743a32"
        );
        let mut record = Vec::new();
        encode_record(&event, &mut record);
        assert_eq!(
            hex(&record),
            "1800000000000000a37f4b2209000000000000f83f1a0d627261696e2e4576656e743a322a28646c"
        );
        assert_eq!(EventEncoder::new(1.5).bytes(), &record[..]);
    }

    #[test]
    fn scalar_events_match_protobuf_serialization() {
        assert_eq!(
            hex(&scalar_event(1.5, 3, "train/loss", 0.25)),
            "09000000000000f83f10032a130a110a0a747261696e2f6c6f7373150000803e"
        );
        // Step 0 is a proto3 default and left out; -0.0 is kept (simple_value is in a oneof).
        assert_eq!(
            hex(&scalar_event(2.0, 0, "train/grad_norm", -0.0)),
            "0900000000000000402a180a160a0f747261696e2f677261645f6e6f726d1500000080"
        );
    }

    #[test]
    fn large_step_and_nan_record_match_tensorboard_record_writer() {
        let mut enc = EventEncoder::default();
        enc.add_scalar("eval/loss", f32::NAN, 1 << 40, 1_700_000_000.125)
            .unwrap();
        assert_eq!(
            hex(enc.bytes()),
            "2400000000000000422b804d0900000840fc54d941108080808080202a120a100a096576616c2f6c6f7373150000c07f7da23a9f"
        );
    }

    #[test]
    fn rejects_empty_tags_and_steps_beyond_int64() {
        let mut enc = EventEncoder::new(1.0);
        assert!(enc.add_scalar("", 1.0, 0, 1.0).is_err());
        let err = enc
            .add_scalar("train/loss", 1.0, u64::MAX, 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("int64"), "{err}");
        let before = enc.bytes().len();
        enc.add_scalar("train/loss", 1.0, i64::MAX as u64, 1.0)
            .unwrap();
        assert!(enc.bytes().len() > before);
        let taken = enc.take_bytes();
        assert!(taken.len() > before && enc.bytes().is_empty());
    }
}

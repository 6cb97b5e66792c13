//! Browser checkpoints as one byte string (the page keeps them in OPFS): a JSON header with the
//! trainer state, the model fingerprint and the resolved configuration, followed by the LoRA
//! parameters and the AdamW moments as little-endian f32.
//!
//! Layout: `HONECKPT` (8 bytes), format version (u32 LE), header length (u32 LE), header JSON,
//! then the tensors' values in the header's order.

use hone_core::checkpoint::ModelFingerprint;
use hone_core::engine::{NamedTensor, OptimizerState};
use hone_core::trainer::TrainerState;
use hone_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const MAGIC: &[u8; 8] = b"HONECKPT";
const VERSION: u32 = 1;

/// Everything a resumed run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BrowserCheckpoint {
    pub state: TrainerState,
    pub fingerprint: ModelFingerprint,
    /// The run's resolved configuration (`FinetuneConfig::to_json`).
    pub config: Value,
    pub params: Vec<NamedTensor>,
    pub optimizer: OptimizerState,
}

#[derive(Serialize, Deserialize)]
struct TensorRecord {
    name: String,
    shape: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    state: TrainerState,
    fingerprint: ModelFingerprint,
    config: Value,
    optimizer_step: u64,
    params: Vec<TensorRecord>,
    exp_avg: Vec<TensorRecord>,
    exp_avg_sq: Vec<TensorRecord>,
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("checkpoint: {msg}"))
}

fn records(tensors: &[NamedTensor]) -> Vec<TensorRecord> {
    tensors
        .iter()
        .map(|t| TensorRecord {
            name: t.name.clone(),
            shape: t.shape.clone(),
        })
        .collect()
}

impl BrowserCheckpoint {
    /// The checkpoint as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = Header {
            state: self.state.clone(),
            fingerprint: self.fingerprint.clone(),
            config: self.config.clone(),
            optimizer_step: self.optimizer.step,
            params: records(&self.params),
            exp_avg: records(&self.optimizer.exp_avg),
            exp_avg_sq: records(&self.optimizer.exp_avg_sq),
        };
        let json = serde_json::to_vec(&header).map_err(bad)?;
        let values: usize = [
            &self.params,
            &self.optimizer.exp_avg,
            &self.optimizer.exp_avg_sq,
        ]
        .iter()
        .flat_map(|g| g.iter())
        .map(|t| t.data.len())
        .sum();
        let mut out = Vec::with_capacity(16 + json.len() + 4 * values);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        for group in [
            &self.params,
            &self.optimizer.exp_avg,
            &self.optimizer.exp_avg_sq,
        ] {
            for t in group {
                for v in &t.data {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        Ok(out)
    }

    /// Parse bytes written by `to_bytes`; a truncated or foreign file is an error saying so.
    pub fn from_bytes(bytes: &[u8]) -> Result<BrowserCheckpoint> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad("not a hone browser checkpoint (wrong magic bytes)"));
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let version = word(8);
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this hone reads version {VERSION}"
            )));
        }
        let header_len = word(12) as usize;
        let body = bytes
            .get(16..16 + header_len)
            .ok_or_else(|| bad("truncated header"))?;
        let header: Header = serde_json::from_slice(body).map_err(bad)?;
        let mut at = 16 + header_len;
        let mut take = |recs: Vec<TensorRecord>| -> Result<Vec<NamedTensor>> {
            recs.into_iter()
                .map(|r| {
                    let n: usize = r.shape.iter().product();
                    let raw = bytes
                        .get(at..at + 4 * n)
                        .ok_or_else(|| bad(format!("truncated in tensor {}", r.name)))?;
                    at += 4 * n;
                    let data = raw
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    Ok(NamedTensor {
                        name: r.name,
                        shape: r.shape,
                        data,
                    })
                })
                .collect()
        };
        let params = take(header.params)?;
        let exp_avg = take(header.exp_avg)?;
        let exp_avg_sq = take(header.exp_avg_sq)?;
        if at != bytes.len() {
            return Err(bad(format!(
                "{} bytes after the last tensor",
                bytes.len() - at
            )));
        }
        Ok(BrowserCheckpoint {
            state: header.state,
            fingerprint: header.fingerprint,
            config: header.config,
            params,
            optimizer: OptimizerState {
                step: header.optimizer_step,
                exp_avg,
                exp_avg_sq,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_core::fixtures::{tiny_spec, tiny_weights};
    use hone_core::{Architecture, DType};

    fn sample() -> BrowserCheckpoint {
        let spec = tiny_spec(Architecture::Llama, true, 64);
        let weights = tiny_weights(&spec, DType::F32, 3).unwrap();
        let t = |name: &str, v: f32| NamedTensor {
            name: name.into(),
            shape: vec![2, 3],
            data: vec![v, -v, 0.5, 1e-30, f32::MAX, 7.0],
        };
        let mut state = TrainerState::new();
        state.step = 4;
        state.loss_history = vec![(1, 2.5), (2, 2.25), (3, 2.0), (4, 1.75)];
        BrowserCheckpoint {
            state,
            fingerprint: ModelFingerprint::of_model(&spec, &weights),
            config: serde_json::json!({"lora_r": 2, "seed": 9}),
            params: vec![t("a.lora_A", 1.5), t("a.lora_B", -2.0)],
            optimizer: OptimizerState {
                step: 4,
                exp_avg: vec![t("a.lora_A", 0.1), t("a.lora_B", 0.2)],
                exp_avg_sq: vec![t("a.lora_A", 0.3), t("a.lora_B", 0.4)],
            },
        }
    }

    #[test]
    fn bytes_round_trip_exactly() {
        let c = sample();
        let bytes = c.to_bytes().unwrap();
        assert_eq!(BrowserCheckpoint::from_bytes(&bytes).unwrap(), c);
    }

    #[test]
    fn truncated_or_foreign_bytes_are_refused_with_a_reason() {
        let bytes = sample().to_bytes().unwrap();
        let cut = BrowserCheckpoint::from_bytes(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(cut.to_string().contains("truncated in tensor"), "{cut}");
        let foreign = BrowserCheckpoint::from_bytes(b"PK\x03\x04 not a checkpoint").unwrap_err();
        assert!(foreign.to_string().contains("wrong magic"), "{foreign}");
        let mut longer = bytes.clone();
        longer.push(0);
        let extra = BrowserCheckpoint::from_bytes(&longer).unwrap_err();
        assert!(extra.to_string().contains("1 bytes after"), "{extra}");
    }
}

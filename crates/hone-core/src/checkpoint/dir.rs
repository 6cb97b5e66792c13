//! The folder of checkpoints: listing, finding the newest complete one, and rotation.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{read_state, CHECKPOINT_PREFIX, DATA_FILES};
use crate::error::{Error, Result};

/// One `checkpoint-{step}` folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    /// The step in the folder name.
    pub step: u64,
    /// The folder.
    pub path: PathBuf,
    /// `hone_state.json` parses and every file it lists is present with its recorded size
    /// (checksums are verified by `Checkpoint::load`).
    pub complete: bool,
}

/// The step of a folder named exactly `checkpoint-{digits}` (so `checkpoint-5.tmp-123` and
/// `checkpoint-5.old-123` are not checkpoints).
fn step_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CHECKPOINT_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `dir` holds a complete checkpoint (cheap: sizes, not checksums).
fn is_complete(dir: &Path) -> bool {
    let Ok(state) = read_state(dir) else {
        return false;
    };
    DATA_FILES.iter().all(|f| {
        let Some(rec) = state.files.get(*f) else {
            return false;
        };
        std::fs::metadata(dir.join(f)).is_ok_and(|m| m.is_file() && m.len() == rec.bytes)
    })
}

/// The checkpoint folders in `checkpoints_dir`, oldest step first. A folder that does not
/// exist has none; temporary folders of unfinished saves are not listed.
pub fn list(checkpoints_dir: impl AsRef<Path>) -> Result<Vec<CheckpointEntry>> {
    let dir = checkpoints_dir.as_ref();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(step_of) else {
            continue;
        };
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let complete = is_complete(&path);
        out.push(CheckpointEntry {
            step,
            path,
            complete,
        });
    }
    out.sort_by_key(|e| e.step);
    Ok(out)
}

/// The newest complete checkpoint in `checkpoints_dir`, if any (leftover `.tmp-*` folders and
/// incomplete folders are skipped).
pub fn latest(checkpoints_dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    Ok(list(checkpoints_dir)?
        .into_iter()
        .rev()
        .find(|e| e.complete)
        .map(|e| e.path))
}

/// Delete the oldest complete checkpoints so that at most `save_total_limit` remain, never the
/// `best` one (as Hugging Face does: with a limit of 1 and a best that is not the newest, both
/// stay). Incomplete folders are left alone. Returns the deleted folders.
pub fn rotate(
    checkpoints_dir: impl AsRef<Path>,
    save_total_limit: usize,
    best: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    if save_total_limit == 0 {
        return Err(Error::Invalid(
            "save_total_limit must be at least 1 (leave it unset to keep every checkpoint)".into(),
        ));
    }
    let complete: Vec<CheckpointEntry> = list(checkpoints_dir)?
        .into_iter()
        .filter(|e| e.complete)
        .collect();
    // The best is matched by folder name: HF records it as `output_dir/checkpoint-N`, relative
    // or absolute.
    let best_idx = best
        .and_then(Path::file_name)
        .and_then(|n| complete.iter().position(|e| e.path.file_name() == Some(n)));
    let mut keep: BTreeSet<usize> = BTreeSet::new();
    let mut quota = save_total_limit;
    if let Some(b) = best_idx {
        keep.insert(b);
        quota = if b + 1 == complete.len() {
            quota - 1
        } else {
            (quota - 1).max(1)
        };
    }
    for i in (0..complete.len()).rev() {
        if quota == 0 {
            break;
        }
        if keep.insert(i) {
            quota -= 1;
        }
    }
    let mut removed = Vec::new();
    for (i, e) in complete.iter().enumerate() {
        if !keep.contains(&i) {
            std::fs::remove_dir_all(&e.path).map_err(|err| Error::io(&e.path, err))?;
            removed.push(e.path.clone());
        }
    }
    Ok(removed)
}

//! Parallel loops over pairs of slices (rayon natively, a plain loop on wasm), for ops whose
//! tasks each own a chunk of two outputs.

/// Call `f(i, a_chunk, b_chunk)` for the i-th `ca`-long chunk of `a` and `cb`-long chunk of `b`
/// (both must have the same number of chunks).
pub fn for_each_chunk_pair<A, B, F>(a: &mut [A], ca: usize, b: &mut [B], cb: usize, f: F)
where
    A: Send,
    B: Send,
    F: Fn(usize, &mut [A], &mut [B]) + Sync + Send,
{
    assert!(ca > 0 && cb > 0, "chunk sizes must be > 0");
    assert_eq!(
        a.len().div_ceil(ca),
        b.len().div_ceil(cb),
        "chunk counts differ"
    );
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        a.par_chunks_mut(ca)
            .zip(b.par_chunks_mut(cb))
            .enumerate()
            .for_each(|(i, (x, y))| f(i, x, y));
    }
    #[cfg(target_arch = "wasm32")]
    {
        for (i, (x, y)) in a.chunks_mut(ca).zip(b.chunks_mut(cb)).enumerate() {
            f(i, x, y);
        }
    }
}

/// Rows per parallel task for elementwise work on `rows` rows: a few tasks per thread.
pub fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * crate::parallel::threads()).max(1)
}

//! Data parallelism that is rayon natively and a plain loop on wasm (no threads there).

use std::marker::PhantomData;

/// The `gemm` parallelism for a whole-matrix product.
pub fn gemm_parallelism() -> gemm::Parallelism {
    #[cfg(not(target_arch = "wasm32"))]
    {
        gemm::Parallelism::Rayon(0)
    }
    #[cfg(target_arch = "wasm32")]
    {
        gemm::Parallelism::None
    }
}

/// Threads that run parallel work (1 on wasm).
pub fn threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
}

/// Call `f(chunk_index, chunk)` for each `chunk`-long piece of `data` (the last may be shorter).
pub fn for_each_chunk<T, F>(data: &mut [T], chunk: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
    #[cfg(target_arch = "wasm32")]
    {
        for (i, c) in data.chunks_mut(chunk).enumerate() {
            f(i, c);
        }
    }
}

/// Call `f(i)` for each i in 0..n.
pub fn for_each_index<F>(n: usize, f: F)
where
    F: Fn(usize) + Sync + Send,
{
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
    }
    #[cfg(target_arch = "wasm32")]
    {
        (0..n).for_each(f);
    }
}

/// A mutable slice shared between tasks that write disjoint (but interleaved) elements.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: `SharedMut` only hands out raw pointers; writing through them is unsafe and the
// writers promise disjoint elements. T: Send makes moving values across threads sound.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}
unsafe impl<T: Send> Send for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    /// Share `data` for the lifetime of the borrow.
    pub fn new(data: &'a mut [T]) -> Self {
        SharedMut {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            _borrow: PhantomData,
        }
    }

    /// A raw pointer to element `start`, after checking that `[start, start + extent)` is in
    /// range. Writing through it is unsafe: tasks must write disjoint elements.
    pub fn ptr_at(&self, start: usize, extent: usize) -> *mut T {
        assert!(start + extent <= self.len, "shared slice out of range");
        // SAFETY: start <= len (asserted), so the offset stays within (or one past) the
        // allocation.
        unsafe { self.ptr.add(start) }
    }
}

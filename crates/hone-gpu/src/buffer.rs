//! GPU buffers and views into them, upload and (async) read-back.
//!
//! Kernels see each binding as an array starting at 0, so a view into a larger buffer must start
//! at a multiple of the adapter's storage offset alignment (256 bytes everywhere we run): the
//! engine's plan places sub-tensors (LoRA slots, loss chunks) on 64-float boundaries.

use hone_core::{Error, Result};

use crate::context::Gpu;

/// Alignment of views, in bytes (WebGPU's `minStorageBufferOffsetAlignment` is at most 256).
pub const VIEW_ALIGN: u64 = 256;
/// The same in f32 elements.
pub const VIEW_ALIGN_F32: usize = 64;

/// Reads up to this many bytes reuse one staging buffer.
const SMALL_READ: u64 = 4096;

/// Round `n` elements up to the view alignment.
pub fn align_f32(n: usize) -> usize {
    n.div_ceil(VIEW_ALIGN_F32) * VIEW_ALIGN_F32
}

/// A storage buffer owned by the engine.
#[derive(Debug)]
pub struct GBuf {
    pub(crate) buf: wgpu::Buffer,
    /// Size in bytes (a multiple of 4).
    pub(crate) bytes: u64,
}

/// A byte range of a buffer, bound as one kernel argument.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub(crate) buf: &'a wgpu::Buffer,
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

impl GBuf {
    /// The whole buffer.
    pub fn view(&self) -> View<'_> {
        View {
            buf: &self.buf,
            offset: 0,
            size: self.bytes,
        }
    }

    /// Elements `[start, start + len)` of an f32/u32 buffer; `start` must be a multiple of 64.
    pub fn range(&self, start: usize, len: usize) -> View<'_> {
        let offset = start as u64 * 4;
        let size = len as u64 * 4;
        assert!(
            offset.is_multiple_of(VIEW_ALIGN),
            "view offset {start} is not a multiple of {VIEW_ALIGN_F32} elements"
        );
        assert!(
            offset + size <= self.bytes,
            "view past the end of the buffer"
        );
        View {
            buf: &self.buf,
            offset,
            size: size.max(4),
        }
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Length in 4-byte elements.
    pub fn len(&self) -> usize {
        (self.bytes / 4) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    /// A zero-filled storage buffer of `bytes` (rounded up to 4; at least 4). Fails with the size
    /// and the adapter's limit when one binding cannot hold it.
    pub fn alloc(&self, label: &str, bytes: u64) -> Result<GBuf> {
        let bytes = bytes.div_ceil(4).max(1) * 4;
        if bytes > self.max_binding() {
            return Err(Error::Gpu(format!(
                "{label}: a {:.1} MiB buffer exceeds this adapter's largest storage binding ({:.1} MiB)",
                bytes as f64 / 1048576.0,
                self.max_binding() as f64 / 1048576.0
            )));
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: STORAGE,
            mapped_at_creation: false,
        });
        Ok(GBuf { buf, bytes })
    }

    /// A zero-filled buffer of `n` f32 (or u32) elements.
    pub fn zeros(&self, label: &str, n: usize) -> Result<GBuf> {
        self.alloc(label, n as u64 * 4)
    }

    /// A buffer holding `bytes` (padded with zeros to a multiple of 4).
    pub fn upload_bytes(&self, label: &str, bytes: &[u8]) -> Result<GBuf> {
        let b = self.alloc(label, bytes.len() as u64)?;
        self.write_bytes(&b, 0, bytes);
        Ok(b)
    }

    /// A buffer holding `data`.
    pub fn upload_f32(&self, label: &str, data: &[f32]) -> Result<GBuf> {
        let b = self.alloc(label, data.len() as u64 * 4)?;
        self.write_f32(&b, 0, data);
        Ok(b)
    }

    /// A buffer holding `data`.
    pub fn upload_u32(&self, label: &str, data: &[u32]) -> Result<GBuf> {
        let b = self.alloc(label, data.len() as u64 * 4)?;
        self.write_u32(&b, 0, data);
        Ok(b)
    }

    /// Write `bytes` at byte `offset` (padded to 4 bytes).
    pub fn write_bytes(&self, b: &GBuf, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(&b.buf, offset, bytes);
        } else {
            let mut v = bytes.to_vec();
            v.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(&b.buf, offset, &v);
        }
    }

    /// Write f32 values at element `start`.
    pub fn write_f32(&self, b: &GBuf, start: usize, data: &[f32]) {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_bytes(b, start as u64 * 4, &bytes);
    }

    /// Write u32 values at element `start`.
    pub fn write_u32(&self, b: &GBuf, start: usize, data: &[u32]) {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_bytes(b, start as u64 * 4, &bytes);
    }

    /// Read `len` f32 elements from element `start` (async: the browser cannot block).
    pub async fn read_f32(&self, b: &GBuf, start: usize, len: usize) -> Result<Vec<f32>> {
        let raw = self
            .read_raw(&b.buf, start as u64 * 4, len as u64 * 4)
            .await?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// The whole buffer as f32.
    pub async fn read_all_f32(&self, b: &GBuf) -> Result<Vec<f32>> {
        self.read_f32(b, 0, b.len()).await
    }

    /// Blocking read, for native code and tests.
    pub fn read_f32_blocking(&self, b: &GBuf) -> Result<Vec<f32>> {
        pollster::block_on(self.read_all_f32(b))
    }

    pub(crate) async fn read_raw(
        &self,
        buf: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let small = size <= SMALL_READ;
        let reused = if small {
            self.small_staging
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        } else {
            None
        };
        let staging = reused.unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read-back"),
                size: if small { SMALL_READ } else { size },
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(buf, offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait_for(rx).await?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading a GPU buffer: {e}")))?
            .to_vec();
        staging.unmap();
        if small {
            *self.small_staging.lock().unwrap_or_else(|p| p.into_inner()) = Some(staging);
        }
        Ok(data)
    }

    /// Drive the device until `rx` has its answer. Natively this blocks in `poll`; in the
    /// browser the callback arrives from the event loop, so yield until it does.
    async fn wait_for(
        &self,
        rx: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
    ) -> Result<()> {
        loop {
            self.check()?;
            #[cfg(not(target_arch = "wasm32"))]
            {
                if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
                    self.check()?;
                    return Err(Error::Gpu(format!("waiting for the GPU: {e}")));
                }
            }
            match rx.try_recv() {
                Ok(Ok(())) => return self.check(),
                Ok(Err(e)) => {
                    self.check()?;
                    return Err(Error::Gpu(format!("reading a GPU buffer: {e}")));
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    #[cfg(target_arch = "wasm32")]
                    crate::yield_now().await;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.check()?;
                    return Err(Error::Gpu("a GPU read-back was dropped".into()));
                }
            }
        }
    }

    /// Wait until all submitted work is done (natively); surfaces faults.
    pub fn sync(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            self.check()?;
            return Err(Error::Gpu(format!("waiting for the GPU: {e}")));
        }
        self.check()
    }
}

//! Recording dispatches: a whole step goes into few command buffers. Each dispatch's small
//! parameter block (sizes, offsets, scalars as 32-bit words) goes into one uniform arena at a
//! 256-byte slot, written with one `write_buffer` before the submit. Kernels declare
//! `@group(0) @binding(0) var<uniform> p: Params;` and their storage buffers at bindings 1.. in
//! the order they are passed.

use hone_core::{Error, Result};

use crate::buffer::{GBuf, View};
use crate::context::{Gpu, Kernel, ProfileClock, STAMP_PASSES};

/// Bytes per parameter slot (WebGPU's `minUniformBufferOffsetAlignment` is at most 256).
const SLOT: u64 = 256;
/// Slots in the arena; a recorder submits and starts over when it is full.
const SLOTS: u64 = 4096;

/// Parameter words: u32 values, or f32 values as bits (`Param::f`).
pub type Words = [u32];

/// An f32 as a parameter word.
pub fn f(v: f32) -> u32 {
    v.to_bits()
}

/// The uniform arena shared by a GPU's recorders (one recorder records at a time).
#[derive(Debug)]
pub struct Arena {
    buf: wgpu::Buffer,
}

impl Arena {
    pub fn new(gpu: &Gpu) -> Arena {
        Arena {
            buf: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: SLOT * SLOTS,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }
}

/// Records dispatches into a command encoder; `submit` sends them.
pub struct Recorder<'g> {
    gpu: &'g Gpu,
    arena: &'g Arena,
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    slots: u64,
    /// Dispatches recorded since the recorder was made.
    pub dispatches: usize,
}

impl<'g> Recorder<'g> {
    pub fn new(gpu: &'g Gpu, arena: &'g Arena) -> Recorder<'g> {
        Recorder {
            gpu,
            arena,
            encoder: None,
            params: Vec::new(),
            slots: 0,
            dispatches: 0,
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Record `kernel` over `groups` workgroups with parameter words `params` and storage
    /// bindings `bufs` (bindings 1..=n).
    pub fn dispatch(
        &mut self,
        kernel: &Kernel,
        params: &Words,
        bufs: &[View<'_>],
        groups: [u32; 3],
    ) {
        assert!(
            params.len() * 4 <= SLOT as usize,
            "{}: too many parameters",
            kernel.name
        );
        if groups.contains(&0) {
            return;
        }
        #[cfg(not(target_arch = "wasm32"))]
        let clock = self.gpu.profile_clock();
        #[cfg(target_arch = "wasm32")]
        let clock: Option<ProfileClock> = None;
        #[cfg(not(target_arch = "wasm32"))]
        let profiling = clock == Some(ProfileClock::Wall);
        #[cfg(not(target_arch = "wasm32"))]
        if profiling {
            // Finish what was recorded before, so that the time below is this dispatch's.
            self.submit();
            let _ = self.gpu.sync();
        }
        if self.slots == SLOTS {
            self.submit();
        }
        let offset = self.slots * SLOT;
        self.slots += 1;
        self.params
            .extend(params.iter().flat_map(|w| w.to_le_bytes()));
        self.params.resize((self.slots * SLOT) as usize, 0);
        let mut entries = Vec::with_capacity(bufs.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.arena.buf,
                offset,
                size: std::num::NonZeroU64::new(SLOT),
            }),
        });
        for (i, v) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: v.buf,
                    offset: v.offset,
                    size: std::num::NonZeroU64::new(v.size),
                }),
            });
        }
        let bind = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.name),
                layout: &kernel.layout,
                entries: &entries,
            });
        let stamp = if clock == Some(ProfileClock::GpuTimestamps) {
            self.stamp_slot(kernel.name)
        } else {
            None
        };
        let device = &self.gpu.device;
        let enc = self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            })
        });
        {
            let timestamp_writes =
                stamp
                    .as_ref()
                    .map(|(set, i)| wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: Some(2 * i),
                        end_of_pass_write_index: Some(2 * i + 1),
                    });
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.name),
                timestamp_writes,
            });
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        self.dispatches += 1;
        #[cfg(not(target_arch = "wasm32"))]
        if profiling {
            let t = std::time::Instant::now();
            self.submit();
            let _ = self.gpu.sync();
            let secs = t.elapsed().as_secs_f64();
            if let Some(m) = self.gpu.profile.lock().unwrap().as_mut() {
                *m.secs.entry(kernel.name).or_insert(0.0) += secs;
            }
        }
    }

    /// Copy `size` bytes between buffers inside the recorded stream.
    pub fn copy(&mut self, src: View<'_>, dst: View<'_>) {
        assert!(src.size <= dst.size);
        let device = &self.gpu.device;
        let enc = self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            })
        });
        enc.copy_buffer_to_buffer(src.buf, src.offset, dst.buf, dst.offset, src.size);
    }

    /// Copy `size` bytes at any 4-byte-aligned offsets (rows into a KV cache).
    pub fn copy_bytes(&mut self, src: &GBuf, src_off: u64, dst: &GBuf, dst_off: u64, size: u64) {
        assert!(src_off + size <= src.bytes && dst_off + size <= dst.bytes);
        let device = &self.gpu.device;
        let enc = self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            })
        });
        enc.copy_buffer_to_buffer(&src.buf, src_off, &dst.buf, dst_off, size);
    }

    /// Fill a view with zeros inside the recorded stream.
    pub fn clear(&mut self, v: View<'_>) {
        let device = &self.gpu.device;
        let enc = self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            })
        });
        enc.clear_buffer(v.buf, v.offset, Some(v.size));
    }

    /// The query pair of the next timed pass (the read-back of the previous ones first when
    /// the set is full), recording `name` as its kernel.
    fn stamp_slot(&mut self, name: &'static str) -> Option<(wgpu::QuerySet, u32)> {
        let full = {
            let g = self.gpu.profile.lock().unwrap();
            g.as_ref()?.stamps.as_ref()?.pending.len() == STAMP_PASSES
        };
        if full {
            self.submit();
        }
        let mut g = self.gpu.profile.lock().unwrap();
        let st = g.as_mut()?.stamps.as_mut()?;
        st.pending.push(name);
        Some((st.set.clone(), st.pending.len() as u32 - 1))
    }

    /// Resolve the timestamps written by the passes recorded in `enc` into the profile's
    /// buffer; the kernels they belong to.
    fn resolve_stamps(
        &self,
        enc: &mut wgpu::CommandEncoder,
    ) -> Option<(wgpu::Buffer, Vec<&'static str>)> {
        let mut g = self.gpu.profile.lock().unwrap();
        let st = g.as_mut()?.stamps.as_mut()?;
        if st.pending.is_empty() {
            return None;
        }
        let n = 2 * st.pending.len() as u32;
        enc.resolve_query_set(&st.set, 0..n, &st.resolve, 0);
        Some((st.resolve.clone(), std::mem::take(&mut st.pending)))
    }

    /// Send what was recorded (parameters first).
    pub fn submit(&mut self) {
        if let Some(mut enc) = self.encoder.take() {
            let stamped = self.resolve_stamps(&mut enc);
            if !self.params.is_empty() {
                self.gpu
                    .queue
                    .write_buffer(&self.arena.buf, 0, &self.params);
            }
            self.gpu.queue.submit([enc.finish()]);
            #[cfg(not(target_arch = "wasm32"))]
            if let Some((resolve, names)) = stamped {
                self.gpu.add_stamps(&resolve, &names);
            }
            #[cfg(target_arch = "wasm32")]
            let _ = stamped;
        }
        self.params.clear();
        self.slots = 0;
    }

    /// Submit and surface any fault recorded so far.
    pub fn finish(mut self) -> Result<()> {
        self.submit();
        self.gpu.check()
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        self.submit();
    }
}

/// Workgroups to cover `n` items with `per_group` items each, as a 2-D grid when one dimension
/// is not enough (kernels recover the linear index as `id.x + id.y * nx * per_group`). Returns
/// the grid and `nx` (workgroups along x).
pub fn grid(gpu: &Gpu, n: usize, per_group: usize) -> Result<([u32; 3], u32)> {
    let groups = n.div_ceil(per_group.max(1)).max(1);
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if groups <= max {
        return Ok(([groups as u32, 1, 1], groups as u32));
    }
    let y = groups.div_ceil(max);
    if y > max {
        return Err(Error::Gpu(format!(
            "{n} items are too many for one dispatch"
        )));
    }
    let x = groups.div_ceil(y);
    Ok(([x as u32, y as u32, 1], x as u32))
}

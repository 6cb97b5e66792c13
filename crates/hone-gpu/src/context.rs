//! The GPU context: one wgpu adapter + device + queue, the limits that were granted, the
//! compiled kernels, and the fault state (validation errors and device loss are recorded, never
//! panicked on, and turned into `Error::Gpu` at the next synchronisation point).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hone_core::{Error, Result};

/// Which adapters `Gpu::new` may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterChoice {
    /// A real (integrated or discrete) GPU only: no software rasterizer.
    Hardware,
    /// Any adapter, software ones (lavapipe, llvmpipe, SwiftShader) included.
    Any,
}

/// Options for opening the GPU.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    pub adapter: AdapterChoice,
    /// Backends to try; `None` = wgpu's defaults, overridable with `WGPU_BACKEND`.
    pub backends: Option<wgpu::Backends>,
    /// Ask for `shader-f16` when the adapter has it.
    pub want_f16: bool,
    /// Ask for `timestamp-query` when the adapter has it (GPU time in profiles).
    pub want_timestamps: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            adapter: AdapterChoice::Any,
            backends: None,
            want_f16: true,
            want_timestamps: true,
        }
    }
}

/// A compiled compute kernel: its pipeline and the layout of its bind group 0.
#[derive(Debug)]
pub struct Kernel {
    pub(crate) name: &'static str,
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

/// The clock `bench-train --profile` reads per kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileClock {
    /// GPU timestamps at the start and end of each dispatch's compute pass (the device has
    /// `timestamp-query`): GPU time, with the step recorded and submitted as usual.
    GpuTimestamps,
    /// Wall-clock time around each dispatch, submitted and waited for alone (slower, and it
    /// includes the submit and wait).
    Wall,
}

impl ProfileClock {
    /// How the profile's numbers were taken, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            ProfileClock::GpuTimestamps => "GPU timestamp queries (GPU time per kernel)",
            ProfileClock::Wall => {
                "wall clock (each dispatch submitted and waited for alone; no timestamp-query)"
            }
        }
    }
}

/// Passes timed between two read-backs of the timestamps (two queries each).
pub(crate) const STAMP_PASSES: usize = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;

/// Per-kernel time being collected.
pub(crate) struct Profile {
    pub(crate) clock: ProfileClock,
    pub(crate) secs: HashMap<&'static str, f64>,
    /// With `GpuTimestamps`: the query set, the buffer it resolves into, and the kernels of
    /// the passes stamped since the last read-back, in query order.
    pub(crate) stamps: Option<Stamps>,
}

pub(crate) struct Stamps {
    pub(crate) set: wgpu::QuerySet,
    pub(crate) resolve: wgpu::Buffer,
    pub(crate) pending: Vec<&'static str>,
}

/// Faults reported asynchronously by wgpu.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) error: Option<String>,
    pub(crate) lost: Option<String>,
}

/// One GPU device ready for compute.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: wgpu::Features,
    kernels: Mutex<HashMap<(&'static str, String), Arc<Kernel>>>,
    pub(crate) faults: Arc<Mutex<Faults>>,
    /// A reusable read-back buffer for small reads (the loss, the gradient norm), so a step
    /// allocates nothing.
    pub(crate) small_staging: Mutex<Option<wgpu::Buffer>>,
    /// Seconds per kernel when profiling (native only).
    pub(crate) profile: Mutex<Option<Profile>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.describe())
            .finish()
    }
}

/// Whether an adapter is a CPU emulation (lavapipe, llvmpipe, SwiftShader, WARP).
pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "swiftshader", "warp"]
            .iter()
            .any(|s| info.name.to_lowercase().contains(s))
}

fn backends_from_env() -> Option<wgpu::Backends> {
    let v = std::env::var("WGPU_BACKEND").ok()?;
    Some(wgpu::Backends::from_comma_list(&v))
}

impl Gpu {
    /// Open the best adapter allowed by `opts` (a discrete GPU before an integrated one before
    /// a software one). Errors say what was found and why nothing was usable.
    pub async fn new(opts: &GpuOptions) -> Result<Gpu> {
        let backends = opts
            .backends
            .or_else(backends_from_env)
            .unwrap_or(wgpu::Backends::PRIMARY | wgpu::Backends::GL);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = pick_adapter(&instance, backends, opts.adapter).await?;
        let info = adapter.get_info();
        let have = adapter.features();
        let mut features = wgpu::Features::empty();
        if opts.want_f16 && have.contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        if opts.want_timestamps && have.contains(wgpu::Features::TIMESTAMP_QUERY) {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        // Ask for everything the adapter offers for buffers and bindings: the buffer plan is
        // checked against these numbers.
        let al = adapter.limits();
        let mut limits = wgpu::Limits::downlevel_defaults();
        limits.max_storage_buffer_binding_size = al.max_storage_buffer_binding_size;
        limits.max_buffer_size = al.max_buffer_size;
        limits.max_storage_buffers_per_shader_stage = al.max_storage_buffers_per_shader_stage;
        limits.max_compute_workgroup_storage_size = al.max_compute_workgroup_storage_size;
        limits.max_compute_invocations_per_workgroup = al.max_compute_invocations_per_workgroup;
        limits.max_compute_workgroup_size_x = al.max_compute_workgroup_size_x;
        limits.max_compute_workgroup_size_y = al.max_compute_workgroup_size_y;
        limits.max_compute_workgroups_per_dimension = al.max_compute_workgroups_per_dimension;
        limits.max_bind_groups = al.max_bind_groups.min(4);
        let dd = wgpu::DeviceDescriptor {
            label: Some("hone"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = adapter
            .request_device(&dd)
            .await
            .map_err(|e| Error::Gpu(format!("{}: cannot open the device: {e}", info.name)))?;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut g = f.lock().unwrap_or_else(|p| p.into_inner());
            if g.error.is_none() {
                g.error = Some(e.to_string());
            }
        }));
        let f = faults.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut g = f.lock().unwrap_or_else(|p| p.into_inner());
            g.lost = Some(format!("{reason:?}: {msg}"));
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            features,
            kernels: Mutex::new(HashMap::new()),
            faults,
            small_staging: Mutex::new(None),
            profile: Mutex::new(None),
        })
    }

    /// Blocking `new`, for native callers.
    pub fn new_blocking(opts: &GpuOptions) -> Result<Gpu> {
        pollster::block_on(Gpu::new(opts))
    }

    /// "NVIDIA H100 (Vulkan, discrete)".
    pub fn describe(&self) -> String {
        let kind = match self.info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "software",
            wgpu::DeviceType::Other => "other",
        };
        // Browsers may keep the adapter's name to themselves.
        let name = match self.info.name.trim() {
            "" => "unnamed adapter",
            n => n,
        };
        let backend = match self.info.backend {
            wgpu::Backend::BrowserWebGpu => "WebGPU".to_string(),
            b => format!("{b:?}"),
        };
        format!("{name} ({backend}, {kind})")
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether the device was opened with `shader-f16`.
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// The features the device was opened with.
    pub fn features(&self) -> wgpu::Features {
        self.features
    }

    /// Whether the device was opened with `timestamp-query` (GPU time per compute pass).
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Whether the adapter is a CPU emulation.
    pub fn is_software(&self) -> bool {
        is_software(&self.info)
    }

    /// The largest storage binding, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size
    }

    /// The kernel `entry` of WGSL `source`, compiled once per (name, specialisation). `name`
    /// is used in error messages; `defs` are prepended `const` lines (workgroup sizes, flags),
    /// which also key the cache.
    pub fn kernel(&self, name: &'static str, source: &str, defs: &str) -> Result<Arc<Kernel>> {
        let key = (name, defs.to_string());
        if let Some(k) = self.kernels.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        let code = format!("{defs}\n{source}");
        // Natively a shader error is caught here, with the kernel's name; in the browser the
        // scope cannot be awaited synchronously, so errors arrive through the uncaptured-error
        // handler and surface at the next `check`.
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(code.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("kernel {name}: {e}")));
        }
        let layout = pipeline.get_bind_group_layout(0);
        let k = Arc::new(Kernel {
            name,
            pipeline,
            layout,
        });
        self.kernels.lock().unwrap().insert(key, k.clone());
        Ok(k)
    }

    /// The first recorded fault (validation error or device loss), if any.
    pub fn check(&self) -> Result<()> {
        let g = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = &g.lost {
            return Err(Error::Gpu(format!("the GPU device was lost ({l})")));
        }
        if let Some(e) = &g.error {
            return Err(Error::Gpu(e.clone()));
        }
        Ok(())
    }

    /// Start (or restart) timing each kernel (for `bench-train --profile`), with GPU
    /// timestamps where the device has them, else the wall clock; returns the clock.
    pub fn start_profile(&self) -> ProfileClock {
        let clock = if self.has_timestamps() {
            ProfileClock::GpuTimestamps
        } else {
            ProfileClock::Wall
        };
        // Cannot fail: the clock is one the device has.
        let _ = self.start_profile_with(clock);
        clock
    }

    /// `start_profile` with a given clock; GPU timestamps need `timestamp-query`.
    pub fn start_profile_with(&self, clock: ProfileClock) -> Result<()> {
        let stamps = match clock {
            ProfileClock::Wall => None,
            ProfileClock::GpuTimestamps => {
                if !self.has_timestamps() {
                    return Err(Error::Gpu(format!(
                        "{} has no timestamp-query: profile with the wall clock",
                        self.describe()
                    )));
                }
                let n = 2 * STAMP_PASSES as u32;
                Some(Stamps {
                    set: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("profile"),
                        ty: wgpu::QueryType::Timestamp,
                        count: n,
                    }),
                    resolve: self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("profile timestamps"),
                        size: n as u64 * wgpu::QUERY_SIZE as u64,
                        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    }),
                    pending: Vec::new(),
                })
            }
        };
        *self.profile.lock().unwrap() = Some(Profile {
            clock,
            secs: HashMap::new(),
            stamps,
        });
        Ok(())
    }

    /// The clock of the profile being taken, if any.
    pub fn profile_clock(&self) -> Option<ProfileClock> {
        self.profile.lock().unwrap().as_ref().map(|p| p.clock)
    }

    /// Seconds spent in each kernel since `start_profile`, largest first.
    pub fn profile(&self) -> Vec<(&'static str, f64)> {
        let mut v: Vec<_> = self
            .profile
            .lock()
            .unwrap()
            .as_ref()
            .map(|p| p.secs.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// Add the time of each pass stamped in `resolve` (2 queries per pass, `names` in order),
    /// after the work that wrote them was submitted. A failed read loses these numbers only.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn add_stamps(&self, resolve: &wgpu::Buffer, names: &[&'static str]) {
        let size = names.len() as u64 * 2 * wgpu::QUERY_SIZE as u64;
        let Ok(raw) = pollster::block_on(self.read_raw(resolve, 0, size)) else {
            return;
        };
        let ns_per_tick = self.queue.get_timestamp_period() as f64;
        let mut g = self.profile.lock().unwrap();
        let Some(p) = g.as_mut() else { return };
        for (name, pair) in names.iter().zip(raw.chunks_exact(16)) {
            let t = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            let ticks = t(&pair[8..16]).saturating_sub(t(&pair[0..8]));
            *p.secs.entry(name).or_insert(0.0) += ticks as f64 * ns_per_tick * 1e-9;
        }
    }

    /// Test seam: behave as if the device had been lost.
    #[doc(hidden)]
    pub fn simulate_device_lost(&self) {
        self.faults.lock().unwrap().lost = Some("simulated".into());
    }
}

async fn pick_adapter(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
    choice: AdapterChoice,
) -> Result<wgpu::Adapter> {
    let adapters = instance.enumerate_adapters(backends).await;
    let rank = |a: &wgpu::Adapter| {
        let i = a.get_info();
        let t = match i.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let t = if is_software(&i) { 4 } else { t };
        // Vulkan/Metal/DX12 before GL for the same kind of device.
        let b = if i.backend == wgpu::Backend::Gl { 1 } else { 0 };
        (t, b)
    };
    let found: Vec<String> = adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?})", i.name, i.backend)
        })
        .collect();
    let mut usable: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|a| choice == AdapterChoice::Any || !is_software(&a.get_info()))
        .filter(|a| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .collect();
    usable.sort_by_key(rank);
    if let Some(a) = usable.into_iter().next() {
        return Ok(a);
    }
    #[cfg(target_arch = "wasm32")]
    {
        // enumerate_adapters is empty on WebGPU: ask for one.
        let _ = found;
        instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("no WebGPU adapter: {e}")))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let what = if choice == AdapterChoice::Hardware {
            "no hardware GPU adapter with compute shaders"
        } else {
            "no GPU adapter with compute shaders"
        };
        Err(Error::Gpu(if found.is_empty() {
            format!("{what}: wgpu found no adapter at all (on Linux, install a Vulkan driver: mesa-vulkan-drivers gives lavapipe)")
        } else {
            format!("{what}; found: {}", found.join(", "))
        }))
    }
}

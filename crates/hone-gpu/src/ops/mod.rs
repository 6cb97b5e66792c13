//! Op families: each module dispatches the kernels of its `.wgsl` file(s) in `src/kernels/`,
//! forward and backward side by side.

pub mod adamw;
pub mod attention;
pub mod dropout;
pub mod elementwise;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod swiglu;

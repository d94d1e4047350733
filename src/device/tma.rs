//! TMA tensor maps (`CUtensorMap`, 128 bytes) for the Hopper kernels' `cp.async.bulk.tensor`
//! loads: encoded by the driver (`cuTensorMapEncodeTiled`) on a GPU, and in the emulator's own
//! format (read by emu/runtime.cpp's `tma_load`) on the emulated GPU. Both paths check the
//! driver's documented limits first, so a map the hardware would refuse is an `Err` on either.

use super::{Gpu, KernelParam};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Shared-memory swizzle of a TMA box (CU_TENSOR_MAP_SWIZZLE_*): the 16-byte chunks of each
/// row of `span` bytes are permuted by the row index, as wgmma's descriptors expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swizzle {
    None,
    B32,
    B64,
    B128,
}

impl Swizzle {
    /// The swizzle span in bytes (0 for none).
    pub const fn span(self) -> u32 {
        match self {
            Swizzle::None => 0,
            Swizzle::B32 => 32,
            Swizzle::B64 => 64,
            Swizzle::B128 => 128,
        }
    }
}

/// A tiled TMA tensor map, passed by value as a `const __grid_constant__` kernel parameter.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct TensorMap {
    words: [u64; 16],
}

// SAFETY: 128 initialised bytes (sixteen u64), the C type's size; the driver reads them from
// the parameter buffer.
unsafe impl KernelParam for TensorMap {
    fn param_bytes(&self, out: &mut Vec<u8>) {
        for w in self.words {
            out.extend_from_slice(&w.to_ne_bytes());
        }
    }
}

const OP: &str = "TensorMap::tiled_3d";

/// The emulator's tensor-map tag (emu/runtime.cpp `kTmapMagic`).
const EMU_MAGIC: u64 = 0x4d4b_544d_4150_0001;

impl TensorMap {
    /// A 3-D tiled map of the tensor at device address `base`: `dims` in elements (innermost
    /// first), `strides` the byte strides of dims 1 and 2, `boxes` the box copied per load.
    /// Elements outside the tensor load as zeros.
    pub fn tiled_3d(
        gpu: &Gpu,
        base: u64,
        dtype: DType,
        dims: [u64; 3],
        strides: [u64; 2],
        boxes: [u32; 3],
        swizzle: Swizzle,
    ) -> Result<TensorMap> {
        let esize = dtype.size() as u64;
        let bad = |arg: &'static str, detail: String| {
            Err(Error::Invalid {
                op: OP,
                arg,
                detail,
            })
        };
        if base % 16 != 0 {
            return bad("base", format!("address {base:#x} is not 16-byte aligned"));
        }
        if dims.iter().any(|&d| d == 0 || d > 1 << 32) {
            return bad("dims", format!("{dims:?}: each must be 1 to 2^32"));
        }
        if strides.iter().any(|&s| s % 16 != 0 || s >= 1 << 40) {
            return bad(
                "strides",
                format!("{strides:?} bytes: each must be a multiple of 16 below 2^40"),
            );
        }
        if boxes.iter().any(|&b| b == 0 || b > 256) || (u64::from(boxes[0]) * esize) % 16 != 0 {
            return bad(
                "box",
                format!("{boxes:?}: each 1 to 256, the inner one a multiple of 16 bytes"),
            );
        }
        if swizzle != Swizzle::None && u64::from(boxes[0]) * esize > u64::from(swizzle.span()) {
            return bad(
                "box",
                format!(
                    "inner box of {} bytes exceeds the {}-byte swizzle span",
                    u64::from(boxes[0]) * esize,
                    swizzle.span()
                ),
            );
        }
        if gpu.is_emulated() {
            let mut words = [0u64; 16];
            words[0] = EMU_MAGIC;
            words[1] = base;
            words[2..5].copy_from_slice(&dims);
            words[5..7].copy_from_slice(&strides);
            words[7] = u64::from(boxes[0]) | u64::from(boxes[1]) << 16 | u64::from(boxes[2]) << 32;
            words[8] = esize | 3 << 8 | u64::from(swizzle.span()) << 16;
            return Ok(TensorMap { words });
        }
        encode_cuda(base, dtype, dims, strides, boxes, swizzle)
    }
}

fn encode_cuda(
    base: u64,
    dtype: DType,
    dims: [u64; 3],
    strides: [u64; 2],
    boxes: [u32; 3],
    swizzle: Swizzle,
) -> Result<TensorMap> {
    use cudarc::driver::sys;
    let ty = match dtype {
        DType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        DType::BF16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        DType::F32 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
        DType::I8 | DType::U8 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        other => {
            return Err(Error::DType {
                op: OP,
                arg: "dtype",
                got: other,
                expected: "f16, bf16, f32, i8 or u8".into(),
            });
        }
    };
    let sw = match swizzle {
        Swizzle::None => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
        Swizzle::B32 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
        Swizzle::B64 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
        Swizzle::B128 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    };
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let elem_strides = [1u32; 3];
    // SAFETY: every pointer is to a live local array of the rank's length (3 dims and boxes,
    // 2 strides); the driver writes only `map`.
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            ty,
            3,
            base as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sw,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    r.result()
        .map_err(|source| Error::Driver { op: OP, source })?;
    Ok(TensorMap { words: map.opaque })
}

//! Element types and their conversion to and from f64 (the reference's precision).

use half::{bf16, f16};
use std::fmt;

/// The element types medkern tensors hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I8,
    I32,
    U8,
    /// Unsigned 16-bit (12/16-bit greyscale images, DICOM-like): an input of `preprocess`.
    U16,
}

impl DType {
    /// Every dtype, for tables and tests.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::I32,
        DType::U8,
        DType::U16,
    ];
    /// The floating dtypes the float kernels are instantiated for.
    pub const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::U16 => 2,
            DType::I8 | DType::U8 => 1,
        }
    }

    /// The suffix kernels carry (`softmax_warp_f16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::U16 => "u16",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Unit roundoff of the format (half the distance from 1 to the next value); 0 for integers.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            DType::F32 => f64::from(f32::EPSILON) / 2.0,
            DType::F16 => 2f64.powi(-11),
            DType::BF16 => 2f64.powi(-8),
            _ => 0.0,
        }
    }

    /// Rounds `v` to the nearest value this dtype can hold (saturating for integers).
    pub fn round(self, v: f64) -> f64 {
        match self {
            DType::F32 => f64::from(v as f32),
            DType::F16 => f16::from_f64(v).to_f64(),
            DType::BF16 => bf16::from_f64(v).to_f64(),
            DType::I8 => v.round_ties_even().clamp(-128.0, 127.0),
            DType::I32 => v
                .round_ties_even()
                .clamp(f64::from(i32::MIN), f64::from(i32::MAX)),
            DType::U8 => v.round_ties_even().clamp(0.0, 255.0),
            DType::U16 => v.round_ties_even().clamp(0.0, 65535.0),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that is a medkern element: plain old data the GPU can hold.
pub trait Element: bytemuck::Pod + cudarc::driver::DeviceRepr + Send + Sync + 'static {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    /// Round to nearest (saturating for integers).
    fn from_f64(v: f64) -> Self;
}

macro_rules! element {
    ($t:ty, $d:expr, |$x:ident| $to:expr, |$v:ident| $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            fn to_f64(self) -> f64 {
                let $x = self;
                $to
            }
            fn from_f64($v: f64) -> Self {
                $from
            }
        }
    };
}
element!(f32, DType::F32, |x| f64::from(x), |v| v as f32);
element!(f16, DType::F16, |x| x.to_f64(), |v| f16::from_f64(v));
element!(bf16, DType::BF16, |x| x.to_f64(), |v| bf16::from_f64(v));
element!(i8, DType::I8, |x| f64::from(x), |v| DType::I8.round(v)
    as i8);
element!(i32, DType::I32, |x| f64::from(x), |v| DType::I32.round(v)
    as i32);
element!(u8, DType::U8, |x| f64::from(x), |v| DType::U8.round(v)
    as u8);
element!(u16, DType::U16, |x| f64::from(x), |v| DType::U16.round(v)
    as u16);

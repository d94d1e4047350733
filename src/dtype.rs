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
            DType::F16 => f16_from_f64(v).to_f64(),
            DType::BF16 => bf16_from_f64(v).to_f64(),
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

/// `v` rounded to f32 toward zero, with the last bit set when inexact ("round to odd"): a
/// second rounding of that to a format with at least two fewer significand bits (f16, bf16)
/// equals one correct rounding of `v`.
fn f32_round_to_odd(v: f64) -> f32 {
    let t = v as f32;
    if t.is_nan() || t.is_infinite() || f64::from(t) == v {
        return t;
    }
    let mut bits = t.to_bits();
    if f64::from(t).abs() > v.abs() {
        bits -= 1; // back toward zero: the truncation of v
    }
    f32::from_bits(bits | 1)
}

/// `v` rounded to the nearest f16, ties to even. `half`'s `f16::from_f64` drops the low 32
/// bits of the f64 significand before rounding, so a value just above a tie rounds as a tie
/// (found when the emulated GPU's cast disagreed with the reference).
pub fn f16_from_f64(v: f64) -> f16 {
    f16::from_f32(f32_round_to_odd(v))
}

/// `v` rounded to the nearest bf16, ties to even (see [`f16_from_f64`] for why not `half`'s).
pub fn bf16_from_f64(v: f64) -> bf16 {
    bf16::from_f32(f32_round_to_odd(v))
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
element!(f16, DType::F16, |x| x.to_f64(), |v| f16_from_f64(v));
element!(bf16, DType::BF16, |x| x.to_f64(), |v| bf16_from_f64(v));
element!(i8, DType::I8, |x| f64::from(x), |v| DType::I8.round(v)
    as i8);
element!(i32, DType::I32, |x| f64::from(x), |v| DType::I32.round(v)
    as i32);
element!(u8, DType::U8, |x| f64::from(x), |v| DType::U8.round(v)
    as u8);
element!(u16, DType::U16, |x| f64::from(x), |v| DType::U16.round(v)
    as u16);

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest of the candidates around `v` by exact distance, ties to the even pattern.
    fn nearest(v: f64, around: u16, to: impl Fn(u16) -> f64) -> u16 {
        let mut best = around;
        for b in [around.wrapping_sub(1), around, around.wrapping_add(1)] {
            let (d, db) = ((to(b) - v).abs(), (to(best) - v).abs());
            if d < db || (d == db && b % 2 == 0) {
                best = b;
            }
        }
        best
    }

    #[test]
    fn f16_and_bf16_rounding_is_correct_where_half_truncates() {
        // f32 -914.000244: 2.000244 from -912, 1.999756 from -916.
        assert_eq!(bf16_from_f64(-914.000244140625).to_f64(), -916.0);
        assert_eq!(bf16_from_f64(-914.0).to_f64(), -912.0); // an exact tie: to even
        let mut s = 0x1234_5678_9abc_def0u64;
        for _ in 0..200_000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Values just off the ties of both formats, over the normal and subnormal ranges.
            let e = (s >> 58) as i32 - 20;
            let v = f64::from_bits((s >> 12) | 0x3ff0_0000_0000_0000) * 2f64.powi(e);
            let v = if s & 1 == 0 { -v } else { v };
            let b = bf16_from_f64(v).to_bits();
            assert_eq!(
                b,
                nearest(v, b, |x| bf16::from_bits(x).to_f64()),
                "bf16 {v:e}"
            );
            let h = f16_from_f64(v).to_bits();
            if v.abs() < 65504.0 {
                assert_eq!(
                    h,
                    nearest(v, h, |x| f16::from_bits(x).to_f64()),
                    "f16 {v:e}"
                );
            }
        }
    }
}

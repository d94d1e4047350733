//! Spatial geometry shared by the convolution-family ops (conv2d, depthwise, pooling,
//! transposed conv): padding modes and output sizes, NHWC throughout.

use crate::error::{Error, Result};

/// How a window op pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Padding {
    /// Explicit zero padding (top, bottom, left, right): PyTorch's `padding=(ph, pw)` is
    /// `Explicit { top: ph, bottom: ph, left: pw, right: pw }`.
    Explicit {
        top: usize,
        bottom: usize,
        left: usize,
        right: usize,
    },
    /// TensorFlow "SAME": output = ceil(input / stride), the total padding split with the
    /// extra row/column at the bottom/right (asymmetric at stride 2).
    Same,
    /// TensorFlow "VALID": no padding.
    Valid,
}

impl Padding {
    /// Symmetric padding `ph` rows top and bottom, `pw` columns left and right.
    pub fn symmetric(ph: usize, pw: usize) -> Padding {
        Padding::Explicit {
            top: ph,
            bottom: ph,
            left: pw,
            right: pw,
        }
    }
}

/// Resolved window geometry along both spatial axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub in_h: usize,
    pub in_w: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub dil_h: usize,
    pub dil_w: usize,
    /// Padding before the first row / column (the kernels' offsets).
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// Output size and leading padding of one axis; Err when the output would be empty.
fn axis(
    op: &'static str,
    what: &str,
    input: usize,
    k: usize,
    stride: usize,
    dil: usize,
    pad: (usize, usize, bool),
) -> Result<(usize, usize)> {
    let bad = |detail: String| Error::Invalid {
        op,
        arg: "window",
        detail,
    };
    if k == 0 || stride == 0 || dil == 0 {
        return Err(bad(format!(
            "{what}: kernel {k}, stride {stride}, dilation {dil}; expected all >= 1"
        )));
    }
    let span = dil * (k - 1) + 1; // receptive field of the dilated kernel
    let (before, after, same) = pad;
    if same {
        let out = input.div_ceil(stride);
        let total = ((out.saturating_sub(1)) * stride + span).saturating_sub(input);
        if out == 0 {
            return Err(bad(format!("{what}: input {input} gives an empty output")));
        }
        return Ok((out, total / 2));
    }
    let padded = input + before + after;
    if padded < span {
        return Err(bad(format!(
            "{what}: input {input} + padding {before}+{after} is smaller than the kernel span {span}: output size <= 0"
        )));
    }
    Ok(((padded - span) / stride + 1, before))
}

impl Window {
    /// Resolves a `k_h × k_w` window over an `in_h × in_w` input.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        op: &'static str,
        (in_h, in_w): (usize, usize),
        (k_h, k_w): (usize, usize),
        (stride_h, stride_w): (usize, usize),
        (dil_h, dil_w): (usize, usize),
        padding: Padding,
    ) -> Result<Window> {
        let (ph, pw, same) = match padding {
            Padding::Explicit {
                top,
                bottom,
                left,
                right,
            } => ((top, bottom), (left, right), false),
            Padding::Same => ((0, 0), (0, 0), true),
            Padding::Valid => ((0, 0), (0, 0), false),
        };
        let (out_h, pad_top) = axis(op, "height", in_h, k_h, stride_h, dil_h, (ph.0, ph.1, same))?;
        let (out_w, pad_left) = axis(op, "width", in_w, k_w, stride_w, dil_w, (pw.0, pw.1, same))?;
        Ok(Window {
            in_h,
            in_w,
            k_h,
            k_w,
            stride_h,
            stride_w,
            dil_h,
            dil_w,
            pad_top,
            pad_left,
            out_h,
            out_w,
        })
    }

    /// Input row read by output row `oh` at kernel row `kh` (may be outside `0..in_h`: padding).
    pub fn in_row(&self, oh: usize, kh: usize) -> isize {
        (oh * self.stride_h + kh * self.dil_h) as isize - self.pad_top as isize
    }
    /// Input column read by output column `ow` at kernel column `kw`.
    pub fn in_col(&self, ow: usize, kw: usize) -> isize {
        (ow * self.stride_w + kw * self.dil_w) as isize - self.pad_left as isize
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_and_tensorflow_sizes() {
        // ResNet stem: 224, k7 s2 p3 -> 112; max pool k3 s2 p1 -> 56.
        let w = Window::new(
            "t",
            (224, 224),
            (7, 7),
            (2, 2),
            (1, 1),
            Padding::symmetric(3, 3),
        )
        .unwrap();
        assert_eq!((w.out_h, w.out_w, w.pad_top), (112, 112, 3));
        let w = Window::new(
            "t",
            (112, 112),
            (3, 3),
            (2, 2),
            (1, 1),
            Padding::symmetric(1, 1),
        )
        .unwrap();
        assert_eq!(w.out_h, 56);
        // TF SAME, stride 2, k3 on 224: out 112, total pad 1 -> 0 before, 1 after.
        let w = Window::new("t", (224, 224), (3, 3), (2, 2), (1, 1), Padding::Same).unwrap();
        assert_eq!((w.out_h, w.pad_top), (112, 0));
        // TF SAME, stride 2, k5 on 225 (odd): out 113, total pad 4 -> 2 before.
        let w = Window::new("t", (225, 225), (5, 5), (2, 2), (1, 1), Padding::Same).unwrap();
        assert_eq!((w.out_h, w.pad_top), (113, 2));
        // Dilation 2, k3, p2 keeps the size.
        let w = Window::new(
            "t",
            (17, 9),
            (3, 3),
            (1, 1),
            (2, 2),
            Padding::symmetric(2, 2),
        )
        .unwrap();
        assert_eq!((w.out_h, w.out_w), (17, 9));
        assert_eq!(w.in_row(0, 0), -2);
        assert_eq!(w.in_col(8, 2), 10);
    }

    #[test]
    fn empty_outputs_are_errors() {
        let e = Window::new("conv2d", (2, 2), (5, 5), (1, 1), (1, 1), Padding::Valid).unwrap_err();
        assert!(e.to_string().contains("output size <= 0"), "{e}");
        assert!(Window::new("conv2d", (8, 8), (3, 3), (0, 1), (1, 1), Padding::Valid).is_err());
    }
}

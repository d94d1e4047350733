//! Reference for `kernels/conv.cu` (launcher: `src/ops/conv.rs`): direct NHWC convolution in
//! f64, `y = act(conv(x, w)·scale + bias + residual)`.

use crate::ops::Activation;
use crate::ops::conv_geom::Window;
use crate::reference::elementwise::activation;

/// Shapes of one convolution: x `[n, h, w, c]`, w `[oc, k_h, k_w, c / groups]` (OHWI), y
/// `[n, out_h, out_w, oc]`.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub oc: usize,
    pub groups: usize,
    pub win: Window,
}

/// Convolution with the fused epilogue; `scale`/`bias` are per output channel, `residual` has
/// y's shape.
pub fn conv2d(
    x: &[f64],
    w: &[f64],
    s: &ConvShape,
    scale: Option<&[f64]>,
    bias: Option<&[f64]>,
    residual: Option<&[f64]>,
    act: Activation,
) -> Vec<f64> {
    let win = &s.win;
    let (cg, ocg) = (s.c / s.groups, s.oc / s.groups);
    let mut y = vec![0.0; s.n * win.out_h * win.out_w * s.oc];
    for n in 0..s.n {
        for oh in 0..win.out_h {
            for ow in 0..win.out_w {
                let m = (n * win.out_h + oh) * win.out_w + ow;
                for oc in 0..s.oc {
                    let g = oc / ocg;
                    let mut acc = 0.0;
                    for kh in 0..win.k_h {
                        let ih = win.in_row(oh, kh);
                        if ih < 0 || ih >= win.in_h as isize {
                            continue;
                        }
                        for kw in 0..win.k_w {
                            let iw = win.in_col(ow, kw);
                            if iw < 0 || iw >= win.in_w as isize {
                                continue;
                            }
                            let xi = ((n * win.in_h + ih as usize) * win.in_w + iw as usize) * s.c
                                + g * cg;
                            let wi = ((oc * win.k_h + kh) * win.k_w + kw) * cg;
                            acc += x[xi..xi + cg]
                                .iter()
                                .zip(&w[wi..wi + cg])
                                .map(|(a, b)| a * b)
                                .sum::<f64>();
                        }
                    }
                    let mut v = acc * scale.map_or(1.0, |sc| sc[oc]) + bias.map_or(0.0, |b| b[oc]);
                    let at = m * s.oc + oc;
                    if let Some(r) = residual {
                        v += r[at];
                    }
                    y[at] = activation(act, v);
                }
            }
        }
    }
    y
}

/// PyTorch's conv weight `[oc, c/groups, k_h, k_w]` (OIHW) reordered to medkern's OHWI.
pub fn oihw_to_ohwi(w: &[f64], oc: usize, cg: usize, kh: usize, kw: usize) -> Vec<f64> {
    let mut out = vec![0.0; w.len()];
    for o in 0..oc {
        for c in 0..cg {
            for h in 0..kh {
                for x in 0..kw {
                    out[((o * kh + h) * kw + x) * cg + c] = w[((o * cg + c) * kh + h) * kw + x];
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::conv_geom::Padding;

    #[test]
    fn three_by_three_by_hand() {
        // 1 image 3x3x1 = 1..9, one 3x3 filter of ones, padding 1: the centre output is 45,
        // the top-left corner sees 1+2+4+5 = 12.
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        let w = vec![1.0; 9];
        let win = Window::new(
            "t",
            (3, 3),
            (3, 3),
            (1, 1),
            (1, 1),
            Padding::symmetric(1, 1),
        )
        .unwrap();
        let s = ConvShape {
            n: 1,
            c: 1,
            oc: 1,
            groups: 1,
            win,
        };
        let y = conv2d(&x, &w, &s, None, None, None, Activation::Identity);
        assert_eq!(
            y,
            vec![12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0]
        );
        // Folded BN (scale 2, bias -100), residual 1, ReLU: corner max(0, 24 - 100 + 1) = 0,
        // centre 90 - 100 + 1 < 0 too; with bias -50 the centre is 41.
        let y = conv2d(
            &x,
            &w,
            &s,
            Some(&[2.0]),
            Some(&[-50.0]),
            Some(&[1.0; 9]),
            Activation::Relu,
        );
        assert_eq!(y[4], 41.0);
        assert_eq!(y[0], 0.0);
    }

    #[test]
    fn groups_and_stride() {
        // 2 groups of 1 channel, stride 2 on 4x4, k1: picks pixels (0,0),(0,2),(2,0),(2,2),
        // channel 0 scaled by 3, channel 1 by -1.
        let x: Vec<f64> = (0..32).map(f64::from).collect(); // [1,4,4,2]
        let w = vec![3.0, -1.0]; // [2,1,1,1]
        let win = Window::new("t", (4, 4), (1, 1), (2, 2), (1, 1), Padding::Valid).unwrap();
        let s = ConvShape {
            n: 1,
            c: 2,
            oc: 2,
            groups: 2,
            win,
        };
        let y = conv2d(&x, &w, &s, None, None, None, Activation::Identity);
        // pixel (r,c) channel ch is at (r*4 + c)*2 + ch.
        assert_eq!(y, vec![0.0, -1.0, 12.0, -5.0, 48.0, -17.0, 60.0, -21.0]);
    }

    #[test]
    fn oihw_reorder() {
        // oc 1, cg 2, 1x2 kernel: OIHW [c0: a b, c1: c d] -> OHWI [a c b d].
        assert_eq!(
            oihw_to_ohwi(&[1.0, 2.0, 3.0, 4.0], 1, 2, 1, 2),
            vec![1.0, 3.0, 2.0, 4.0]
        );
    }
}

//! Reference for `kernels/elementwise.cu` (launcher: `src/ops/elementwise.rs`).

use crate::ops::Activation;

/// The activation in f64. GELU uses the exact erf form or PyTorch's tanh approximation.
pub fn activation(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + u.tanh())
        }
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
    }
}

/// `y[i] = act(x[i]·alpha + bias[i mod n]) + residual[i]`, bias and residual optional;
/// `n` is the row length (the bias length).
pub fn eltwise(
    x: &[f64],
    n: usize,
    alpha: f64,
    bias: Option<&[f64]>,
    act: Activation,
    residual: Option<&[f64]>,
) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let mut t = v * alpha;
            if let Some(b) = bias {
                t += b[i % n.max(1)];
            }
            t = activation(act, t);
            if let Some(r) = residual {
                t += r[i];
            }
            t
        })
        .collect()
}

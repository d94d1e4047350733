//! Embedding lookup with BERT's sum of word, position and token-type rows: kernel
//! `kernels/embedding.cu`, reference `src/reference/embedding.rs`, tests `tests/bert.rs`.

use super::consts;
use super::{Backend, as_i32, backend, dev, dev_mut, float_dtype, host, kernel_name};
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

const OP: &str = "embedding";

/// One id per token into a `[rows, h]` table.
#[derive(Clone, Copy, Debug)]
pub struct Lookup<'a> {
    pub table: &'a Tensor,
    pub ids: &'a [u32],
}

/// `y[t] = word[ids[t]] + Σ extra[i].table[extra[i].ids[t]]` (at most two extra tables:
/// positions and token types), `[tokens, h]` in the tables' dtype on their device. Ids are
/// checked against the table sizes here, so the kernel never reads outside a table.
pub fn embedding(word: Lookup, extra: &[Lookup]) -> Result<Tensor> {
    let ws = word.table.shape();
    if ws.len() != 2 {
        return Err(Error::Shape {
            op: OP,
            arg: "table",
            got: ws.to_vec(),
            expected: "[rows, h]".into(),
        });
    }
    let h = ws[1];
    let dt = word.table.dtype();
    float_dtype(OP, "table", dt)?;
    if extra.len() > 2 {
        return Err(Error::Invalid {
            op: OP,
            arg: "extra",
            detail: format!("{} extra tables; expected at most 2", extra.len()),
        });
    }
    let tokens = word.ids.len();
    for (i, l) in std::iter::once(&word).chain(extra).enumerate() {
        let s = l.table.shape();
        if s.len() != 2 || s[1] != h || l.table.dtype() != dt {
            return Err(Error::Shape {
                op: OP,
                arg: "table",
                got: s.to_vec(),
                expected: format!("[rows, {h}] {dt} (the word table's width and dtype)"),
            });
        }
        if l.ids.len() != tokens {
            return Err(Error::Invalid {
                op: OP,
                arg: "ids",
                detail: format!("table {i}: {} ids for {tokens} tokens", l.ids.len()),
            });
        }
        if let Some((t, &id)) = l.ids.iter().enumerate().find(|(_, v)| **v as usize >= s[0]) {
            return Err(Error::Invalid {
                op: OP,
                arg: "ids",
                detail: format!("table {i}: token {t} has id {id}, expected < {} rows", s[0]),
            });
        }
    }
    let others: Vec<(&'static str, Option<&Tensor>)> =
        extra.iter().map(|l| ("table", Some(l.table))).collect();
    match backend(OP, word.table, &others)? {
        Backend::Cpu => {
            let w = host(OP, "table", word.table)?.to_f64();
            let ex: Vec<Vec<f64>> = extra
                .iter()
                .map(|l| host(OP, "table", l.table).map(HostTensor::to_f64))
                .collect::<Result<_>>()?;
            let pairs: Vec<(&[f64], &[u32])> = ex
                .iter()
                .zip(extra)
                .map(|(t, l)| (t.as_slice(), l.ids))
                .collect();
            let y = reference::embedding::embedding(word.ids, &w, &pairs, h);
            Ok(Tensor::Host(HostTensor::from_f64(&[tokens, h], &y, dt)?))
        }
        Backend::Gpu(gpu) => {
            let gpu = gpu.clone();
            let dv = crate::tensor::Device::Gpu(gpu.clone());
            let mut y = Tensor::empty(&dv, &[tokens, h], dt)?;
            if tokens == 0 {
                return Ok(y);
            }
            let up = |ids: &[u32]| -> Result<Tensor> {
                let v: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
                HostTensor::new(&[v.len()], v)?.to_device(&dv)
            };
            let ids = up(word.ids)?;
            let e0 = extra.first().map(|l| up(l.ids)).transpose()?;
            let e1 = extra.get(1).map(|l| up(l.ids)).transpose()?;
            let kernel = kernel_name(OP, format!("embedding_{dt}"))?;
            let (tok, hi) = (as_i32(OP, "tokens", tokens)?, as_i32(OP, "h", h)?);
            let vec_ok = i32::from(h % consts::VEC == 0);
            let null = 0u64;
            let idd = dev(OP, "ids", &ids)?;
            let wd = dev(OP, "table", word.table)?;
            let e0d = e0.as_ref().map(|t| dev(OP, "ids", t)).transpose()?;
            let e1d = e1.as_ref().map(|t| dev(OP, "ids", t)).transpose()?;
            let t0 = extra
                .first()
                .map(|l| dev(OP, "table", l.table))
                .transpose()?;
            let t1 = extra
                .get(1)
                .map(|l| dev(OP, "table", l.table))
                .transpose()?;
            let yd = dev_mut(OP, "out", &mut y)?;
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut()).arg(idd.buffer());
            match e0d {
                Some(d) => b.arg(d.buffer()),
                None => b.arg(&null),
            };
            match e1d {
                Some(d) => b.arg(d.buffer()),
                None => b.arg(&null),
            };
            b.arg(wd.buffer());
            match t0 {
                Some(d) => b.arg(d.buffer()),
                None => b.arg(&null),
            };
            match t1 {
                Some(d) => b.arg(d.buffer()),
                None => b.arg(&null),
            };
            b.arg(&tok).arg(&hi).arg(&vec_ok);
            // One warp per token row.
            let threads = consts::EMB_THREADS;
            let blocks = tokens
                .div_ceil(threads / 32)
                .clamp(1, gpu.sm_count() as usize * 32) as u32;
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (threads as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches embedding_*(y, ids, pos, types, word, posw, typew, tokens, h,
            // vec_ok); every id was checked against its table's rows above, tables are [rows, h]
            // and y [tokens, h]; vec_ok only when h % 8 == 0 (256-byte-aligned allocations).
            unsafe { b.launch(cfg) }?;
            Ok(y)
        }
    }
}

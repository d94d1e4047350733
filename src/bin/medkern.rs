//! `medkern` command line: `info` (GPU, NVRTC, kernel table), `demo` (the first op
//! families on the best device, checked against the CPU reference), `embed` and `compress`
//! (BERT-family model folders, JSON) and the CNN commands (`exam`, `classify`, `autoencode`; in
//! `medkern/cnn.rs`).

use clap::{Parser, Subcommand, ValueEnum};
use medkern::device::{self, kernels, runtime_compile, sass};
use medkern::model::bert::Pooling;
use medkern::model::encoder::{EncoderOptions, TextEncoder};
use medkern::model::resnet::{ResNet, ResNetConfig, random_resnet};
use medkern::ops::{
    self, Activation, Attention, Conv2d, ConvWeight, Eltwise, Padding, Qkv, SeqBatch,
};
use medkern::{DType, Device, HostTensor, Tensor};
use std::path::PathBuf;
use std::process::ExitCode;

#[path = "medkern/cnn.rs"]
mod cnn;

/// `println!` that returns an error instead of panicking when stdout fails (`> /dev/full`),
/// and drops the output quietly when the reader has gone (`| head`).
macro_rules! outln {
    ($($arg:tt)*) => {
        cnn::print_line(&format!($($arg)*))?
    };
}
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "medkern",
    version,
    about = "CUDA kernels for compressed transformers and clinical CNNs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Input limit: the largest image file read, in bytes (default 1 GiB).
    #[arg(long, global = true)]
    max_file_bytes: Option<u64>,
    /// Input limit: the largest PNG/JPEG in pixels, width x height (default 67108864 = 64
    /// Mpixel).
    #[arg(long, global = true)]
    max_pixels: Option<u64>,
    /// Input limit: the most a PNG/JPEG decoder may allocate, in bytes (default 256 MiB).
    #[arg(long, global = true)]
    max_alloc_bytes: Option<u64>,
    /// Input limit: the deepest nesting of DICOM sequences (default 64).
    #[arg(long, global = true)]
    max_dicom_depth: Option<usize>,
    /// Input limit: the most texts (embed, compress sentences) or image files (classify,
    /// autoencode, folders expanded) of one command (default 4096).
    #[arg(long, global = true)]
    max_batch: Option<usize>,
    /// Input limit: the largest model file (weights, config.json, tokenizer.json), EMR record
    /// or sentence file read, in bytes (default 2 GiB).
    #[arg(long, global = true)]
    max_model_bytes: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the GPU (or "no GPU"), the NVRTC version and the kernel table.
    Info,
    /// Print the name of every kernel in the table, one per line (scripts/test compares it with
    /// the kernels the emulated GPU ran).
    Kernels,
    /// Time the kernels on the GPU at BERT and ResNet-18 shapes and print a report (ms, TFLOP/s
    /// or GB/s).
    Bench {
        /// Timed iterations per shape (after 3 warm-up runs).
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
    /// Run elementwise, LayerNorm, softmax, Linear layers, attention and conv2d on the best
    /// device and compare with the CPU reference.
    Demo {
        /// Force the CPU backend even when a GPU is present.
        #[arg(long, conflicts_with = "device")]
        cpu: bool,
        /// Where to run it; default: the first GPU if there is one, else the CPU. `emu`
        /// (the emulated GPU) is slow: use it with a few --rows, e.g. 64.
        #[arg(long, value_enum)]
        device: Option<DeviceArg>,
        /// Rows of the demo tensors (the columns are BERT-base's 768).
        #[arg(long, default_value_t = 4096)]
        rows: usize,
    },
    /// Sentence embeddings of the texts with a BERT-family model folder (config.json,
    /// model.safetensors, tokenizer.json), printed as a JSON array with one object per text:
    /// {"text", "tokens", "embedding"}.
    Embed(EmbedArgs),
    /// Compress a BERT / DistilBERT / ALBERT folder offline and save it (safetensors with the
    /// methods recorded in its metadata), then print the quality report (size, embedding cosine
    /// to the dense model on sample sentences, speed) as JSON. Order: heads, layers, 2:4, int8,
    /// low rank.
    Compress(CompressArgs),
    /// EXAM: oxygen need of a patient from a chest X-ray (DICOM, PNG or JPEG) and EMR values
    /// (a JSON object, see medkern::model::emr), printed as JSON: P(more than low-flow oxygen)
    /// at 24 h and 72 h and the ordinal class. Without --weights the model has deterministic
    /// random weights, and the JSON says so.
    Exam {
        /// The chest X-ray: DICOM (uncompressed), PNG or JPEG.
        #[arg(long)]
        image: PathBuf,
        /// The EMR values: a JSON object {feature key: number | category | null}.
        #[arg(long)]
        emr: PathBuf,
        /// An EXAM checkpoint (safetensors: image.* ResNet-34 + emr./fusion./head. tensors).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Where to run it; default: the first GPU if there is one, else the CPU.
        #[arg(long, value_enum)]
        device: Option<DeviceArg>,
        /// Image-trunk dtype (the head runs f32); default: f16 on a GPU, f32 on the CPU.
        #[arg(long, value_enum)]
        dtype: Option<DTypeArg>,
        /// DICOM window centre (modality units), replacing the file's; needs --window-width.
        #[arg(long, requires = "window_width", allow_negative_numbers = true)]
        window_center: Option<f64>,
        /// DICOM window width (> 1), replacing the file's; needs --window-center.
        #[arg(long, requires = "window_center")]
        window_width: Option<f64>,
    },
    /// Classify images (PNG, JPEG, DICOM; folders are expanded, with a progress bar) with the
    /// sepsis classifier, the chest X-ray triage EfficientNet-B7 or EfficientNet-Lite0, printed
    /// as JSON. Without --weights the model has deterministic random weights, and the JSON
    /// says so.
    Classify(cnn::ClassifyArgs),
    /// Serve text encoders over HTTP with dynamic batching: TEI's /embed, /tokenize,
    /// /predict and /rerank, OpenAI's /v1/embeddings; the image models' /classify (PNG, JPEG
    /// or DICOM bytes) and /exam; /health, /info and /metrics. Prints
    /// `medkern serve: listening on http://HOST:PORT` once the models are loaded; SIGTERM or
    /// ctrl-c stops accepting, answers what was queued, then exits.
    #[cfg(feature = "server")]
    Serve(ServeArgs),
    /// Run the sepsis convolutional autoencoder on frames (resized to 96x96): per-image
    /// reconstruction MSE, optionally the 1152-d codes and their k-means clusters, as JSON.
    Autoencode(cnn::AutoencodeArgs),
    /// Draw the benchmark charts of a bench report (the JSON of `scripts/bench_report.py
    /// --json`, written by the GPU run): a roofline (achieved FLOP/s against arithmetic
    /// intensity, under the measured ceilings) and the speed relative to PyTorch per kernel,
    /// as roofline.{svg,png} and peer_ratio.{svg,png} in --out; prints what it wrote as JSON.
    Chart {
        /// The report JSON.
        report: PathBuf,
        /// Folder for the charts (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DeviceArg {
    Cpu,
    Gpu,
    /// The emulated GPU: the GPU path with the kernels run on the CPU (slow; for checking).
    Emu,
}

#[derive(Clone, Copy, ValueEnum)]
enum PoolingArg {
    Mean,
    Cls,
    Max,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DTypeArg {
    F16,
    Bf16,
    F32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let d = medkern::input::InputLimits::default();
    medkern::input::set_max_model_file_bytes(cli.max_model_bytes.unwrap_or(0));
    cnn::set_input_limits(medkern::input::InputLimits {
        max_file_bytes: cli.max_file_bytes.unwrap_or(d.max_file_bytes),
        max_pixels: cli.max_pixels.unwrap_or(d.max_pixels),
        max_alloc_bytes: cli.max_alloc_bytes.unwrap_or(d.max_alloc_bytes),
        max_dicom_depth: cli.max_dicom_depth.unwrap_or(d.max_dicom_depth),
        max_batch: cli.max_batch.unwrap_or(d.max_batch),
    });
    let result = match cli.cmd {
        Cmd::Info => info(),
        Cmd::Kernels => list_kernels(),
        Cmd::Demo { cpu, device, rows } => {
            demo(if cpu { Some(DeviceArg::Cpu) } else { device }, rows)
        }
        Cmd::Bench { iters } => bench(iters),
        Cmd::Embed(a) => embed(a),
        #[cfg(feature = "server")]
        Cmd::Serve(a) => serve(a),
        Cmd::Compress(a) => compress(a),
        Cmd::Exam {
            image,
            emr,
            weights,
            device,
            dtype,
            window_center,
            window_width,
        } => cnn::exam(cnn::ExamArgs {
            image,
            emr,
            weights,
            device,
            dtype,
            window: window_center.zip(window_width),
        }),
        Cmd::Classify(a) => cnn::classify(a),
        Cmd::Autoencode(a) => cnn::autoencode(a),
        Cmd::Chart { report, out } => chart(&report, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medkern: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `medkern chart`: the library draws, the CLI only reports the files.
fn chart(report: &std::path::Path, out: &std::path::Path) -> medkern::Result<()> {
    let r = medkern::viz::BenchReport::load(report)?;
    let (written, skipped) = medkern::viz::write_charts(&r, out)?;
    if written.is_empty() {
        return Err(medkern::Error::Invalid {
            op: "chart",
            arg: "report",
            detail: format!(
                "{}: nothing to draw ({})",
                report.display(),
                skipped.join("; ")
            ),
        });
    }
    let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    cnn::print_json(&serde_json::json!({
        "report": report.display().to_string(),
        "written": files,
        "skipped": skipped,
    }))
}

/// `medkern kernels`: one kernel name per line, through `outln!` so that a full stdout is an
/// error and a closed pipe ends quietly instead of panicking.
fn list_kernels() -> medkern::Result<()> {
    for k in medkern::device::kernels::KERNELS {
        outln!("{}", k.name);
    }
    Ok(())
}

fn info() -> medkern::Result<()> {
    match device::gpu_count().and_then(|n| {
        (0..n)
            .map(medkern::Gpu::new)
            .collect::<medkern::Result<Vec<_>>>()
    }) {
        Ok(gpus) if !gpus.is_empty() => {
            for g in gpus {
                let (dmaj, dmin) = g.driver_version();
                outln!(
                    "GPU {}: {} ({}, {} SMs, {:.1} GiB), CUDA driver {dmaj}.{dmin}",
                    g.ordinal(),
                    g.name(),
                    g.arch(),
                    g.sm_count(),
                    g.total_memory() as f64 / (1u64 << 30) as f64
                );
            }
        }
        Ok(_) => outln!("no GPU: the driver reports 0 devices"),
        Err(e) => outln!("no GPU: {e}"),
    }
    match kernels::BUILD_NVRTC {
        Some((a, b)) => {
            outln!(
                "kernels precompiled by NVRTC {a}.{b} for {}",
                kernels::BUILD_TARGETS.join(", ")
            )
        }
        None => outln!("kernels not precompiled: compiled at run time and cached"),
    }
    match runtime_compile::nvrtc_version() {
        Some((a, b)) => outln!("runtime NVRTC {a}.{b}"),
        None => outln!("runtime NVRTC: not found"),
    }
    // The instruction mix of each kernel's sm_90 SASS, or why there is none.
    let mixes: Result<Vec<sass::KernelSass>, String> = match sass::Disassembler::find() {
        None => {
            outln!("SASS: no disassembler (nvdisasm; scripts/setup-nvrtc installs it)");
            Err("no disassembler".into())
        }
        Some(_) if !kernels::BUILD_TARGETS.contains(&"sm_90") => {
            outln!("SASS: no sm_90 CUBIN embedded in this build");
            Err("no sm_90 CUBIN".into())
        }
        Some(d) => {
            outln!(
                "SASS: {} ({})",
                d.path().display(),
                d.version().unwrap_or_else(|| "version unknown".into())
            );
            let all = d.disassemble_embedded(90);
            if let Err(e) = &all {
                outln!("SASS: {e}");
            }
            all.map_err(|_| "disassembly failed".to_string())
        }
    };
    outln!(
        "\n{:<24} {:<12} {:<10} {:<16} {:>5} {:>6} {:>6}  {}",
        "kernel",
        "module",
        "min arch",
        "precompiled",
        "regs",
        "smem",
        "spill",
        "sm_90 SASS instruction mix"
    );
    for k in kernels::KERNELS {
        let m = kernels::module(k.module)?;
        let archs = kernels::precompiled_archs(m);
        let pre = if archs.is_empty() {
            "runtime compile".to_string()
        } else {
            archs
                .iter()
                .map(|a| format!("sm_{a}"))
                .collect::<Vec<_>>()
                .join(",")
                + if k.sm90a_only() { "a" } else { "+ptx" }
        };
        let r = m
            .resources
            .iter()
            .find(|r| r.kernel == k.name && r.arch == 90);
        let (regs, smem, spill) = r.map_or(("-".into(), "-".into(), "-".into()), |r| {
            (
                r.registers.to_string(),
                r.shared_bytes.to_string(),
                (r.spill_stores + r.spill_loads).to_string(),
            )
        });
        let mix = match &mixes {
            Ok(all) => all
                .iter()
                .find(|s| s.kernel == k.name)
                .map_or_else(|| "not in the CUBIN".to_string(), |s| s.mix().to_string()),
            Err(why) => why.clone(),
        };
        outln!(
            "{:<24} {:<12} {:<10} {:<16} {regs:>5} {smem:>6} {spill:>6}  {mix}",
            k.name,
            k.module,
            if k.sm90a_only() {
                "sm_90a".to_string()
            } else {
                k.min_arch.to_string()
            },
            pre
        );
    }
    outln!("(regs/smem/spill: ptxas report for sm_90)");
    outln!(
        "(instruction mix: static counts in the sm_90 SASS: tensor-core ops (HMMA, IMMA, .SP = 2:4 \
         sparse), global loads/stores by access width, LDGSTS = cp.async, UTMALDG = TMA, shared loads LDS/LDSM \
         and stores STS, BAR = __syncthreads, LDL/STL = local memory)"
    );
    Ok(())
}

/// One SplitMix64 step.
fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Deterministic normal-ish values with a few large outliers (SplitMix64 + Box–Muller).
fn sample(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let mut next = move || (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
    (0..len)
        .map(|i| {
            let v = (-2.0 * next().max(1e-300).ln()).sqrt()
                * (2.0 * std::f64::consts::PI * next()).cos();
            if i % 97 == 13 { v * 20.0 } else { v }
        })
        .collect()
}

/// Ragged sequence lengths uniform in [seq/4, seq]: the generator of benches/attention.rs
/// (its `SeedRng` seeded `1000·seq + batch`), so the CLI's BERT batch is the bench's.
fn ragged_lens(batch: usize, seq: usize) -> Vec<usize> {
    let mut s = (1000 * seq + batch) as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let lo = seq / 4;
    (0..batch)
        .map(|_| lo + (splitmix(&mut s) % (seq - lo + 1) as u64) as usize)
        .collect()
}

/// Cumulative offsets of consecutive sequences (`cu_seqlens`).
fn cu_seqlens(lens: &[usize]) -> Vec<usize> {
    std::iter::once(0)
        .chain(lens.iter().scan(0, |s, &l| {
            *s += l;
            Some(*s)
        }))
        .collect()
}

fn max_err(a: &HostTensor, b: &HostTensor) -> f64 {
    a.to_f64()
        .iter()
        .zip(b.to_f64())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn demo(device: Option<DeviceArg>, rows: usize) -> medkern::Result<()> {
    let dev = cnn::device_of(device)?;
    outln!("device: {}", dev.describe());
    let n = 768;
    let dt = DType::F16;
    let h = |shape: &[usize], seed| {
        HostTensor::from_f64(shape, &sample(shape.iter().product(), seed), dt)
    };
    let (x, r, b, g) = (
        h(&[rows, n], 1)?,
        h(&[rows, n], 2)?,
        h(&[n], 3)?,
        h(&[n], 4)?,
    );
    let on = |t: &HostTensor| t.to_device(&dev);
    let cpu = |t: &HostTensor| t.to_device(&Device::Cpu);
    let (xd, rd, bd, gd) = (on(&x)?, on(&r)?, on(&b)?, on(&g)?);
    let (xc, rc, bc, gc) = (cpu(&x)?, cpu(&r)?, cpu(&b)?, cpu(&g)?);

    let run = |name: &str,
               f: &dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> medkern::Result<Tensor>|
     -> medkern::Result<()> {
        let t0 = Instant::now();
        let got = f(&xd, &rd, &bd, &gd)?.to_host()?;
        let dt_ms = t0.elapsed().as_secs_f64() * 1e3;
        let want = f(&xc, &rc, &bc, &gc)?.to_host()?;
        outln!(
            "{name:<34} [{rows}, {n}] f16  {dt_ms:>8.2} ms (incl. first-use load)  max |err| vs reference {:.3e}",
            max_err(&got, &want)
        );
        Ok(())
    };
    run("bias + GELU(erf) + residual", &|x, r, b, _| {
        ops::eltwise(
            x,
            &Eltwise {
                bias: Some(b),
                act: Activation::GeluErf,
                residual: Some(r),
                ..Default::default()
            },
        )
    })?;
    run("LayerNorm(x + residual)", &|x, r, b, g| {
        ops::layernorm(x, Some(r), g, b, 1e-12)
    })?;
    run("softmax(x / 8)", &|x, _, _, _| ops::softmax(x, None, 0.125))?;
    run("cast f16 -> f32", &|x, _, _, _| ops::cast(x, DType::F32))?;

    // Linear layers on a slice of the rows (the CPU reference is O(M·N·K) in f64).
    let m = rows.clamp(1, 256);
    let xs = h(&[m, n], 5)?;
    let w = HostTensor::from_f64(
        &[n, n],
        &sample(n * n, 6)
            .iter()
            .map(|v| v * 0.05)
            .collect::<Vec<_>>(),
        dt,
    )?;
    let (xd, xc) = (on(&xs)?, cpu(&xs)?);
    let linear = |name: &str,
                  f: &dyn Fn(&Tensor, &Device) -> medkern::Result<Tensor>|
     -> medkern::Result<()> {
        let t0 = Instant::now();
        let got = f(&xd, &dev)?.to_host()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let want = f(&xc, &Device::Cpu)?.to_host()?;
        outln!(
            "{name:<34} [{m}, {n}]x[{n}, {n}] {ms:>8.2} ms (incl. first-use load)  max |err| vs reference {:.3e}",
            max_err(&got, &want)
        );
        Ok(())
    };
    linear("Linear f16 + bias + GELU", &|x, d| {
        let (wt, bt) = (w.to_device(d)?, b.to_device(d)?);
        ops::gemm(
            x,
            &wt,
            &ops::Gemm {
                bias: Some(&bt),
                act: Activation::GeluErf,
                ..Default::default()
            },
        )
    })?;
    linear("Linear f16, 2:4-pruned weight", &|x, d| {
        let (sw, _) = ops::SparseWeight::prune(&w, d)?;
        ops::gemm_sparse(x, &sw, &ops::Gemm::default())
    })?;
    linear("Linear int8 W8A8", &|x, d| {
        let (q, sx) = ops::quantize_rows(x)?;
        let qw = medkern::quant::quantize_weight(&w, 0, medkern::quant::Clip::AbsMax)?;
        let (wq, sw) = (
            qw.q_tensor()?.to_device(d)?,
            qw.scale_tensor()?.to_device(d)?,
        );
        ops::gemm_i8(&q, &wq, &ops::GemmI8::new(&sx, &sw, DType::F16))
    })?;

    // Attention on a small ragged batch (QKV projection output, 4 heads of 64), packed and
    // padded (max 100 rows per sequence).
    let (heads, hd, lens, max) = (4, 64, [1, 7, 64, 33, 100], 100);
    let cu = cu_seqlens(&lens);
    let packed = h(&[cu[lens.len()], 3, heads, hd], 7)?;
    let padded = h(&[lens.len() * max, 3, heads, hd], 8)?;
    let (pk_d, pd_d, pk_c, pd_c) = (on(&packed)?, on(&padded)?, cpu(&packed)?, cpu(&padded)?);
    let attn = |name: &str,
                f: &dyn Fn(&Tensor, &Tensor, &Device) -> medkern::Result<Tensor>|
     -> medkern::Result<()> {
        let t0 = Instant::now();
        let got = f(&pk_d, &pd_d, &dev)?.to_host()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let want = f(&pk_c, &pd_c, &Device::Cpu)?.to_host()?;
        outln!(
            "{name:<34} lens {lens:?} h{heads} d{hd} {ms:>8.2} ms (incl. first-use load)  max |err| vs reference {:.3e}",
            max_err(&got, &want)
        );
        Ok(())
    };
    attn("attention fused, packed", &|p, _, d| {
        ops::attention(
            Qkv::Packed(p),
            &SeqBatch::packed(d, &cu)?,
            &Attention::default(),
        )
    })?;
    attn("attention fused, padded + causal", &|_, p, d| {
        let a = Attention {
            causal: true,
            ..Default::default()
        };
        ops::attention(Qkv::Packed(p), &SeqBatch::padded(d, &lens, max)?, &a)
    })?;
    attn("attention unfused, packed", &|p, _, d| {
        ops::attention_unfused(
            Qkv::Packed(p),
            &SeqBatch::packed(d, &cu)?,
            &Attention::default(),
        )
    })?;

    // conv2d, NHWC f16, folded-BN scale/bias fused (small images: the f64 reference is direct).
    for case in [
        // A ResNet basic block's second conv: relu(bn(conv3x3(x)) + identity).
        ConvDemo {
            name: "conv 3x3 + BN + residual + ReLU",
            x: [2, 14, 14, 32],
            oc: 32,
            k: 3,
            stride: 1,
            padding: Padding::symmetric(1, 1),
            act: Activation::Relu,
            residual: true,
        },
        // ResNet's stem: 3 channels (the element-gather path), 7x7 stride 2, padding 3.
        ConvDemo {
            name: "conv stem 7x7 s2, 3 channels",
            x: [1, 32, 32, 3],
            oc: 64,
            k: 7,
            stride: 2,
            padding: Padding::symmetric(3, 3),
            act: Activation::Relu,
            residual: false,
        },
        // TF SAME at stride 2 on an even side: the extra padding row/column at the bottom/right.
        ConvDemo {
            name: "conv 3x3 s2 TF-SAME + BN + SiLU",
            x: [2, 28, 28, 16],
            oc: 32,
            k: 3,
            stride: 2,
            padding: Padding::Same,
            act: Activation::Silu,
            residual: false,
        },
    ] {
        case.run(&dev)?;
    }
    Ok(())
}

/// One conv2d demo layer: `act(conv(x)·scale + bias (+ residual))`, weights from PyTorch's OIHW.
struct ConvDemo {
    name: &'static str,
    x: [usize; 4],
    oc: usize,
    k: usize,
    stride: usize,
    padding: Padding,
    act: Activation,
    residual: bool,
}

impl ConvDemo {
    /// The layer on `dev` (after its first-use load) and on the CPU reference; prints the error.
    fn run(&self, dev: &Device) -> medkern::Result<()> {
        let [n, hw, _, c] = self.x;
        let win = ops::Window::new(
            "demo",
            (hw, hw),
            (self.k, self.k),
            (self.stride, self.stride),
            (1, 1),
            self.padding,
        )?;
        let ys = [n, win.out_h, win.out_w, self.oc];
        let k = self.k * self.k * c;
        let h = |shape: &[usize], seed, gain: f64, dt| {
            let v: Vec<f64> = sample(shape.iter().product(), seed)
                .iter()
                .map(|v| v * gain)
                .collect();
            HostTensor::from_f64(shape, &v, dt)
        };
        let x = h(&self.x, 20, 1.0, DType::F16)?;
        let w = h(
            &[self.oc, c, self.k, self.k],
            21,
            (2.0 / k as f64).sqrt(),
            DType::F16,
        )?;
        let scale = HostTensor::from_f64(
            &[self.oc],
            &(0..self.oc)
                .map(|i| 0.5 + (i % 7) as f64 / 7.0)
                .collect::<Vec<_>>(),
            DType::F32,
        )?;
        let bias = h(&[self.oc], 22, 0.1, DType::F32)?;
        let res = h(&ys, 23, 1.0, DType::F16)?;
        let run = |d: &Device| -> medkern::Result<HostTensor> {
            let (xd, sd, bd, rd) = (
                x.to_device(d)?,
                scale.to_device(d)?,
                bias.to_device(d)?,
                res.to_device(d)?,
            );
            let wd = ConvWeight::from_pytorch(&w, 1, d)?;
            let spec = Conv2d {
                stride: (self.stride, self.stride),
                padding: self.padding,
                scale: Some(&sd),
                bias: Some(&bd),
                residual: self.residual.then_some(&rd),
                act: self.act,
                ..Default::default()
            };
            ops::conv2d(&xd, &wd, &spec)?.to_host()
        };
        let t0 = Instant::now();
        let got = run(dev)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let want = run(&Device::Cpu)?;
        outln!(
            "{:<34} {:?}->{ys:?} f16 {ms:>8.2} ms (incl. first-use load)  max |err| vs reference {:.3e}",
            self.name,
            self.x,
            max_err(&got, &want)
        );
        Ok(())
    }
}

/// Median GPU time of `f` in ms, from CUDA events recorded around each call (wall time only
/// where the device has no events: the emulated GPU, whose timings mean nothing).
fn time_ms(
    gpu: &medkern::Gpu,
    iters: usize,
    f: &mut dyn FnMut() -> medkern::Result<()>,
) -> medkern::Result<f64> {
    Ok(time_calls(gpu, iters, f)?.device_ms.unwrap_or(f64::NAN))
}

/// The medians over `iters` calls of `f` (after 3 warm-up calls) of its GPU time (events),
/// host time and launches.
fn time_calls(
    gpu: &medkern::Gpu,
    iters: usize,
    f: &mut dyn FnMut() -> medkern::Result<()>,
) -> medkern::Result<medkern::Timing> {
    for _ in 0..3 {
        f()?;
    }
    gpu.synchronize()?;
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        t.push(gpu.timed(&mut *f)?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let device = t.iter().map(|x| x.device_ms).collect::<Option<Vec<f64>>>();
    Ok(medkern::Timing {
        device_ms: device.map(median),
        host_ms: median(t.iter().map(|x| x.host_ms).collect()),
        launches: t.iter().map(|x| x.launches).max().unwrap_or(0),
    })
}

fn bench(iters: usize) -> medkern::Result<()> {
    let gpu = medkern::Gpu::new(0)?;
    let dev = Device::Gpu(gpu.clone());
    outln!(
        "medkern bench on {} ({}), median of {iters}",
        gpu.name(),
        gpu.arch()
    );
    outln!("{:<44} {:>10} {:>14}", "op", "ms", "rate");
    let h = |shape: &[usize], seed: u64, dt: DType| -> medkern::Result<Tensor> {
        HostTensor::from_f64(shape, &sample(shape.iter().product(), seed), dt)?.to_device(&dev)
    };
    for (m, n, k) in [
        (128, 768, 768),
        (2048, 3072, 768),
        (16384, 768, 3072),
        (4096, 4096, 4096),
    ] {
        let (x, w, b) = (
            h(&[m, k], 1, DType::F16)?,
            h(&[n, k], 2, DType::F16)?,
            h(&[n], 3, DType::F16)?,
        );
        let mut y = Tensor::empty(&dev, &[m, n], DType::F16)?;
        let spec = Eltwise {
            bias: Some(&b),
            act: Activation::GeluErf,
            ..Default::default()
        };
        let g = ops::Gemm {
            bias: spec.bias,
            act: spec.act,
            ..Default::default()
        };
        let ms = time_ms(&gpu, iters, &mut || ops::gemm_into(&x, &w, &g, &mut y))?;
        let tf = 2.0 * (m * n * k) as f64 / ms / 1e9;
        outln!(
            "{:<44} {ms:>10.4} {tf:>8.1} TFLOP/s",
            format!("gemm f16 bias+gelu {m}x{n}x{k}")
        );
        let xi = HostTensor::from_f64(
            &[m, k],
            &sample(m * k, 4)
                .iter()
                .map(|v| (v * 8.0).round())
                .collect::<Vec<_>>(),
            DType::I8,
        )?
        .to_device(&dev)?;
        let wi = HostTensor::from_f64(
            &[n, k],
            &sample(n * k, 5)
                .iter()
                .map(|v| (v * 8.0).round())
                .collect::<Vec<_>>(),
            DType::I8,
        )?
        .to_device(&dev)?;
        let mut acc = Tensor::empty(&dev, &[m, n], DType::I32)?;
        let ms = time_ms(&gpu, iters, &mut || {
            ops::gemm_i8_raw_into(&xi, &wi, &mut acc, None)
        })?;
        let tops = 2.0 * (m * n * k) as f64 / ms / 1e9;
        outln!(
            "{:<44} {ms:>10.4} {tops:>8.1} TOPS",
            format!("gemm_i8 raw {m}x{n}x{k}")
        );
    }
    for (rows, n) in [(16384, 768), (4096, 3072)] {
        let (x, r, g) = (
            h(&[rows, n], 6, DType::F16)?,
            h(&[rows, n], 7, DType::F16)?,
            h(&[n], 8, DType::F16)?,
        );
        let bytes = |k: usize| (k * rows * n * 2) as f64;
        let ms = time_ms(&gpu, iters, &mut || {
            ops::layernorm(&x, Some(&r), &g, &g, 1e-12).map(|_| ())
        })?;
        outln!(
            "{:<44} {ms:>10.4} {:>8.0} GB/s",
            format!("layernorm+residual f16 {rows}x{n}"),
            bytes(3) / ms / 1e6
        );
        let ms = time_ms(&gpu, iters, &mut || {
            ops::softmax(&x, None, 0.125).map(|_| ())
        })?;
        outln!(
            "{:<44} {ms:>10.4} {:>8.0} GB/s",
            format!("softmax f16 {rows}x{n}"),
            bytes(2) / ms / 1e6
        );
        let e = Eltwise {
            bias: Some(&g),
            act: Activation::GeluErf,
            residual: Some(&r),
            ..Default::default()
        };
        let ms = time_ms(&gpu, iters, &mut || ops::eltwise(&x, &e).map(|_| ()))?;
        outln!(
            "{:<44} {ms:>10.4} {:>8.0} GB/s",
            format!("bias+gelu+residual f16 {rows}x{n}"),
            bytes(3) / ms / 1e6
        );
    }
    // Attention, fused vs unfused (UnfusedPlan built before the timing): BERT-base at batch 32
    // × seq 128 with ragged lengths (benches/attention.rs's), packed, reading the QKV
    // projection output in place; and one long sequence (FlashAttention's setting: 16 heads
    // of 128), no padding. TFLOP/s = 4·heads·head_dim·Σ q_len·k_len / time.
    let attn = |name: &str, qkv: Qkv, sb: &SeqBatch, out: &mut Tensor| -> medkern::Result<()> {
        let a = Attention::default();
        let (heads, d) = (out.shape()[1], out.shape()[2]);
        let flops = 4.0 * (heads * d * sb.pairs()) as f64;
        let ms = time_ms(&gpu, iters, &mut || ops::attention_into(qkv, sb, &a, out))?;
        outln!(
            "{:<44} {ms:>10.4} {:>8.1} TFLOP/s",
            format!("attention fused {name}"),
            flops / ms / 1e9
        );
        let plan = ops::UnfusedPlan::new(qkv, sb, &a)?;
        let ms = time_ms(&gpu, iters, &mut || plan.run_into(qkv, sb, &a, out))?;
        outln!(
            "{:<44} {ms:>10.4} {:>8.1} TFLOP/s",
            format!("attention unfused {name}"),
            flops / ms / 1e9
        );
        Ok(())
    };
    let sb = SeqBatch::packed(&dev, &cu_seqlens(&ragged_lens(32, 128)))?;
    let qkv = h(&[sb.q_tokens(), 3, 12, 64], 9, DType::F16)?;
    let mut out = Tensor::empty(&dev, &[sb.q_tokens(), 12, 64], DType::F16)?;
    attn("f16 b32h12d64s128 ragged", Qkv::Packed(&qkv), &sb, &mut out)?;
    let (seq, heads, d) = (2048, 16, 128);
    let sb = SeqBatch::packed(&dev, &[0, seq])?;
    let (q, k, v) = (
        h(&[seq, heads, d], 10, DType::F16)?,
        h(&[seq, heads, d], 11, DType::F16)?,
        h(&[seq, heads, d], 12, DType::F16)?,
    );
    let mut out = Tensor::empty(&dev, &[seq, heads, d], DType::F16)?;
    let qkv = Qkv::Separate {
        q: &q,
        k: &k,
        v: &v,
    };
    attn(&format!("f16 b1h{heads}d{d}s{seq}"), qkv, &sb, &mut out)?;
    // conv2d, NHWC f16, folded-BN scale/bias + ReLU fused (benches/conv.rs ids): ResNet-18's
    // layer1 3x3 conv at batch 32 with the block's residual, and its stem (3 channels, 7x7 s2).
    // TFLOP/s = 2·N·OH·OW·OC·KH·KW·C / time; GB/s counts input + weight + output (+ residual).
    for (name, [n, hw, c], oc, k, s, residual) in [
        ("3x3s1_64-64_56 +res", [32, 56, 64], 64, 3, 1, true),
        ("7x7s2_3-64_224", [32, 224, 3], 64, 7, 2, false),
    ] {
        let x = h(&[n, hw, hw, c], 13, DType::F16)?;
        let w = HostTensor::from_f64(
            &[oc, k, k, c],
            &sample(oc * k * k * c, 14)
                .iter()
                .map(|v| v * (2.0 / (k * k * c) as f64).sqrt())
                .collect::<Vec<_>>(),
            DType::F16,
        )?;
        let w = ConvWeight::new(&w, 1, &dev)?;
        let (scale, bias) = (h(&[oc], 15, DType::F32)?, h(&[oc], 16, DType::F32)?);
        let o = (hw + 2 * (k / 2) - k) / s + 1;
        let r = h(&[n, o, o, oc], 17, DType::F16)?;
        let mut y = Tensor::empty(&dev, &[n, o, o, oc], DType::F16)?;
        let spec = Conv2d {
            stride: (s, s),
            padding: Padding::symmetric(k / 2, k / 2),
            scale: Some(&scale),
            bias: Some(&bias),
            residual: residual.then_some(&r),
            act: Activation::Relu,
            ..Default::default()
        };
        let ms = time_ms(&gpu, iters, &mut || ops::conv2d_into(&x, &w, &spec, &mut y))?;
        let flops = 2.0 * (n * o * o * oc * k * k * c) as f64;
        let out = n * o * o * oc * if residual { 2 } else { 1 };
        let bytes = (2 * (n * hw * hw * c + oc * k * k * c + out)) as f64;
        outln!(
            "{:<44} {ms:>10.4} {:>8.1} TFLOP/s {:>6.0} GB/s",
            format!("conv f16 resnet18 {name} b{n}"),
            flops / ms / 1e9,
            bytes / ms / 1e6
        );
    }
    // Whole forwards (random weights, f16, batch 32 of 224x224): GPU time, host time to
    // enqueue, kernels launched.
    let cfg = ResNetConfig::resnet18(1000);
    let r18 = ResNet::from_safetensors(
        &random_resnet(&cfg, 11).to_safetensors()?,
        cfg,
        &dev,
        DType::F16,
    )?;
    let x = h(&[32, 224, 224, 3], 18, DType::F16)?;
    let t = time_calls(&gpu, iters, &mut || r18.forward(&x).map(|_| ()))?;
    outln!(
        "{:<44} {:>10.4} {:>5} launches, host {:.3} ms",
        "forward resnet18 f16 b32",
        t.device_ms.unwrap_or(f64::NAN),
        t.launches,
        t.host_ms
    );
    outln!(
        "(GPU time between CUDA events, median; criterion benches and gpu-bundle/run give the peer ratios)"
    );
    Ok(())
}

/// `medkern embed` arguments.
#[derive(clap::Args)]
struct EmbedArgs {
    /// The model folder, e.g. .models/all-MiniLM-L6-v2 (installed by scripts/setup-models), or
    /// a MobileBERT folder (config.json `"model_type": "mobilebert"`); or a hub id (org/name)
    /// already in the local Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub or
    /// ~/.cache/huggingface/hub; nothing is downloaded).
    #[arg(long)]
    model: PathBuf,
    /// The hub id's revision: a branch or tag in the cache's refs/, or a commit hash; default
    /// main.
    #[arg(long)]
    revision: Option<String>,
    /// Where to run it; default: the first GPU if there is one, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Mean or max over the tokens, or the [CLS] token; default: the folder's
    /// sentence-transformers Pooling module (modules.json), else mean.
    #[arg(long, value_enum)]
    pooling: Option<PoolingArg>,
    /// Compute dtype; default: f16 on a GPU, f32 on the CPU.
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
    /// Tokens kept per text, [CLS] and [SEP] included; default: the model's
    /// max_position_embeddings.
    #[arg(long)]
    max_len: Option<usize>,
    /// Scale each embedding to unit length (sentence-transformers' Normalize module);
    /// `--normalize=false` or `--no-normalize` turns it off. Default: on when the folder's
    /// modules.json has a Normalize module, else off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    normalize: Option<bool>,
    /// Do not scale to unit length, even when the folder has a Normalize module.
    #[arg(long, conflicts_with = "normalize")]
    no_normalize: bool,
    /// Also run the checkpoint's sequence-classification head: adds "logits",
    /// "probabilities" and "label" to each object.
    #[arg(long)]
    classify: bool,
    /// The texts to embed.
    #[arg(required = true)]
    texts: Vec<String>,
}

/// One output object of `medkern embed`.
#[derive(serde::Serialize)]
struct Embedding<'a> {
    text: &'a str,
    tokens: usize,
    embedding: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

fn embed(a: EmbedArgs) -> medkern::Result<()> {
    let dev = cnn::device_of(a.device)?;
    let dtype = cnn::dtype_of(a.dtype, &dev);
    let pooling = a.pooling.map(|p| match p {
        PoolingArg::Mean => Pooling::Mean,
        PoolingArg::Cls => Pooling::Cls,
        PoolingArg::Max => Pooling::Max,
    });
    let normalize = if a.no_normalize {
        Some(false)
    } else {
        a.normalize
    };
    // The count first: too many texts fail before the model is loaded.
    let max_batch = cnn::input_limits().max_batch;
    medkern::input::check_batch("embed", "texts", a.texts.len(), max_batch)?;
    let enc = TextEncoder::load_revision(
        &a.model,
        a.revision.as_deref(),
        &dev,
        dtype,
        &EncoderOptions {
            pooling,
            normalize,
            max_len: a.max_len,
            max_batch,
        },
    )?;
    let texts: Vec<&str> = a.texts.iter().map(String::as_str).collect();
    let ids = enc.encode(&texts)?;
    let embs = enc.embed_ids(&ids)?;
    let logits = if a.classify {
        Some(enc.classify_ids(&ids)?)
    } else {
        None
    };
    let labels = enc.model.labels();
    let rows: Vec<String> = texts
        .iter()
        .zip(&ids)
        .zip(embs)
        .enumerate()
        .map(|(i, ((text, ids), embedding))| {
            let lg = logits.as_ref().map(|l| l[i].clone());
            let probabilities = lg.as_ref().map(|l| cnn::softmax(l));
            let label = probabilities.as_ref().and_then(|p| {
                let best = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(j, _)| j)?;
                labels.get(best).cloned()
            });
            serde_json::to_string(&Embedding {
                text,
                tokens: ids.len(),
                embedding,
                logits: lg,
                probabilities,
                label,
            })
            .map_err(|e| cnn::cli_err("output", e.to_string()))
        })
        .collect::<medkern::Result<_>>()?;
    outln!("[\n{}\n]", rows.join(",\n"));
    eprintln!(
        "medkern embed: {} text(s), {} tokens, {} {dtype} on {}",
        texts.len(),
        ids.iter().map(Vec::len).sum::<usize>(),
        enc.dir().display(),
        dev.describe()
    );
    Ok(())
}

/// `medkern serve` arguments.
#[cfg(feature = "server")]
#[derive(clap::Args)]
struct ServeArgs {
    /// A text model folder to serve, as NAME=DIR or DIR (the name is then the folder's name);
    /// repeatable. The first is the default of requests that name no model.
    #[arg(long = "model", required_unless_present = "image_models")]
    models: Vec<String>,
    /// An image model, as KIND or KIND=WEIGHTS: sepsis, cxr or lite0 for POST /classify, exam
    /// (chest X-ray + EMR) for POST /exam. The name is KIND; without weights, deterministic
    /// random ones. Repeatable; the first of each route is its default.
    #[arg(long = "image-model", value_name = "KIND[=WEIGHTS]")]
    image_models: Vec<String>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port; 0 picks any free one (printed on start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Where to run the models; default: the first GPU if there is one, else the CPU.
    #[arg(long, value_enum, conflicts_with = "devices")]
    device: Option<DeviceArg>,
    /// A model thread per device, each with its own copy of every model, all sharing each
    /// model's queue: GPU numbers (`0,1`), `all` (every GPU), `cpu` or `emu` (the emulated
    /// GPU, for tests), comma-separated.
    #[arg(long, value_name = "LIST")]
    devices: Option<String>,
    /// Compute dtype; default: f16 on a GPU, f32 on the CPU.
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
    /// The most tokens in one model call; a request with more is refused (413).
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// The most requests in one model call (1 turns batching off).
    #[arg(long, default_value_t = 64)]
    max_batch_requests: usize,
    /// How long a batch waits for more requests after its first, microseconds.
    #[arg(long, default_value_t = 2000)]
    max_wait_us: u64,
    /// Requests queued per model before new ones are refused (429).
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
    /// The largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 2 << 20)]
    max_request_bytes: usize,
    /// The largest /classify upload or /exam body in bytes (413 beyond).
    #[arg(long, default_value_t = 64 << 20)]
    max_image_bytes: usize,
    /// Image requests (/classify, /exam) read, decoded, queued or running at once; more are
    /// refused (429) before their body is read.
    #[arg(long, default_value_t = 16)]
    max_image_queue: usize,
    /// The most images in one classifier call (1 turns image batching off); they gather
    /// within --max-wait-us like texts.
    #[arg(long, default_value_t = 8)]
    max_image_batch: usize,
    /// How long one request may take, milliseconds; past it the answer is a 503 timeout.
    #[arg(long, default_value_t = 60000)]
    request_timeout_ms: u64,
}

/// Loads each `--model` and serves them until SIGTERM / ctrl-c.
#[cfg(feature = "server")]
fn serve(a: ServeArgs) -> medkern::Result<()> {
    use std::io::Write;
    let devices = match &a.devices {
        Some(list) => serve_devices(list)?,
        None => vec![cnn::device_of(a.device)?],
    };
    let max_batch = cnn::input_limits().max_batch;
    let mut models = Vec::with_capacity(a.models.len());
    for spec in &a.models {
        let (name, dir) = match spec.split_once('=') {
            Some((n, d)) => (n.to_string(), PathBuf::from(d)),
            None => {
                let dir = PathBuf::from(spec);
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| spec.clone());
                (name, dir)
            }
        };
        let mut replicas = Vec::with_capacity(devices.len());
        for dev in &devices {
            // Not normalised here: /embed's "normalize" decides per request.
            replicas.push(TextEncoder::load(
                &dir,
                dev,
                cnn::dtype_of(a.dtype, dev),
                &EncoderOptions {
                    pooling: None,
                    normalize: Some(false),
                    max_len: None,
                    max_batch,
                },
            )?);
        }
        models.push((name, replicas));
    }
    let mut images = Vec::with_capacity(a.image_models.len());
    for spec in &a.image_models {
        let (kind, weights) = match spec.split_once('=') {
            Some((k, w)) => (k, Some(PathBuf::from(w))),
            None => (spec.as_str(), None),
        };
        let mut replicas = Vec::with_capacity(devices.len());
        for dev in &devices {
            replicas.push(image_net(spec, kind, weights.as_deref(), dev, a.dtype)?);
        }
        images.push((kind.to_string(), replicas));
    }
    let described: Vec<String> = devices.iter().map(Device::describe).collect();
    let device = described.join("; ");
    let config = medkern::server::ServeConfig {
        host: a.host,
        port: a.port,
        max_batch_tokens: a.max_batch_tokens,
        max_batch_requests: a.max_batch_requests,
        max_wait: std::time::Duration::from_micros(a.max_wait_us),
        max_queue: a.max_queue,
        max_request_bytes: a.max_request_bytes,
        max_inputs: max_batch,
        max_image_bytes: a.max_image_bytes,
        max_image_queue: a.max_image_queue,
        max_image_batch: a.max_image_batch,
        input_limits: cnn::input_limits(),
        request_timeout: std::time::Duration::from_millis(a.request_timeout_ms),
    };
    let mut listen_err = None;
    medkern::server::serve(models, images, device, config, |addr| {
        let mut out = std::io::stdout().lock();
        let line = format!("medkern serve: listening on http://{addr}");
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            listen_err = Some(e);
        }
    })?;
    if let Some(e) = listen_err {
        eprintln!("medkern serve: could not print the address: {e}");
    }
    eprintln!("medkern serve: drained, exiting");
    Ok(())
}

/// `--devices`: `cpu`, `emu`, GPU ordinals, or `all` (every GPU), comma-separated.
#[cfg(feature = "server")]
fn serve_devices(list: &str) -> medkern::Result<Vec<Device>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        match item {
            "cpu" => out.push(Device::Cpu),
            "emu" => out.push(Device::emulated()?),
            "all" => {
                let n = medkern::device::gpu_count()?;
                if n == 0 {
                    return Err(cnn::cli_err(
                        "devices",
                        "all: no GPU found; expected at least one (or name cpu)".into(),
                    ));
                }
                for i in 0..n {
                    out.push(Device::gpu(i)?);
                }
            }
            n => match n.parse::<usize>() {
                Ok(i) => out.push(Device::gpu(i)?),
                Err(_) => {
                    return Err(cnn::cli_err(
                        "devices",
                        format!("{item:?} in {list:?}; expected cpu, emu, a GPU number or all"),
                    ));
                }
            },
        }
    }
    if out.is_empty() || out.len() > 64 {
        return Err(cnn::cli_err(
            "devices",
            format!("{list:?}: {} devices; expected 1 to 64", out.len()),
        ));
    }
    Ok(out)
}

/// One image model of `serve --image-model KIND[=WEIGHTS]` on `dev`.
#[cfg(feature = "server")]
fn image_net(
    spec: &str,
    kind: &str,
    weights: Option<&std::path::Path>,
    dev: &Device,
    dtype: Option<DTypeArg>,
) -> medkern::Result<medkern::server::images::ImageNet> {
    use medkern::model::classify::{ImageClassifier, ImageModel};
    use medkern::model::exam::{ExamConfig, ExamModel};
    use medkern::server::images::ImageNet;
    let dtype = cnn::dtype_of(dtype, dev);
    if kind == "exam" {
        let model = match weights {
            Some(p) => ExamModel::load(p, dev, dtype)?,
            None => ExamModel::random(&ExamConfig::default(), cnn::RANDOM_SEED, dev, dtype)?,
        };
        return Ok(ImageNet::Exam {
            model: Box::new(model),
            dtype,
            random_weights: weights.is_none(),
        });
    }
    let kind = ImageModel::parse(kind).map_err(|e| {
        cnn::cli_err(
            "image-model",
            format!("{spec:?}: {e}; or \"exam\" for the EXAM chest X-ray + EMR model"),
        )
    })?;
    Ok(ImageNet::Classifier(ImageClassifier::load(
        kind, weights, dev, dtype,
    )?))
}

/// `medkern compress` arguments.
#[derive(clap::Args)]
struct CompressArgs {
    /// The dense model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Where to write the compressed folder.
    #[arg(long)]
    out: PathBuf,
    /// Heads to keep, per layer: "0:0,1,2;3:4,5" (unlisted layers keep all).
    #[arg(long, conflicts_with = "prune_heads")]
    heads: Option<String>,
    /// Remove this many of the least important heads model-wide (importance by ablation on
    /// the sample sentences; layers end uneven).
    #[arg(long)]
    prune_heads: Option<usize>,
    /// Layers to keep: "every-other" (LayerDrop-style) or a list "0,2,4".
    #[arg(long)]
    layers: Option<String>,
    /// 2:4 magnitude pruning of every encoder Linear.
    #[arg(long)]
    sparse24: bool,
    /// Q8BERT int8 W8A8 (per-channel weights, per-token activations).
    #[arg(long)]
    int8: bool,
    /// Truncated-SVD low rank of every encoder Linear: a rank ("64") or a kept-energy
    /// fraction ("0.9").
    #[arg(long)]
    low_rank: Option<String>,
    /// Q-BERT-style weight bits per encoder Linear: "4" (all int4 W4A16, group-wise f16
    /// scales), "8" (all int8 W8A8), or "auto": each Linear's sensitivity to 4 bits is
    /// measured on the sample sentences and the least sensitive go to 4 bits until the file
    /// fits --budget.
    #[arg(long, conflicts_with_all = ["int8", "sparse24", "low_rank"])]
    bits: Option<String>,
    /// The size `--bits auto` must meet: tensor bytes of the file ("12MB", "11.5MiB") or a
    /// ratio to the dense model ("6x").
    #[arg(long, requires = "bits")]
    budget: Option<String>,
    /// Store the word embeddings in int8 (one scale per row) or f16.
    #[arg(long, value_parser = ["int8", "f16"])]
    embeddings: Option<String>,
    /// Sample sentences, one per line (head importance, quality report); default: 8
    /// built-in clinical sentences.
    #[arg(long)]
    sentences: Option<PathBuf>,
    /// Where to run importance and the report; default: the first GPU, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Compute dtype; default: f16 on a GPU, f32 on the CPU.
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
}

fn cli_invalid(arg: &'static str, detail: String) -> medkern::Error {
    medkern::Error::Invalid {
        op: "compress",
        arg,
        detail,
    }
}

/// "0:0,1,2;3:4,5" → {0: [0, 1, 2], 3: [4, 5]}.
fn parse_heads(s: &str) -> medkern::Result<std::collections::BTreeMap<usize, Vec<usize>>> {
    let bad = || {
        cli_invalid(
            "--heads",
            format!("{s:?}; expected LAYER:HEAD,HEAD,...;LAYER:... e.g. \"0:0,1,2;3:4,5\""),
        )
    };
    s.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (l, hs) = part.split_once(':').ok_or_else(bad)?;
            let l = l.trim().parse().map_err(|_| bad())?;
            let hs = hs
                .split(',')
                .map(|h| h.trim().parse().map_err(|_| bad()))
                .collect::<medkern::Result<Vec<usize>>>()?;
            Ok((l, hs))
        })
        .collect()
}

fn compress(a: CompressArgs) -> medkern::Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    use medkern::model::compress::{self, Bits, CompressOptions, KeepLayers, Progress, Rank};
    // Before any work: the output must not overwrite (or contain) the model.
    compress::check_out_dir(&a.out, &a.model)?;
    compress::check_sentence_modules(&a.model)?;
    let dev = cnn::device_of(a.device)?;
    let dtype = cnn::dtype_of(a.dtype, &dev);
    let sentences: Vec<String> = match &a.sentences {
        Some(p) => String::from_utf8(medkern::input::read_regular(
            "compress",
            p,
            "sample sentences, one per line",
        )?)
        .map_err(|e| {
            cli_invalid(
                "--sentences",
                format!("{}: not UTF-8 text: {e}", p.display()),
            )
        })?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect(),
        None => Vec::new(),
    };
    if a.sentences.is_some() && sentences.is_empty() {
        return Err(cli_invalid(
            "--sentences",
            "no sentences in the file".into(),
        ));
    }
    let low_rank = match &a.low_rank {
        None => None,
        Some(s) => Some(match (s.parse::<usize>(), s.parse::<f64>()) {
            (Ok(r), _) if r > 0 => Rank::Fixed(r),
            (_, Ok(e)) if e > 0.0 && e <= 1.0 => Rank::Energy(e),
            _ => {
                return Err(cli_invalid(
                    "--low-rank",
                    format!("{s:?}; expected a rank (e.g. 64) or an energy fraction in (0, 1]"),
                ));
            }
        }),
    };
    let bits = match (a.bits.as_deref(), a.budget.as_deref()) {
        (None, None) => None,
        (Some("4"), None) => Some(Bits::Four),
        (Some("8"), None) => Some(Bits::Eight),
        (Some("auto"), Some(b)) => Some(Bits::Auto(compress::Budget::parse(b)?)),
        (Some("auto"), None) => {
            return Err(cli_invalid(
                "--budget",
                "--bits auto needs a --budget (e.g. 12MB or 6x)".into(),
            ));
        }
        (Some("4" | "8"), Some(_)) | (None, Some(_)) => {
            return Err(cli_invalid(
                "--budget",
                "a budget applies to --bits auto only".into(),
            ));
        }
        (Some(other), _) => {
            return Err(cli_invalid(
                "--bits",
                format!("{other:?}; expected 4, 8 or auto"),
            ));
        }
    };
    let layers = match a.layers.as_deref() {
        None => None,
        Some("every-other") => Some(KeepLayers::EveryOther),
        Some(l) => Some(KeepLayers::List(
            l.split(',')
                .map(|x| {
                    x.trim().parse().map_err(|_| {
                        cli_invalid(
                            "--layers",
                            format!("{l:?}; expected every-other or a list like 0,2,4"),
                        )
                    })
                })
                .collect::<medkern::Result<_>>()?,
        )),
    };
    let opts = CompressOptions {
        heads: a.heads.as_deref().map(parse_heads).transpose()?,
        prune_heads: a.prune_heads,
        layers,
        sparse24: a.sparse24,
        int8: a.int8,
        low_rank,
        embeddings: a
            .embeddings
            .as_deref()
            .map(|e| if e == "int8" { DType::I8 } else { DType::F16 }),
        bits,
        sentences,
        max_batch: cnn::input_limits().max_batch,
    };
    let bar = ProgressBar::new(opts.steps()).with_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| cli_invalid("progress", e.to_string()))?
            .progress_chars("=> "),
    );
    let report =
        compress::compress_folder(&a.model, &a.out, &opts, &dev, dtype, &mut |p| match p {
            Progress::Step(m) => bar.set_message(m.to_owned()),
            Progress::Done => bar.inc(1),
        })?;
    bar.finish_and_clear();
    cnn::print_json(&report)?;
    let num = |k: &str, f: &str| report[k][f].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "medkern compress: {} -> {}: {:.2} MB -> {:.2} MB, embedding cosine min {:.5}, {:.2} ms -> {:.2} ms ({})",
        a.model.display(),
        a.out.display(),
        num("dense", "bytes") / 1e6,
        num("compressed", "bytes") / 1e6,
        num("compressed", "cosine_min"),
        num("dense", "ms"),
        num("compressed", "ms"),
        dev.describe()
    );
    Ok(())
}

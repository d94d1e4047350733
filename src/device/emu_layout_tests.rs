//! The emulator's tensor-core register layouts (emu/runtime.cpp, written from the PTX ISA)
//! checked against a second, independent reading of the hardware: NVIDIA CUTLASS CuTe's MMA
//! and ldmatrix traits. A layout misread the same way in runtime.cpp and in the kernels would
//! pass every GEMM test on the emulator and still be wrong on a GPU; CuTe's layouts are used
//! on real SM80+ hardware every day.
//!
//! Transcribed (layout data only: shape and stride, in CuTe's `shape:stride` print notation)
//! from github.com/NVIDIA/cutlass at commit 7107b05535f8977f5ecb9d01ee203205b1fd9bc4:
//! - include/cute/atom/mma_traits_sm80.hpp: `SM80_16x8_Row`,
//!   `MMA_Traits<SM80_16x8x16_F16F16F16F16_TN>` (whose layouts
//!   `SM80_16x8x16_F32F16F16F32_TN` and `SM80_16x8x16_F32BF16BF16F32_TN` inherit) and
//!   `MMA_Traits<SM80_16x8x32_S32S8S8S32_TN>`;
//! - include/cute/atom/copy_traits_sm75.hpp: `Copy_Traits<SM75_U32x4_LDSM_N>` and
//!   `Copy_Traits<SM75_U16x8_LDSM_T>`.
//!
//! CuTe's conventions (media/docs/cpp/cute/01_layout.md, 0t_mma_atom.md): a layout maps a
//! coordinate to an index by the inner product with its strides, a 1-D coordinate being split
//! colexicographically over the (nested) shape. MMA layouts map (thread, value) to a
//! column-major index: A (M×K) `m + M·k`, B (N×K, the TN atoms) `n + N·k`, C (M×N) `m + M·n`;
//! value `v` of a thread sits in register `v / per_reg` at bit `(v % per_reg)·width`. The
//! ldmatrix layouts map (thread, value) to a bit of the 32×128-bit block copied: SrcLayout says
//! which bits a lane's row address supplies, DstLayout which bits land in its registers (bit
//! `b` of register `j` is value `32·j + b`).

use super::*;
use crate::{DType, DeviceTensor, HostTensor};

/// A CuTe integer tuple: an integer or a tuple of them, nested.
#[derive(Debug, Clone)]
enum Tuple {
    Int(usize),
    Tup(Vec<Tuple>),
}

impl Tuple {
    fn size(&self) -> usize {
        match self {
            Tuple::Int(n) => *n,
            Tuple::Tup(v) => v.iter().map(Tuple::size).product(),
        }
    }
}

/// A CuTe layout `shape:stride`.
#[derive(Debug, Clone)]
struct Layout {
    shape: Tuple,
    stride: Tuple,
}

impl Layout {
    /// Parses CuTe's print notation, e.g. `((4,8),(2,2)):((32,1),(16,8))`.
    fn parse(s: &str) -> Layout {
        let (shape, stride) = s.split_once(':').unwrap();
        let layout = Layout {
            shape: parse_tuple(shape),
            stride: parse_tuple(stride),
        };
        assert!(congruent(&layout.shape, &layout.stride), "{s}");
        layout
    }

    fn size(&self) -> usize {
        self.shape.size()
    }

    /// The index of 1-D coordinate `i` (colexicographic over the whole shape), as CuTe's
    /// `layout(i)` / `crd2idx(i, shape, stride)`.
    fn at(&self, i: usize) -> usize {
        assert!(i < self.size(), "coordinate {i} outside {self:?}");
        eval(&self.shape, &self.stride, i)
    }

    /// The index of (thread, value) in a rank-2 (thread, value) layout, as CuTe's
    /// `layout(t, v)`: each mode takes its own 1-D coordinate.
    fn tv(&self, t: usize, v: usize) -> usize {
        let (Tuple::Tup(sh), Tuple::Tup(st)) = (&self.shape, &self.stride) else {
            panic!("not a (thread, value) layout: {self:?}")
        };
        assert_eq!(sh.len(), 2, "{self:?}");
        assert!(
            t < sh[0].size() && v < sh[1].size(),
            "({t}, {v}) outside {self:?}"
        );
        eval(&sh[0], &st[0], t) + eval(&sh[1], &st[1], v)
    }

    fn threads(&self) -> usize {
        match &self.shape {
            Tuple::Tup(v) => v[0].size(),
            Tuple::Int(_) => 1,
        }
    }

    fn values(&self) -> usize {
        self.size() / self.threads()
    }
}

fn congruent(a: &Tuple, b: &Tuple) -> bool {
    match (a, b) {
        (Tuple::Int(_), Tuple::Int(_)) => true,
        (Tuple::Tup(x), Tuple::Tup(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| congruent(p, q))
        }
        _ => false,
    }
}

/// idx2crd then inner product: `i` is split colexicographically (first mode fastest).
fn eval(shape: &Tuple, stride: &Tuple, i: usize) -> usize {
    match (shape, stride) {
        (Tuple::Int(_), Tuple::Int(d)) => i * d,
        (Tuple::Tup(sh), Tuple::Tup(st)) => {
            let mut rest = i;
            let mut idx = 0;
            for (s, d) in sh.iter().zip(st) {
                let n = s.size();
                idx += eval(s, d, rest % n);
                rest /= n;
            }
            idx
        }
        _ => panic!("shape and stride are not congruent"),
    }
}

fn parse_tuple(s: &str) -> Tuple {
    let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut pos = 0;
    let t = parse_at(&s, &mut pos);
    assert_eq!(
        pos,
        s.len(),
        "trailing text in {:?}",
        String::from_utf8_lossy(&s)
    );
    t
}

fn parse_at(s: &[u8], pos: &mut usize) -> Tuple {
    if s[*pos] == b'(' {
        *pos += 1;
        let mut v = vec![parse_at(s, pos)];
        while s[*pos] == b',' {
            *pos += 1;
            v.push(parse_at(s, pos));
        }
        assert_eq!(s[*pos], b')');
        *pos += 1;
        Tuple::Tup(v)
    } else {
        let start = *pos;
        while *pos < s.len() && s[*pos].is_ascii_digit() {
            *pos += 1;
        }
        let digits = std::str::from_utf8(&s[start..*pos]).unwrap();
        Tuple::Int(digits.parse().unwrap())
    }
}

// ---- The transcribed CuTe layouts -------------------------------------------------------------

/// `SM80_16x8_Row`, the C layout of every SM80 16x8 atom: (T32,V4) -> (M16,N8).
const C_16X8: &str = "((4,8),(2,2)):((32,1),(16,8))";
/// `SM80_16x8x16_F16F16F16F16_TN` ALayout: (T32,V8) -> (M16,K16).
const A_16X8X16: &str = "((4,8),(2,2,2)):((32,1),(16,8,128))";
/// `SM80_16x8x16_F16F16F16F16_TN` BLayout: (T32,V4) -> (N8,K16).
const B_16X8X16: &str = "((4,8),(2,2)):((16,1),(8,64))";
/// `SM80_16x8x32_S32S8S8S32_TN` ALayout: (T32,V16) -> (M16,K32).
const A_16X8X32: &str = "((4,8),(4,2,2)):((64,1),(16,8,256))";
/// `SM80_16x8x32_S32S8S8S32_TN` BLayout: (T32,V8) -> (N8,K32).
const B_16X8X32: &str = "((4,8),(4,2)):((32,1),(8,128))";
/// `SM75_U32x4_LDSM_N` SrcLayout and `SM75_U16x8_LDSM_T` SrcLayout: (T32,V128) -> bit.
const LDSM_SRC_X4: &str = "(32,128):(128,1)";
/// `SM75_U32x4_LDSM_N` DstLayout: (T32,V128) -> bit.
const LDSM_N_DST: &str = "(32,(32,4)):(32,(1,1024))";
/// `SM75_U16x8_LDSM_T` DstLayout: (T32,V128) -> bit.
const LDSM_T_DST: &str = "((4,8),(16,2,4)):((256,16),(1,128,1024))";

#[test]
fn layout_evaluator_matches_cute_docs() {
    // media/docs/cpp/cute/01_layout.md: `(3,(2,3)):(3,(12,1))` as a 3x6 table, and
    // crd2idx(16, ...) == 17; `(2,(2,2)):(4,(2,1))` printed by print_layout.
    let l = Layout::parse("(3,(2,3)):(3,(12,1))");
    let table = [
        [0, 12, 1, 13, 2, 14],
        [3, 15, 4, 16, 5, 17],
        [6, 18, 7, 19, 8, 20],
    ];
    for (i, row) in table.iter().enumerate() {
        for (j, &want) in row.iter().enumerate() {
            assert_eq!(l.tv(i, j), want, "({i}, {j})");
            assert_eq!(l.at(i + 3 * j), want, "1-D {}", i + 3 * j);
        }
    }
    assert_eq!(l.at(16), 17);
    let l = Layout::parse("(2,(2,2)):(4,(2,1))");
    let table = [[0, 2, 1, 3], [4, 6, 5, 7]];
    for (i, row) in table.iter().enumerate() {
        for (j, &want) in row.iter().enumerate() {
            assert_eq!(l.tv(i, j), want, "({i}, {j})");
        }
    }
}

#[test]
fn transcribed_layouts_are_bijections() {
    // A typo in a transcription would most likely map two (thread, value) pairs to one
    // element; every layout here covers its matrix (or bit block) exactly once.
    for (s, size) in [
        (C_16X8, 16 * 8),
        (A_16X8X16, 16 * 16),
        (B_16X8X16, 8 * 16),
        (A_16X8X32, 16 * 32),
        (B_16X8X32, 8 * 32),
        (LDSM_SRC_X4, 32 * 128),
        (LDSM_N_DST, 32 * 128),
        (LDSM_T_DST, 32 * 128),
    ] {
        let l = Layout::parse(s);
        assert_eq!((l.size(), l.threads()), (size, 32), "{s}");
        let mut seen = vec![false; size];
        for i in 0..size {
            let x = l.at(i);
            assert!(x < size && !seen[x], "{s}: index {x} of coordinate {i}");
            seen[x] = true;
        }
    }
}

// ---- mma.sync ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Elem {
    F16,
    Bf16,
    S8,
}

impl Elem {
    fn bits(self) -> usize {
        match self {
            Elem::F16 | Elem::Bf16 => 16,
            Elem::S8 => 8,
        }
    }

    /// The element's bit pattern (`v` an integer exactly representable in the type).
    fn encode(self, v: i64) -> u32 {
        match self {
            Elem::F16 => u32::from(half::f16::from_f64(v as f64).to_bits()),
            Elem::Bf16 => u32::from(half::bf16::from_f64(v as f64).to_bits()),
            Elem::S8 => u32::from(i8::try_from(v).unwrap() as u8),
        }
    }
}

/// One CuTe MMA atom and the self-test kernel that runs the same instruction through
/// kernels/common/mma.cuh's `Mma<E>`.
struct Atom {
    kernel: &'static str,
    elem: Elem,
    m: usize,
    n: usize,
    k: usize,
    a: &'static str,
    b: &'static str,
    c: &'static str,
}

const ATOMS: [Atom; 3] = [
    // SM80_16x8x16_F32F16F16F32_TN: mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
    Atom {
        kernel: "mk_selftest_mma_f16",
        elem: Elem::F16,
        m: 16,
        n: 8,
        k: 16,
        a: A_16X8X16,
        b: B_16X8X16,
        c: C_16X8,
    },
    // SM80_16x8x16_F32BF16BF16F32_TN: ...m16n8k16.row.col.f32.bf16.bf16.f32
    Atom {
        kernel: "mk_selftest_mma_bf16",
        elem: Elem::Bf16,
        m: 16,
        n: 8,
        k: 16,
        a: A_16X8X16,
        b: B_16X8X16,
        c: C_16X8,
    },
    // SM80_16x8x32_S32S8S8S32_TN: ...m16n8k32.row.col.s32.s8.s8.s32
    Atom {
        kernel: "mk_selftest_mma_s8",
        elem: Elem::S8,
        m: 16,
        n: 8,
        k: 32,
        a: A_16X8X32,
        b: B_16X8X32,
        c: C_16X8,
    },
];

/// Distinct integers in -128..=127 for indices 0..256 (an odd multiplier permutes Z/256),
/// exact in f16, bf16 and s8; larger index sets wrap around.
fn small_int(i: usize, mul: usize, add: usize) -> i64 {
    ((i * mul + add) % 256) as i64 - 128
}

/// Places `value(m_or_n, k)` of an operand into 32 lanes' registers as CuTe's (thread, value)
/// layout says: `rows` is M (A) or N (B); the index is `row + rows·k`.
fn pack(
    layout: &Layout,
    rows: usize,
    elem: Elem,
    value: &dyn Fn(usize, usize) -> i64,
) -> Vec<[u32; 4]> {
    let per_reg = 32 / elem.bits();
    let mut regs = vec![[0u32; 4]; 32];
    for (t, r) in regs.iter_mut().enumerate() {
        for v in 0..layout.values() {
            let idx = layout.tv(t, v);
            let bits = elem.encode(value(idx % rows, idx / rows));
            r[v / per_reg] |= bits << ((v % per_reg) * elem.bits());
        }
    }
    regs
}

/// Runs `atom` once with A, B filled from `seed` and C given (`c_zero` false) or zero; returns
/// each mismatching D element as text.
fn mma_mismatches(gpu: &Arc<Gpu>, atom: &Atom, seed: usize, c_zero: bool) -> Vec<String> {
    let (la, lb, lc) = (
        Layout::parse(atom.a),
        Layout::parse(atom.b),
        Layout::parse(atom.c),
    );
    assert_eq!(la.size(), atom.m * atom.k);
    assert_eq!(lb.size(), atom.n * atom.k);
    assert_eq!((lc.size(), lc.values()), (atom.m * atom.n, 4));
    // Distinct values wherever the type has enough (all but the 512-element s8 A, where each
    // value appears twice); the seed changes the multipliers.
    let a = |m: usize, k: usize| small_int(m + atom.m * k, 167 + 2 * seed, 13 + seed);
    let b = |n: usize, k: usize| small_int(n + atom.n * k, 73 + 4 * seed, 5 + seed);
    let c = |m: usize, n: usize| {
        if c_zero {
            0
        } else {
            ((m * 131 + n * 29 + seed * 7) % 2001) as i64 - 1000
        }
    };
    let ra = pack(&la, atom.m, atom.elem, &a);
    let rb = pack(&lb, atom.n, atom.elem, &b);
    let mut words = Vec::with_capacity(32 * 10);
    for t in 0..32 {
        words.extend_from_slice(&ra[t]);
        words.extend_from_slice(&rb[t][..2]);
        for v in 0..4 {
            let idx = lc.tv(t, v);
            let cv = c(idx % atom.m, idx / atom.m);
            words.push(match atom.elem {
                Elem::S8 => cv as i32 as u32,
                Elem::F16 | Elem::Bf16 => (cv as f32).to_bits(),
            });
        }
    }
    let got = run_words(gpu, atom.kernel, &words, None, 0);
    let mut bad = Vec::new();
    for t in 0..32 {
        for v in 0..4 {
            let idx = lc.tv(t, v);
            let (m, n) = (idx % atom.m, idx / atom.m);
            // Integers far below 2^24: exact in f32 and in the s32 accumulator.
            let want: i64 = (0..atom.k).map(|k| a(m, k) * b(n, k)).sum::<i64>() + c(m, n);
            let word = got[4 * t + v];
            let got_v = match atom.elem {
                Elem::S8 => f64::from(word as i32),
                Elem::F16 | Elem::Bf16 => f64::from(f32::from_bits(word)),
            };
            if got_v != want as f64 {
                bad.push(format!(
                    "{} (fill {seed}): thread {t} d{v} holds {got_v}; CuTe's CLayout maps it to \
                     (m {m}, n {n}), where A·Bᵀ + C = {want}",
                    atom.kernel
                ));
            }
        }
    }
    bad
}

/// Launches a self-test kernel on one warp: `(in, out)` for the mma probes, or with `offs`
/// (`Some`) `(image, words, offs, out)` for the ldmatrix probes with `smem` bytes of dynamic
/// shared memory. Returns the 32 × 4 output words. The self-test kernels are not in the kernel
/// table, so this goes through `emu::launch`, not `Gpu::launcher`.
fn run_words(
    gpu: &Arc<Gpu>,
    kernel: &'static str,
    input: &[u32],
    offs: Option<&[i32]>,
    smem: u32,
) -> Vec<u32> {
    let as_i32: Vec<i32> = input.iter().map(|&w| w as i32).collect();
    let input_t =
        DeviceTensor::upload(gpu, &HostTensor::new(&[as_i32.len()], as_i32).unwrap()).unwrap();
    let out = DeviceTensor::alloc(gpu, &[32 * 4], DType::I32).unwrap();
    let (mut in_addr, mut out_addr) = (input_t.addr(), out.addr());
    let mut words = input.len() as i32;
    let offs_t = offs.map(|o| {
        DeviceTensor::upload(gpu, &HostTensor::new(&[o.len()], o.to_vec()).unwrap()).unwrap()
    });
    let mut offs_addr = offs_t.as_ref().map_or(0, DeviceTensor::addr);
    let ptr = |p: &mut u64| (p as *mut u64).cast::<std::ffi::c_void>();
    let (mut params, sizes) = if offs.is_some() {
        let w = (&mut words as *mut i32).cast::<std::ffi::c_void>();
        let p = vec![
            ptr(&mut in_addr),
            w,
            ptr(&mut offs_addr),
            ptr(&mut out_addr),
        ];
        (p, vec![8, 4, 8, 8])
    } else {
        (vec![ptr(&mut in_addr), ptr(&mut out_addr)], vec![8, 8])
    };
    // SAFETY: the parameter lists match emu/selftest.cu's kernels; one warp reads input[0 ..
    // len) (10 words a lane, or `words` words and offs[0 .. 32)), writes out[0 .. 128), and
    // ldmatrix reads 16-byte rows at offsets inside the `smem` bytes; the emulator checks
    // every access.
    unsafe { emu::launch(kernel, (1, 1, 1), (32, 1, 1), smem, &mut params, &sizes, 7) }.unwrap();
    out.download()
        .unwrap()
        .as_slice::<i32>()
        .unwrap()
        .iter()
        .map(|&w| w as u32)
        .collect()
}

#[test]
fn mma_fragments_match_cute_sm80_atoms() {
    let gpu = Gpu::emulated().unwrap();
    let mut bad = Vec::new();
    for atom in &ATOMS {
        bad.extend(mma_mismatches(&gpu, atom, 0, true));
        bad.extend(mma_mismatches(&gpu, atom, 1, false));
    }
    assert!(
        bad.is_empty(),
        "{} D elements disagree with CuTe:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

// ---- ldmatrix ---------------------------------------------------------------------------------

/// Shared-memory slots (16 bytes each) of the probe image; the 32 source rows go to a
/// scattered subset, the rest hold other distinct values a wrong address would read.
const SLOTS: usize = 64;

/// Where CuTe source row `t` (bits 128t .. 128t+127) lives: slot `(37t + 5) mod 64`.
fn slot_of(t: usize) -> usize {
    (37 * t + 5) % SLOTS
}

/// The distinct 16-bit value at u16 index `i` of the image.
fn image_value(i: usize) -> u16 {
    ((i * 97 + 1234) % 65536) as u16
}

/// One ldmatrix.x4 probe: lane t passes source row t's address (SrcLayout), and every bit of
/// every lane's registers must hold the source bit DstLayout names.
fn ldmatrix_mismatches(gpu: &Arc<Gpu>, kernel: &'static str, dst: &str) -> Vec<String> {
    let (src, dst) = (Layout::parse(LDSM_SRC_X4), Layout::parse(dst));
    assert_eq!((src.threads(), src.values()), (32, 128));
    assert_eq!((dst.threads(), dst.values()), (32, 128));
    let halves: Vec<u16> = (0..SLOTS * 8).map(image_value).collect();
    let words: Vec<u32> = halves
        .chunks(2)
        .map(|p| u32::from(p[0]) | (u32::from(p[1]) << 16))
        .collect();
    // SrcLayout: each lane supplies 128 contiguous source bits, lane t the block at 128t.
    let mut offs = vec![0i32; 32];
    for (t, o) in offs.iter_mut().enumerate() {
        let first = src.tv(t, 0);
        assert!(first % 128 == 0 && (1..128).all(|b| src.tv(t, b) == first + b));
        *o = (16 * slot_of(first / 128)) as i32;
    }
    // The u16 at source bit x (a multiple of 16) in the scattered image.
    let source = |x: usize| halves[8 * slot_of(x / 128) + (x % 128) / 16];
    let got = run_words(gpu, kernel, &words, Some(&offs), (SLOTS * 16) as u32);
    let mut bad = Vec::new();
    for t in 0..32 {
        for j in 0..4 {
            for h in 0..2 {
                let v = 32 * j + 16 * h;
                let x = dst.tv(t, v);
                // Each 16-bit half is 16 contiguous source bits.
                assert!(x % 16 == 0 && (1..16).all(|b| dst.tv(t, v + b) == x + b));
                let want = source(x);
                let got_h = (got[4 * t + j] >> (16 * h)) as u16;
                if got_h != want {
                    bad.push(format!(
                        "{kernel}: thread {t} register {j} half {h} = {got_h:#06x}, CuTe DstLayout \
                         puts source row {} element {} there = {want:#06x}",
                        x / 128,
                        (x % 128) / 16
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn ldmatrix_x4_matches_cute_sm75_ldsm() {
    let gpu = Gpu::emulated().unwrap();
    let mut bad = ldmatrix_mismatches(&gpu, "mk_selftest_ldmatrix", LDSM_N_DST);
    bad.extend(ldmatrix_mismatches(
        &gpu,
        "mk_selftest_ldmatrix_trans",
        LDSM_T_DST,
    ));
    assert!(
        bad.is_empty(),
        "{} register halves disagree with CuTe:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

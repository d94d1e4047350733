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

// ---- Hopper: wgmma and TMA ----------------------------------------------------------------------
//
// Transcribed from the same CUTLASS commit (7107b05535f8977f5ecb9d01ee203205b1fd9bc4):
// - include/cute/arch/mma_sm90_desc.hpp: `GmmaDescriptor` (start address bits [0,14), leading
//   byte offset [16,30), stride byte offset [32,46), all in 16-byte units; base offset
//   [49,52); layout type [62,64)) and `LayoutType` (INTERLEAVE 0, B128 1, B64 2, B32 3);
// - include/cute/atom/mma_traits_sm90_gmma.hpp: `CLayout_64xN` and the K-major canonical
//   layouts of `make_gmma_desc`'s comment, in elements (T = 16 bytes of elements):
//     INTERLEAVE : Swizzle<0,4,3> o smem_ptr o ((8,m),(T,2)):((1T,SBO),(1,LBO))
//     B32        : Swizzle<1,4,3> o smem_ptr o ((8,m),(T,2)):((2T,SBO),(1, T ))
//     B64        : Swizzle<2,4,3> o smem_ptr o ((8,m),(T,2)):((4T,SBO),(1, T ))
//     B128       : Swizzle<3,4,3> o smem_ptr o ((8,m),(T,2)):((8T,SBO),(1, T ))
//   and `DescriptorIterator`, which advances along K by adding 16-byte units to the start
//   address (CUTLASS and DeepGEMM step a 128-byte swizzled row 32 bytes per k16 block);
// - include/cute/swizzle.hpp: `Swizzle<B,M,S>::apply(o) = o ^ ((o & (((1<<B)-1) << (M+S))) >> S)`
//   (on byte addresses: the smem_ptr);
// - include/cute/atom/copy_traits_sm90_tma_swizzle.hpp: `get_tma_swizzle_bits`, Swizzle<1,4,3>
//   ↔ CU_TENSOR_MAP_SWIZZLE_32B, <2,4,3> ↔ 64B, <3,4,3> ↔ 128B.

/// `CLayout_64xN` for N = 128: (T128, V64) -> (M64, N128), column-major index m + 64n.
const C_64X128: &str = "((4,8,4),(2,2,16)):((128,1,16),(64,8,512))";

/// CuTe's `Swizzle<B,M,S>::apply` on a byte offset.
fn cute_swizzle(b: u32, m: u32, s: u32, o: usize) -> usize {
    let yyy = ((1usize << b) - 1) << (m + s);
    o ^ ((o & yyy) >> s)
}

/// A K-major canonical GMMA layout (`LayoutType` code, swizzle bits B, row pitch in bytes).
#[derive(Clone, Copy, Debug)]
struct GmmaLayout {
    name: &'static str,
    code: u64,
    swizzle_bits: u32,
    row_bytes: usize,
}

const GMMA_LAYOUTS: [GmmaLayout; 4] = [
    GmmaLayout {
        name: "INTERLEAVE",
        code: 0,
        swizzle_bits: 0,
        row_bytes: 16,
    },
    GmmaLayout {
        name: "B32",
        code: 3,
        swizzle_bits: 1,
        row_bytes: 32,
    },
    GmmaLayout {
        name: "B64",
        code: 2,
        swizzle_bits: 2,
        row_bytes: 64,
    },
    GmmaLayout {
        name: "B128",
        code: 1,
        swizzle_bits: 3,
        row_bytes: 128,
    },
];

impl GmmaLayout {
    /// Byte offset (from a 1024-aligned region start) of f16 element (row r, k) of a K-major
    /// operand with `rows` rows and `k_total` K elements: CuTe's canonical layout
    /// ((8,m),(T,2k)) with T = 8, then the swizzle. The interleaved layout puts core matrices
    /// (8 rows x 16 bytes) LBO = 128 bytes apart along K and SBO = 128·(k_total/8) apart along
    /// rows; the swizzled ones have SBO = 8 rows of `row_bytes`.
    fn offset(self, r: usize, k: usize, k_total: usize) -> usize {
        let (r0, r1, k0, k1) = (r % 8, r / 8, k % 8, k / 8);
        let linear = if self.code == 0 {
            r0 * 16 + r1 * self.sbo(k_total) + 2 * k0 + k1 * 128
        } else {
            r0 * self.row_bytes + r1 * self.sbo(k_total) + 2 * k0 + k1 * 16
        };
        cute_swizzle(self.swizzle_bits, 4, 3, linear)
    }

    fn sbo(self, k_total: usize) -> usize {
        if self.code == 0 {
            128 * (k_total / 8)
        } else {
            8 * self.row_bytes
        }
    }

    /// The `GmmaDescriptor` of a region at byte `start` (relative to the probe's aligned base).
    fn desc(self, start: usize, k_total: usize) -> u64 {
        let lbo = if self.code == 0 { 128 >> 4 } else { 1 };
        (start as u64 >> 4)
            | (lbo << 16)
            | ((self.sbo(k_total) as u64 >> 4) << 32)
            | (self.code << 62)
    }
}

/// One wgmma probe: A 64 x `k_total`, B 128 x `k_total` (small integers, exact in f32) laid out
/// by `lay`; the descriptors start `kb` k16 blocks into the rows. Every accumulator register
/// of every thread must hold the D element CuTe's CLayout_64xN names, D = A[:, kb]·B[:, kb]ᵀ.
fn wgmma_mismatches(gpu: &Arc<Gpu>, lay: GmmaLayout, k_total: usize, kb: usize) -> Vec<String> {
    let c = Layout::parse(C_64X128);
    assert_eq!((c.threads(), c.values()), (128, 64));
    let a = |m: usize, k: usize| ((m * 7 + k * 3) % 9) as f64 - 4.0;
    let b = |n: usize, k: usize| ((n * 5 + k * 11) % 7) as f64 - 3.0;
    let b_start = 16384;
    let mut image = vec![0u16; (b_start + 16 * lay.sbo(k_total)) / 2];
    let mut put = |off: usize, v: f64| {
        assert_eq!(
            image[off / 2],
            0,
            "{}: two elements at byte {off}",
            lay.name
        );
        image[off / 2] = half::f16::from_f64(v).to_bits() | (0x8000 * u16::from(v == 0.0));
    };
    for m in 0..64 {
        for k in 0..k_total {
            put(lay.offset(m, k, k_total), a(m, k));
        }
    }
    for n in 0..128 {
        for k in 0..k_total {
            put(b_start + lay.offset(n, k, k_total), b(n, k));
        }
    }
    let words: Vec<i32> = image
        .chunks(2)
        .map(|p| (u32::from(p[0]) | u32::from(p[1]) << 16) as i32)
        .collect();
    // A k16 block further along K: 32 bytes on for the swizzled rows (the address walk CUTLASS
    // and DeepGEMM use), two core matrices (2·LBO) on for the interleaved layout.
    let step = if lay.code == 0 { 256 } else { 32 };
    let (da, db) = (
        lay.desc(kb * step, k_total),
        lay.desc(b_start + kb * step, k_total),
    );
    let input = DeviceTensor::upload(
        gpu,
        &HostTensor::new(&[words.len()], words.clone()).unwrap(),
    )
    .unwrap();
    let out = DeviceTensor::alloc(gpu, &[128 * 64], DType::F32).unwrap();
    let (mut pi, mut po) = (input.addr(), out.addr());
    let (mut nw, mut da, mut db) = (words.len() as i32, da, db);
    let p = |x: &mut u64| (x as *mut u64).cast::<std::ffi::c_void>();
    let mut params = vec![
        p(&mut pi),
        (&mut nw as *mut i32).cast(),
        p(&mut da),
        p(&mut db),
        p(&mut po),
    ];
    let smem = (1024 + 2 * words.len() * 2) as u32;
    // SAFETY: the list matches mk_selftest_wgmma; it reads input[0 .. words), writes
    // out[0 .. 128·64), and the emulator checks every shared access of the descriptors.
    unsafe {
        emu::launch(
            "mk_selftest_wgmma",
            (1, 1, 1),
            (128, 1, 1),
            smem,
            &mut params,
            &[8, 4, 8, 8, 8],
            11,
        )
    }
    .unwrap();
    let got = out.download().unwrap();
    let got = got.as_slice::<f32>().unwrap();
    let mut bad = Vec::new();
    for t in 0..128 {
        for v in 0..64 {
            let idx = c.tv(t, v);
            let (m, n) = (idx % 64, idx / 64);
            let want: f64 = (16 * kb..16 * kb + 16).map(|k| a(m, k) * b(n, k)).sum();
            if f64::from(got[64 * t + v]) != want && bad.len() < 8 {
                bad.push(format!(
                    "{} k{k_total} block {kb}: thread {t} value {v} = {}, CuTe CLayout_64xN puts \
                     D[{m}][{n}] = {want} there",
                    lay.name,
                    got[64 * t + v]
                ));
            }
        }
    }
    bad
}

#[test]
fn wgmma_matches_cute_sm90_gmma() {
    let gpu = Gpu::emulated().unwrap();
    let mut bad = Vec::new();
    for lay in GMMA_LAYOUTS {
        bad.extend(wgmma_mismatches(&gpu, lay, 16, 0));
    }
    // The swizzled rows hold 2 (B32) to 8 (B128) k16 blocks; the interleaved layout any number.
    for (lay, k_total) in [
        (GMMA_LAYOUTS[2], 32),
        (GMMA_LAYOUTS[3], 64),
        (GMMA_LAYOUTS[0], 64),
    ] {
        for kb in 1..k_total / 16 {
            bad.extend(wgmma_mismatches(&gpu, lay, k_total, kb));
        }
    }
    assert!(
        bad.is_empty(),
        "wgmma disagrees with CuTe:\n{}",
        bad.join("\n")
    );
}

/// One TMA probe: a 3-D u16 tensor of `dims` (values distinct, never 0), the box at `at`
/// loaded with `swizzle`; every byte of the box in shared memory must be where CuTe's
/// Swizzle<B,4,3> of its linear offset puts it, zeros for the elements outside the tensor.
fn tma_mismatches(
    gpu: &Arc<Gpu>,
    swizzle: super::tma::Swizzle,
    bits: u32,
    boxes: [u32; 3],
    at: [i32; 3],
    wait: bool,
) -> (Result<()>, Vec<String>) {
    let dims = [104usize, 37, 3];
    let value = |x: usize, y: usize, z: usize| (1 + x + 104 * y + 104 * 37 * z) as u16;
    let mut t16 = Vec::with_capacity(dims.iter().product());
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                t16.push(half::f16::from_bits(value(x, y, z)));
            }
        }
    }
    let tensor = DeviceTensor::upload(gpu, &HostTensor::new(&[t16.len()], t16).unwrap()).unwrap();
    let map = super::tma::TensorMap::tiled_3d(
        gpu,
        tensor.addr(),
        DType::F16,
        dims.map(|d| d as u64),
        [208, 208 * 37],
        boxes,
        swizzle,
    )
    .unwrap();
    let bytes = (boxes.iter().product::<u32>() * 2) as usize;
    let out = DeviceTensor::alloc(gpu, &[bytes / 4], DType::I32).unwrap();
    let mut po = out.addr();
    let (mut c0, mut c1, mut c2, mut nb, mut w) =
        (at[0], at[1], at[2], bytes as i32, i32::from(wait));
    let mut map_bytes = Vec::new();
    super::KernelParam::param_bytes(&map, &mut map_bytes);
    let q = |x: &mut i32| (x as *mut i32).cast::<std::ffi::c_void>();
    let mut params = vec![
        map_bytes.as_mut_ptr().cast(),
        q(&mut c0),
        q(&mut c1),
        q(&mut c2),
        q(&mut nb),
        q(&mut w),
        (&mut po as *mut u64).cast(),
    ];
    // SAFETY: the list matches mk_selftest_tma (a 128-byte map, five ints, a pointer); the
    // map covers `tensor` exactly, out holds `bytes` bytes, shared memory the box and the
    // mbarrier.
    let r = unsafe {
        emu::launch(
            "mk_selftest_tma",
            (1, 1, 1),
            (64, 1, 1),
            (1024 + bytes + 16) as u32,
            &mut params,
            &[128, 4, 4, 4, 4, 4, 8],
            13,
        )
    };
    if r.is_err() {
        return (r, Vec::new());
    }
    let got = out.download().unwrap();
    let got: Vec<u16> = got
        .as_slice::<i32>()
        .unwrap()
        .iter()
        .flat_map(|&w| [w as u32 as u16, (w as u32 >> 16) as u16])
        .collect();
    let mut bad = Vec::new();
    let mut i = 0;
    for z in 0..boxes[2] as i64 {
        for y in 0..boxes[1] as i64 {
            for x in 0..boxes[0] as i64 {
                let g = [at[0] as i64 + x, at[1] as i64 + y, at[2] as i64 + z];
                let inside = g.iter().zip(dims).all(|(&c, d)| c >= 0 && c < d as i64);
                let want = if inside {
                    value(g[0] as usize, g[1] as usize, g[2] as usize)
                } else {
                    0
                };
                let off = cute_swizzle(bits, 4, 3, 2 * i);
                if got[off / 2] != want && bad.len() < 8 {
                    bad.push(format!(
                        "{swizzle:?} box {boxes:?} at {at:?}: element ({x},{y},{z}) expected at \
                         byte {off} = {want}, found {}",
                        got[off / 2]
                    ));
                }
                i += 1;
            }
        }
    }
    (Ok(()), bad)
}

#[test]
fn tma_loads_match_cute_swizzles_and_fill_zeros() {
    use super::tma::Swizzle;
    let gpu = Gpu::emulated().unwrap();
    let mut bad = Vec::new();
    for (sw, bits, inner) in [
        (Swizzle::None, 0, 24),
        (Swizzle::B32, 1, 16),
        (Swizzle::B64, 2, 32),
        (Swizzle::B128, 3, 64),
    ] {
        // Inside, and across each edge (negative and past-the-end coordinates).
        for at in [[0, 0, 0], [-8, 33, 1], [90, -3, 2], [40, 5, -1]] {
            let (r, b) = tma_mismatches(&gpu, sw, bits, [inner, 8, 2], at, true);
            r.unwrap();
            bad.extend(b);
        }
    }
    assert!(
        bad.is_empty(),
        "TMA disagrees with CuTe:\n{}",
        bad.join("\n")
    );
    // A copy nobody waits for is an error, not a silent race with the next block.
    let (r, _) = tma_mismatches(&gpu, Swizzle::B128, 3, [64, 8, 1], [0, 0, 0], false);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("TMA copies in flight"), "{e}");
}

#[test]
fn tensor_maps_refuse_what_the_driver_refuses() {
    use super::tma::{Swizzle, TensorMap};
    let gpu = Gpu::emulated().unwrap();
    let ok = |base, dims, strides, boxes, sw| {
        TensorMap::tiled_3d(&gpu, base, DType::F16, dims, strides, boxes, sw).map(|_| ())
    };
    ok(4096, [64, 8, 1], [128, 1024], [64, 8, 1], Swizzle::B128).unwrap();
    for (what, r) in [
        (
            "base",
            ok(4104, [64, 8, 1], [128, 1024], [64, 8, 1], Swizzle::B128),
        ),
        (
            "strides",
            ok(4096, [64, 8, 1], [120, 1024], [64, 8, 1], Swizzle::B128),
        ),
        (
            "box",
            ok(4096, [64, 8, 1], [128, 1024], [128, 8, 1], Swizzle::B128),
        ),
        (
            "box",
            ok(4096, [64, 8, 1], [128, 1024], [64, 300, 1], Swizzle::None),
        ),
        (
            "box",
            ok(4096, [64, 8, 1], [128, 1024], [4, 8, 1], Swizzle::None),
        ),
        (
            "dims",
            ok(4096, [0, 8, 1], [128, 1024], [64, 8, 1], Swizzle::None),
        ),
    ] {
        let e = r.unwrap_err();
        assert!(
            matches!(e, crate::Error::Invalid { arg, .. } if arg == what),
            "{what}: {e}"
        );
    }
}

// The emulated GPU's runtime (see emu.h): device memory, the per-launch fiber scheduler, the
// warp collectives (shuffle, ldmatrix, mma.sync, mma.sp) written from the PTX ISA, cp.async
// with randomised landing, and the launch checks. Called from src/device/emu.rs.
#include "emu.h"

#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <algorithm>
#include <atomic>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

thread_local emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace mk_emu {
namespace {

constexpr size_t kStack = 96 * 1024;  // per CUDA thread (fiber), plus a guard page below

size_t page() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}
size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// ---------------------------------------------------------------------------------------------
// Device memory: each allocation is its own mapping, 256-byte aligned (the driver's alignment),
// placed so that its 256-rounded end abuts an inaccessible guard page; poisoned with 0xFF.

struct Alloc {
    char* map;
    size_t map_len;
    size_t size;
    // initcheck: one bit per byte, set when the host (upload, fill) or a kernel writes it.
    unsigned char* init;
};
std::mutex g_alloc_mu;
std::map<uintptr_t, Alloc> g_allocs;  // by user address

// True when [p, p + n) lies inside one live allocation.
bool in_alloc(const void* p, size_t n) {
    std::lock_guard<std::mutex> lk(g_alloc_mu);
    const uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second.size;
}

// ---------------------------------------------------------------------------------------------
// Fibers: a context switch saves the callee-saved registers and the FP control words.

#if defined(__x86_64__)
extern "C" void mk_emu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.p2align 4
.type mk_emu_switch,@function
mk_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size mk_emu_switch, .-mk_emu_switch
)");
#else
#error "the emulated GPU's fibers are written for x86-64"
#endif

enum class St { Run, Bar, Warp, MBar, WG, Done };

struct Fiber {
    void* sp = nullptr;
    St st = St::Run;
    unsigned gen = 0;  // barrier or warp generation waited on
    emu_dim3 tid{};
    // Synchronisation counts for racecheck: block barriers passed and warp collectives passed
    // (__syncwarp, shuffles, ldmatrix, mma). Two shared accesses of different threads are
    // ordered only when a barrier, or for lanes of one warp a warp collective, lies between.
    unsigned bar = 0, wsync = 0;
    // cp.async: copies issued and not yet landed, by commit group (the back one is open).
    struct Copy {
        void* dst;
        const void* src;
        bool fill;
        bool landed;  // the data is in shared memory (the shadow still counts it in flight until retired)
    };
    std::deque<std::vector<Copy>> groups;
    // Hopper: the mbarrier this thread waits on (St::MBar).
    uintptr_t mbar = 0;
};

// Warp collective slots, double-buffered by generation parity (a lane can be at most one
// collective ahead of the slowest lane of its warp).
struct WarpSlot {
    unsigned in[12];
    unsigned out[8];
    const void* ptr;
};
struct Warp {
    unsigned arrived = 0;
    unsigned gen = 0;
    unsigned lanes = 32;
    int op = -1;
    WarpSlot slot[2][32];
};

using Compute = void (*)(Warp&, unsigned par);

// The shadow record of one byte of shared memory for racecheck and initcheck: its last writer
// and last reader (thread, barrier count, warp-collective count), in the block `stamp`.
enum : uint8_t { kWritten = 1, kInflight = 2, kRead = 4, kRMulti = 8, kRMultiWarp = 16 };
struct Sh {
    uint32_t stamp;
    uint16_t wt, rt;
    uint32_t wbar, wwarp, rbar, rwarp;
    uint8_t flags;
};
// Checks on by default (MEDKERN_EMU_CHECKS): exact allocation ends, initcheck, racecheck.
enum : unsigned { kMemcheck = 1, kInitcheck = 2, kRacecheck = 4 };

struct Launch {
    const Entry* entry = nullptr;
    void** args = nullptr;
    unsigned nthreads = 0;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    unsigned cur = 0;
    void* sched_sp = nullptr;
    unsigned bar_arrived = 0, bar_gen = 0, live = 0;
    char* smem = nullptr;
    size_t smem_bytes = 0;
    char* stacks = nullptr;
    size_t stacks_len = 0;
    std::mt19937_64 rng;
    std::string error;
    bool failed = false;
    // Shadow memory (see "Shadow memory" below): which checks run, one record per byte of
    // dynamic shared memory and of each static shared array, and the allocations recently hit.
    unsigned checks = 0;
    uint32_t stamp = 0;  // the running block's number, low 32 bits (records of older blocks are stale)
    Sh* dyn_shadow = nullptr;
    struct StaticArr {
        uintptr_t lo;
        size_t n;
        std::vector<Sh> sh;
    };
    std::deque<StaticArr> statics;
    struct GRange {
        uintptr_t lo = 0, end = 0, slack = 0;  // [lo, end) the allocation, [end, slack) its 256-byte rounding
        unsigned char* init = nullptr;
    };
    GRange gcache[4];
    unsigned gnext = 0;
    // Hopper (per block): mbarriers by address, TMA copies in flight, warpgroup state.
    struct MBar {
        unsigned expected = 0, pending = 0, phase = 0;
        long long tx = 0;
    };
    std::unordered_map<uintptr_t, MBar> mbars;
    struct Bulk {
        std::vector<size_t> offs;         // each element's offset in dynamic shared memory
        std::vector<unsigned char> data;  // the elements read at issue (zeros out of bounds)
        unsigned esize;
        uintptr_t bar;  // the mbarrier whose transaction count the copy completes
        unsigned bytes;
    };
    std::vector<Bulk> bulks;
    struct WgOp {
        unsigned long long da, db;
        int scale_d;
        bool bf16;
        float* d[128];
    };
    struct WG {
        unsigned arrived = 0, gen = 0;
        int op = -1;
        bool fenced = false;
        unsigned long long in[4] = {};
        float* d[128] = {};
        std::deque<std::vector<WgOp>> groups;  // the back one is open (not committed)
    };
    std::vector<WG> wgs;
};

thread_local Launch* L = nullptr;

[[noreturn]] void back_to_scheduler_dead();

std::string where() {
    char b[160];
    std::snprintf(b, sizeof b, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", L->entry->name, blockIdx.x,
                  blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    return b;
}

// Stops the launch with `msg` (the running thread never resumes).
[[noreturn]] void fault(const std::string& msg) {
    if (!L->failed) {
        L->failed = true;
        L->error = msg + " (" + where() + ")";
    }
    back_to_scheduler_dead();
}

// ---------------------------------------------------------------------------------------------
// Shadow memory: the checks compute-sanitizer makes. The kernel translation units are compiled
// with GCC's ThreadSanitizer instrumentation (build.rs), which calls __tsan_readN/__tsan_writeN
// before every load and store that may touch memory other than the thread's own locals; this
// runtime implements those hooks (no TSan runtime is linked) and classifies each address:
//  - a fiber stack (the CUDA thread's locals): nothing to check;
//  - dynamic or static shared memory: racecheck (the access conflicts with another thread's
//    access to the byte, at least one a write, with no __syncthreads — or, within a warp, no
//    warp collective — between; a cp.async destination read or written before the issuing
//    thread's wait_group), initcheck (a read of a byte this block never wrote), and memcheck
//    (an access running past the launched dynamic size);
//  - a device allocation: memcheck against its exact byte size (the guard page only catches
//    accesses past the 256-byte rounding and the page) and initcheck (a read of a byte neither
//    the host nor a kernel wrote since allocation);
//  - anything else (the launch's parameter array): not device memory, nothing to check.

std::string hex(uintptr_t a) {
    char b[32];
    std::snprintf(b, sizeof b, "%p", (void*)a);
    return b;
}

std::string thread_name(unsigned t) {
    const emu_dim3 d = L->fibers[t].tid;
    char b[64];
    std::snprintf(b, sizeof b, "thread (%u,%u,%u)", d.x, d.y, d.z);
    return b;
}

// `where` names the region and offset of the byte; `prev` the earlier access's thread.
[[noreturn]] void race(const char* kind, const std::string& where, unsigned prev, const char* prev_what) {
    fault(std::string("racecheck: ") + kind + " hazard on " + where + ": " + prev_what + " by " + thread_name(prev) +
          " with no __syncthreads (or, within a warp, no __syncwarp/shuffle) in between");
}

void shared_access(Sh* e, size_t n, bool write, const char* region, size_t off) {
    const unsigned t = L->cur;
    const Fiber& f = L->fibers[t];
    const uint32_t B = f.bar, W = f.wsync, tw = t >> 5;
    auto ordered = [&](unsigned p, uint32_t pbar, uint32_t pw) {
        return p == t || pbar != B || ((p >> 5) == tw && pw != W);
    };
    auto at = [&](size_t i) {
        char b[96];
        std::snprintf(b, sizeof b, "%s shared memory byte %zu", region, off + i);
        return std::string(b);
    };
    const bool rc = L->checks & kRacecheck;
    for (size_t i = 0; i < n; ++i) {
        Sh& s = e[i];
        if (s.stamp != L->stamp) s = Sh{L->stamp, 0, 0, 0, 0, 0, 0, 0};
        if (rc && (s.flags & kInflight))
            race(write ? "write-after-write" : "read-after-write", at(i), s.wt,
                 "it is the destination of a cp.async still in flight (before the issuing thread's cp.async.wait_group), issued");
        if (!write) {
            if (!(s.flags & kWritten)) {
                if (L->checks & kInitcheck)
                    fault("initcheck: read of " + at(i) + ", which no thread of this block has written");
            } else if (rc && !ordered(s.wt, s.wbar, s.wwarp)) {
                race("read-after-write", at(i), s.wt, "written");
            }
            if ((s.flags & kRead) && s.rbar == B) {
                if (s.rt != t) {
                    s.flags |= kRMulti;
                    if ((unsigned)(s.rt >> 5) != tw) s.flags |= kRMultiWarp;
                }
            } else {
                s.flags = (uint8_t)((s.flags & ~(kRMulti | kRMultiWarp)) | kRead);
            }
            s.rt = (uint16_t)t;
            s.rbar = B;
            s.rwarp = W;
        } else {
            if (rc && (s.flags & kWritten) && !ordered(s.wt, s.wbar, s.wwarp))
                race("write-after-write", at(i), s.wt, "written");
            if (rc && (s.flags & kRead) && s.rbar == B &&
                ((s.flags & kRMultiWarp) || (unsigned)(s.rt >> 5) != tw ||
                 (s.rwarp == W && (s.rt != t || (s.flags & kRMulti)))))
                race("write-after-read", at(i), s.rt, "read");
            s.flags = kWritten;
            s.wt = (uint16_t)t;
            s.wbar = B;
            s.wwarp = W;
        }
    }
}

// threadIdx, blockIdx, blockDim, gridDim: host thread_locals the kernels read, which may lie
// next to a static shared array.
bool builtin(uintptr_t a) {
    for (const emu_dim3* d : {&threadIdx, &blockIdx, &blockDim, &gridDim})
        if (a - (uintptr_t)d < sizeof(emu_dim3)) return true;
    return false;
}

[[noreturn]] void static_oob(uintptr_t a, size_t n, uintptr_t lo, size_t len) {
    char b[240];
    if (a < lo)
        std::snprintf(b, sizeof b, "memcheck: invalid static shared access of %zu bytes at %p, %zu bytes before a static shared array of %zu bytes",
                      n, (void*)a, (size_t)(lo - a), len);
    else
        std::snprintf(b, sizeof b, "memcheck: invalid static shared access of %zu bytes at %p, %zu bytes past the end of a static shared array of %zu bytes",
                      n, (void*)a, (size_t)(a + n - lo - len), len);
    fault(b);
}

// The shadow of the shared byte at `a`, or null when `a` is not shared memory.
Sh* shared_shadow(uintptr_t a, size_t n, const char*& region, size_t& off) {
    const uintptr_t sm = (uintptr_t)L->smem;
    if (L->smem != nullptr && a - sm < round_up(L->smem_bytes, 16)) {
        if (a + n > sm + L->smem_bytes) {
            char b[200];
            std::snprintf(b, sizeof b, "memcheck: invalid shared access of %zu bytes at %p, past the %zu bytes of dynamic shared memory",
                          n, (void*)a, L->smem_bytes);
            fault(b);
        }
        region = "dynamic";
        off = a - sm;
        return L->dyn_shadow + off;
    }
    for (auto& st : L->statics)
        if (a - st.lo < st.n) {
            if (a + n > st.lo + st.n) static_oob(a, n, st.lo, st.n);
            region = "static";
            off = a - st.lo;
            return st.sh.data() + off;
        }
    // A static array has no guard page (it is a host thread_local): an access within a red zone
    // around one of this launch's arrays, and inside no other array nor a built-in index
    // variable, is an index past its bounds.
    constexpr uintptr_t kRed = 256;
    for (auto& st : L->statics)
        if (a + n > st.lo - kRed && a < st.lo + st.n + kRed && !builtin(a)) static_oob(a, n, st.lo, st.n);
    return nullptr;
}

// The allocation holding `a` (cached per launch), or null when `a` is not device memory.
Launch::GRange* global_range(uintptr_t a) {
    for (auto& r : L->gcache)
        if (a - r.lo < r.slack - r.lo) return &r;
    std::lock_guard<std::mutex> lk(g_alloc_mu);
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    const uintptr_t slack = it->first + round_up(it->second.size == 0 ? 1 : it->second.size, 256);
    if (a >= slack) return nullptr;
    Launch::GRange& r = L->gcache[L->gnext++ % 4];
    r = {it->first, it->first + it->second.size, slack, it->second.init};
    return &r;
}

bool init_bit(const unsigned char* bits, size_t i) { return (bits[i >> 3] >> (i & 7)) & 1; }
void set_init(unsigned char* bits, size_t i, size_t n) {
    for (size_t k = i; k < i + n; ++k) {
        const unsigned char m = (unsigned char)(1u << (k & 7));
        if (!(bits[k >> 3] & m)) std::atomic_ref<unsigned char>(bits[k >> 3]).fetch_or(m, std::memory_order_relaxed);
    }
}

void global_access(uintptr_t a, size_t n, bool write) {
    Launch::GRange* r = global_range(a);
    if (r == nullptr) return;
    if ((L->checks & kMemcheck) && a + n > r->end) {
        char b[240];
        std::snprintf(b, sizeof b,
                      "memcheck: invalid global %s of %zu bytes at %p, %zu bytes past the end of an allocation of %zu bytes at %p",
                      write ? "write" : "read", n, (void*)a, (size_t)(a + n - r->end), (size_t)(r->end - r->lo),
                      (void*)r->lo);
        fault(b);
    }
    if (!(L->checks & kInitcheck) || r->init == nullptr) return;
    const size_t off = a - r->lo, m = std::min(n, (size_t)(r->end - a));
    if (write) {
        set_init(r->init, off, m);
        return;
    }
    for (size_t i = 0; i < m; ++i)
        if (!init_bit(r->init, off + i)) {
            char b[240];
            std::snprintf(b, sizeof b,
                          "initcheck: global read of %zu bytes at %p (byte %zu of an allocation of %zu bytes at %p) that "
                          "neither the host nor a kernel has written since allocation",
                          n, (void*)a, off + i, (size_t)(r->end - r->lo), (void*)r->lo);
            fault(b);
        }
}

void shadow_access(const void* p, size_t n, bool write) {
    if (L == nullptr || L->checks == 0 || L->entry == nullptr) return;
    const uintptr_t a = (uintptr_t)p;
    if (a - (uintptr_t)L->stacks < L->stacks_len) return;
    const char* region;
    size_t off;
    if (Sh* e = shared_shadow(a, n, region, off)) {
        if (L->checks & (kRacecheck | kInitcheck)) shared_access(e, n, write, region, off);
        return;
    }
    global_access(a, n, write);
}

// cp.async: the destination counts as written (and in flight) from issue until the issuing
// thread's wait_group retires the copy; then it is a write of that thread at that point.
void copy_issued(void* dst) {
    const char* region;
    size_t off;
    Sh* e = shared_shadow((uintptr_t)dst, 16, region, off);
    if (e == nullptr || !(L->checks & (kRacecheck | kInitcheck))) return;
    shared_access(e, 16, true, region, off);
    for (int i = 0; i < 16; ++i) e[i].flags |= kInflight;
}
void copy_retired(const void* dst) {
    const char* region;
    size_t off;
    Sh* e = shared_shadow((uintptr_t)dst, 16, region, off);
    if (e == nullptr) return;
    const Fiber& f = L->fibers[L->cur];
    for (int i = 0; i < 16; ++i)
        if (e[i].stamp == L->stamp && (e[i].flags & kInflight) && e[i].wt == L->cur) {
            e[i].flags = kWritten;
            e[i].wbar = f.bar;
            e[i].wwarp = f.wsync;
        }
}

void land(const Fiber::Copy& c) {
    if (c.fill) std::memcpy(c.dst, c.src, 16);
    else std::memset(c.dst, 0, 16);
}

// At every yield of a thread, each of its copies still in flight lands with probability 1/2:
// a copy may complete at any point between issue and wait_group.
void land_some(Fiber& f) {
    for (auto& g : f.groups)
        for (auto& c : g)
            if (!c.landed && (L->rng() & 1)) {
                land(c);
                c.landed = true;
            }
}

void land_bulks_some(bool all);

void yield() {
    Fiber& f = L->fibers[L->cur];
    land_some(f);
    if (!L->bulks.empty()) land_bulks_some(false);
    mk_emu_switch(&f.sp, L->sched_sp);
    // Resumed by the scheduler: restore this thread's identity.
    threadIdx = f.tid;
}

[[noreturn]] void back_to_scheduler_dead() {
    Fiber& f = L->fibers[L->cur];
    f.st = St::Done;
    void* dummy;
    mk_emu_switch(&dummy, L->sched_sp);
    std::abort();  // never resumed
}

void thread_main() {
    Fiber& f = L->fibers[L->cur];
    threadIdx = f.tid;
    L->entry->invoke(L->args);
    Fiber& g = L->fibers[L->cur];
    // Copies still in flight complete before the thread retires (the kernels wait for them).
    for (auto& grp : g.groups)
        for (const auto& c : grp) {
            if (!c.landed) land(c);
            copy_retired(c.dst);
        }
    g.groups.clear();
    if (!L->wgs.empty())
        for (const auto& grp : L->wgs[L->cur / 128].groups)
            if (!grp.empty()) fault("wgmma.mma_async still in flight when the thread exits (no wgmma.wait_group)");
    g.st = St::Done;
    L->live -= 1;
    // An exiting thread counts as arrived at the barrier its block is waiting in.
    if (L->live > 0 && L->bar_arrived == L->live) {
        L->bar_arrived = 0;
        L->bar_gen += 1;
        for (auto& o : L->fibers)
            if (o.st == St::Bar) o.st = St::Run;
    }
    void* dummy;
    mk_emu_switch(&dummy, L->sched_sp);
    std::abort();
}

extern "C" void mk_emu_fiber_entry() { thread_main(); }

unsigned lane_of() { return L->cur % 32; }
Warp& warp_of() { return L->warps[L->cur / 32]; }

// Deposits this lane's inputs, waits for the whole warp, and has the last lane to arrive run
// `compute` over all lanes' slots. Returns the slot parity to read outputs from.
unsigned collective(int op, const unsigned* in, unsigned nin, const void* ptr, Compute compute) {
    Warp& w = warp_of();
    const unsigned par = w.gen & 1, lane = lane_of();
    L->fibers[L->cur].wsync += 1;  // racecheck: a warp collective orders the warp's accesses
    if (w.arrived == 0) w.op = op;
    else if (w.op != op) fault("warp divergence: lanes of one warp reached different warp-synchronous instructions");
    WarpSlot& s = w.slot[par][lane];
    for (unsigned i = 0; i < nin; ++i) s.in[i] = in[i];
    s.ptr = ptr;
    w.arrived += 1;
    if (w.arrived == w.lanes) {
        if (compute) compute(w, par);
        w.arrived = 0;
        w.gen += 1;
        const unsigned base = L->cur / 32 * 32;
        for (unsigned t = base; t < base + w.lanes; ++t)
            if (L->fibers[t].st == St::Warp) L->fibers[t].st = St::Run;
        yield();  // let the others catch up in order (not needed for correctness)
    } else {
        L->fibers[L->cur].st = St::Warp;
        L->fibers[L->cur].gen = w.gen;
        yield();
    }
    return par;
}

// ---------------------------------------------------------------------------------------------
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k32", "ldmatrix",
// "Sparse matrix storage"): groupID g = lane >> 2, threadID_in_group q = lane & 3; the lower
// element index sits in the lower bits of a register.

template <typename H> float h2f(unsigned short b) {
    H h;
    std::memcpy(&h, &b, 2);
    return (float)h;
}
float bits_to_f(unsigned short b, bool bf) { return bf ? h2f<__nv_bfloat16>(b) : h2f<__half>(b); }
unsigned short half_of(unsigned r, int i) { return (unsigned short)(r >> (16 * (i & 1))); }
int byte_of(unsigned r, int i) { return (signed char)(r >> (8 * (i & 3))); }

// A of m16n8k16 (and the compressed 16x16 A of m16n8k32 sparse): a_i, i = 0..7.
int a16_row(unsigned g, int i) { return (i < 2 || (i >= 4 && i < 6)) ? (int)g : (int)g + 8; }
int a16_col(unsigned q, int i) { return 2 * (int)q + (i & 1) + (i >= 4 ? 8 : 0); }
// A of m16n8k32 .s8 (and the compressed 16x32 A of m16n8k64 sparse): a_i, i = 0..15.
int a32_row(unsigned g, int i) { return (i < 4 || (i >= 8 && i < 12)) ? (int)g : (int)g + 8; }
int a32_col(unsigned q, int i) { return 4 * (int)q + (i & 3) + (i >= 8 ? 16 : 0); }

// D (16x8): d_i at row g (+8 for i >= 2), col 2q + (i & 1).
template <typename T> void write_d(WarpSlot* s, T (&D)[16][8]) {
    for (unsigned L2 = 0; L2 < 32; ++L2) {
        const unsigned g = L2 >> 2, q = L2 & 3;
        for (int i = 0; i < 4; ++i) {
            const T v = D[i < 2 ? g : g + 8][2 * q + (i & 1)];
            std::memcpy(&s[L2].out[i], &v, 4);
        }
    }
}
template <typename T> void read_c(WarpSlot* s, T (&D)[16][8], unsigned first) {
    for (unsigned L2 = 0; L2 < 32; ++L2) {
        const unsigned g = L2 >> 2, q = L2 & 3;
        for (int i = 0; i < 4; ++i) std::memcpy(&D[i < 2 ? g : g + 8][2 * q + (i & 1)], &s[L2].in[first + i], 4);
    }
}

// Dense f16/bf16 m16n8k16: in = a0..a3, b0, b1, c0..c3 ... (9 words would overflow: C kept per
// lane, see mma_16816 below).
template <bool BF> void compute_16816(Warp& w, unsigned par) {
    WarpSlot* s = w.slot[par];
    float A[16][16], B[16][8], D[16][8];
    for (unsigned L2 = 0; L2 < 32; ++L2) {
        const unsigned g = L2 >> 2, q = L2 & 3;
        for (int i = 0; i < 8; ++i) A[a16_row(g, i)][a16_col(q, i)] = bits_to_f(half_of(s[L2].in[i / 2], i), BF);
        for (int i = 0; i < 4; ++i)
            B[2 * q + (i & 1) + (i >= 2 ? 8 : 0)][g] = bits_to_f(half_of(s[L2].in[4 + i / 2], i), BF);
    }
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 8; ++c) {
            float acc = 0;  // products of f16/bf16 are exact in f32
            for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][c];
            D[r][c] = acc;
        }
    write_d(s, D);
}

void compute_16832_s8(Warp& w, unsigned par) {
    WarpSlot* s = w.slot[par];
    int A[16][32], B[32][8], D[16][8];
    for (unsigned L2 = 0; L2 < 32; ++L2) {
        const unsigned g = L2 >> 2, q = L2 & 3;
        for (int i = 0; i < 16; ++i) A[a32_row(g, i)][a32_col(q, i)] = byte_of(s[L2].in[i / 4], i);
        for (int i = 0; i < 8; ++i) B[4 * q + (i & 3) + (i >= 4 ? 16 : 0)][g] = byte_of(s[L2].in[4 + i / 4], i);
    }
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 8; ++c) {
            int acc = 0;
            for (int k = 0; k < 32; ++k) acc += A[r][k] * B[k][c];
            D[r][c] = acc;
        }
    write_d(s, D);
}

// The two kept positions of a metadata nibble (ordered_metadata: ascending, first in the low
// bits); anything else is invalid metadata.
void nibble(unsigned word, int j, int& p0, int& p1) {
    const unsigned n = (word >> (4 * j)) & 0xF;
    p0 = (int)(n & 3);
    p1 = (int)(n >> 2);
    if (p0 >= p1) {
        char b[120];
        std::snprintf(b, sizeof b, "mma.sp: invalid metadata nibble 0x%x (positions %d, %d; ordered_metadata needs p0 < p1)",
                      n, p0, p1);
        fault(b);
    }
}

// mma.sp::ordered_metadata m16n8k32 .f16/.bf16, sparsity selector 0: A is 16 rows x 16 kept
// values (the m16n8k16 A layout), metadata from lanes with q < 2: lane 4g + h covers rows g
// (nibbles 0..3) and g + 8 (nibbles 4..7), 4-groups 4h .. 4h + 3 of the 32 K. B (32x8): b_i,
// i = 0..7, row 2q + (i & 1) + 8·(i >> 1), col g.
template <bool BF> void compute_sp_16832(Warp& w, unsigned par) {
    WarpSlot* s = w.slot[par];
    float Ac[16][16], A[16][32] = {}, B[32][8], D[16][8];
    for (unsigned L2 = 0; L2 < 32; ++L2) {
        const unsigned g = L2 >> 2, q = L2 & 3;
        for (int i = 0; i < 8; ++i) Ac[a16_row(g, i)][a16_col(q, i)] = bits_to_f(half_of(s[L2].in[i / 2], i), BF);
        for (int i = 0; i < 8; ++i)
            B[2 * q + (i & 1) + 8 * (i >> 1)][g] = bits_to_f(half_of(s[L2].in[4 + i / 2], i), BF);
    }
    for (int r = 0; r < 16; ++r)
        for (int grp = 0; grp < 8; ++grp) {
            const unsigned word = s[4 * (r % 8) + grp / 4].in[8];
            int p0, p1;
            nibble(word, (grp % 4) + 4 * (r / 8), p0, p1);
            A[r][4 * grp + p0] = Ac[r][2 * grp];
            A[r][4 * grp + p1] = Ac[r][2 * grp + 1];
        }
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 8; ++c) {
            float acc = 0;
            for (int k = 0; k < 32; ++k) acc += A[r][k] * B[k][c];
            D[r][c] = acc;
        }
    write_d(s, D);
}

// mma.sp::ordered_metadata m16n8k64 .s8: A is 16 rows x 32 kept values (the m16n8k32 .s8 A
// layout); every lane gives metadata: lane 4g + h covers row g + 8·(h & 1), 4-groups
// 8·(h >> 1) .. + 7 (nibble j = group 8·(h >> 1) + j). B (64x8): b_i, i = 0..15, row
// 4q + (i & 3) + 16·(i >> 2), col g.
void compute_sp_16864_s8(Warp& w, unsigned par) {
    WarpSlot* s = w.slot[par];
    int Ac[16][32], A[16][64] = {}, B[64][8], D[16][8];
    for (unsigned L2 = 0; L2 < 32; ++L2) {
        const unsigned g = L2 >> 2, q = L2 & 3;
        for (int i = 0; i < 16; ++i) Ac[a32_row(g, i)][a32_col(q, i)] = byte_of(s[L2].in[i / 4], i);
        for (int i = 0; i < 16; ++i) B[4 * q + (i & 3) + 16 * (i >> 2)][g] = byte_of(s[L2].in[4 + i / 4], i);
    }
    for (int r = 0; r < 16; ++r)
        for (int grp = 0; grp < 16; ++grp) {
            const unsigned h = (unsigned)(r / 8) + 2u * (unsigned)(grp / 8);
            const unsigned word = s[4 * (r % 8) + h].in[8];
            int p0, p1;
            nibble(word, grp % 8, p0, p1);
            A[r][4 * grp + p0] = Ac[r][2 * grp];
            A[r][4 * grp + p1] = Ac[r][2 * grp + 1];
        }
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 8; ++c) {
            int acc = 0;
            for (int k = 0; k < 64; ++k) acc += A[r][k] * B[k][c];
            D[r][c] = acc;
        }
    write_d(s, D);
}

void check_shared(const void* p, size_t n, const char* what) {
    const char* c = static_cast<const char*>(p);
    if (((uintptr_t)c & 15) != 0) {
        char b[160];
        std::snprintf(b, sizeof b, "misaligned address (CUDA_ERROR_MISALIGNED_ADDRESS): %s at %p is not 16-byte aligned",
                      what, p);
        fault(b);
    }
    if (c < L->smem || c + n > L->smem + L->smem_bytes) {
        char b[200];
        std::snprintf(b, sizeof b, "memcheck: %s of %zu bytes at %p outside the %zu bytes of dynamic shared memory at %p",
                      what, n, p, L->smem_bytes, (void*)L->smem);
        fault(b);
    }
}

template <bool TRANS> void compute_ldmatrix(Warp& w, unsigned par) {
    WarpSlot* s = w.slot[par];
    for (unsigned l = 0; l < 32; ++l)
        for (int j = 0; j < 4; ++j) {
            unsigned r;
            if (!TRANS) {
                std::memcpy(&r, static_cast<const char*>(s[8 * j + l / 4].ptr) + 4 * (l % 4), 4);
            } else {
                unsigned short lo, hi;
                std::memcpy(&lo, static_cast<const char*>(s[8 * j + 2 * (l % 4)].ptr) + 2 * (l / 4), 2);
                std::memcpy(&hi, static_cast<const char*>(s[8 * j + 2 * (l % 4) + 1].ptr) + 2 * (l / 4), 2);
                r = (unsigned)lo | ((unsigned)hi << 16);
            }
            s[l].out[j] = r;
        }
}

// ---------------------------------------------------------------------------------------------
// Faults in kernel code (a guard page hit: out-of-bounds global or shared access, or a fiber
// stack overflow) jump back to the launch, which reports them.

// The block this OS thread is running (a new number per block), and for each static shared
// array the block that last refilled it.
thread_local unsigned long long g_block_gen = 0;
thread_local std::unordered_map<void*, unsigned long long> g_static_gen;

thread_local sigjmp_buf* g_jmp = nullptr;
thread_local uintptr_t g_fault_addr = 0;
thread_local bool g_fault_write = false;
struct sigaction g_prev_segv, g_prev_bus;
std::once_flag g_sig_once;

void on_fault(int sig, siginfo_t* info, void* uc) {
    if (g_jmp != nullptr && L != nullptr) {
        g_fault_addr = (uintptr_t)info->si_addr;
#if defined(__x86_64__)
        g_fault_write = (static_cast<ucontext_t*>(uc)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#endif
        siglongjmp(*g_jmp, 1);
    }
    struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
    if (prev.sa_flags & SA_SIGINFO) {
        prev.sa_sigaction(sig, info, uc);
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

void install_handlers() {
    std::call_once(g_sig_once, [] {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_prev_segv);
        sigaction(SIGBUS, &sa, &g_prev_bus);
    });
}

std::string describe_fault(uintptr_t a) {
    char b[300];
    if (a >= (uintptr_t)L->stacks && a < (uintptr_t)L->stacks + L->stacks_len) {
        std::snprintf(b, sizeof b, "emulator: a CUDA thread overflowed its %zu KiB fiber stack", kStack / 1024);
        return b;
    }
    if (L->smem != nullptr && a >= (uintptr_t)L->smem && a < (uintptr_t)L->smem + round_up(L->smem_bytes, page()) + page()) {
        std::snprintf(b, sizeof b, "memcheck: invalid shared %s at %p, %zu bytes past the %zu bytes of dynamic shared memory",
                      g_fault_write ? "write" : "read", (void*)a, (size_t)(a - (uintptr_t)L->smem - L->smem_bytes),
                      L->smem_bytes);
        return b;
    }
    std::lock_guard<std::mutex> lk(g_alloc_mu);
    auto it = g_allocs.upper_bound(a);
    if (it != g_allocs.begin()) {
        --it;
        const uintptr_t end = it->first + it->second.size;
        if (a >= end && a < (uintptr_t)it->second.map + it->second.map_len) {
            std::snprintf(b, sizeof b, "memcheck: invalid global %s at %p, %zu bytes past the end of an allocation of %zu bytes at %p",
                          g_fault_write ? "write" : "read", (void*)a, (size_t)(a - end), it->second.size,
                          (void*)it->first);
            return b;
        }
    }
    std::snprintf(b, sizeof b, "memcheck: invalid %s at %p (outside every allocation)", g_fault_write ? "write" : "read",
                  (void*)a);
    return b;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The device-side API (emu.h).

void syncthreads() {
    Fiber& f = L->fibers[L->cur];
    f.bar += 1;  // racecheck: accesses after this call are ordered after every thread's before it
    L->bar_arrived += 1;
    if (L->bar_arrived == L->live) {
        L->bar_arrived = 0;
        L->bar_gen += 1;
        for (auto& o : L->fibers)
            if (o.st == St::Bar) o.st = St::Run;
        yield();
    } else {
        f.st = St::Bar;
        f.gen = L->bar_gen;
        yield();
    }
}

void syncwarp() { collective(1, nullptr, 0, nullptr, nullptr); }

unsigned shfl32(unsigned bits, int mode, int arg) {
    const unsigned lane = lane_of();
    const unsigned par = collective(2, &bits, 1, nullptr, nullptr);
    const unsigned src = mode == 0 ? (lane ^ (unsigned)arg) & 31u : (unsigned)arg & 31u;
    Warp& w = warp_of();
    if (src >= w.lanes) return bits;
    return w.slot[par][src].in[0];
}

char* dyn_smem() { return L->smem; }
void static_smem(void* p, std::size_t n) {
    unsigned long long& gen = g_static_gen[p];
    if (gen != g_block_gen) {
        // 0xFF bytes: NaN as f32/f16/bf16, -1 as an integer, so a read of an element the block
        // never wrote poisons the result even when it is multiplied by zero.
        std::memset(p, 0xFF, n);
        gen = g_block_gen;
    }
    if (L != nullptr) {
        for (const auto& st : L->statics)
            if (st.lo == (uintptr_t)p) return;
        L->statics.push_back({(uintptr_t)p, n, std::vector<Sh>(n)});
    }
}

void cp_async16(void* dst, const void* src, bool pred) {
    check_shared(dst, 16, "cp.async destination");
    if (pred) {
        if (((uintptr_t)src & 15) != 0) fault("misaligned address (CUDA_ERROR_MISALIGNED_ADDRESS): cp.async source not 16-byte aligned");
        if (!in_alloc(src, 16)) {
            char b[120];
            std::snprintf(b, sizeof b, "memcheck: cp.async reads 16 bytes at %p outside every allocation", src);
            fault(b);
        }
        global_access((uintptr_t)src, 16, false);
    }
    copy_issued(dst);
    Fiber& f = L->fibers[L->cur];
    if (f.groups.empty()) f.groups.emplace_back();
    f.groups.back().push_back({dst, src, pred, false});
}

void commit() { L->fibers[L->cur].groups.emplace_back(); }

void wait(int n) {
    Fiber& f = L->fibers[L->cur];
    // groups.back() is the open (uncommitted) group; committed ones precede it.
    int committed = (int)f.groups.size() - (f.groups.empty() ? 0 : 1);
    while (committed > n) {
        for (const auto& c : f.groups.front()) {
            if (!c.landed) land(c);
            copy_retired(c.dst);
        }
        f.groups.pop_front();
        committed -= 1;
    }
}

void ldmatrix_x4(unsigned (&r)[4], const void* p, bool trans) {
    check_shared(p, 16, "ldmatrix row address");
    shadow_access(p, 16, false);  // each lane reads its 16-byte row (runtime code is not instrumented)
    const unsigned par = collective(trans ? 4 : 3, nullptr, 0, p, trans ? compute_ldmatrix<true> : compute_ldmatrix<false>);
    const WarpSlot& s = warp_of().slot[par][lane_of()];
    for (int j = 0; j < 4; ++j) r[j] = s.out[j];
}

namespace {
template <typename T> void finish(T (&d)[4], unsigned par) {
    const WarpSlot& s = warp_of().slot[par][lane_of()];
    for (int i = 0; i < 4; ++i) {
        T v;
        std::memcpy(&v, &s.out[i], 4);
        d[i] += v;  // D = A·B + C, C added in the lane's own order (f32 / exact s32)
    }
}
void check_full_warp() {
    if (warp_of().lanes != 32) fault("mma/ldmatrix in a warp with fewer than 32 threads");
}
}  // namespace

void mma_16816_f16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    check_full_warp();
    const unsigned in[6] = {a[0], a[1], a[2], a[3], b0, b1};
    finish(d, collective(5, in, 6, nullptr, compute_16816<false>));
}
void mma_16816_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    check_full_warp();
    const unsigned in[6] = {a[0], a[1], a[2], a[3], b0, b1};
    finish(d, collective(6, in, 6, nullptr, compute_16816<true>));
}
void mma_16832_s8(int (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    check_full_warp();
    const unsigned in[6] = {a[0], a[1], a[2], a[3], b0, b1};
    finish(d, collective(7, in, 6, nullptr, compute_16832_s8));
}
void mma_sp_16832_f16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e) {
    check_full_warp();
    const unsigned in[9] = {a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], e};
    finish(d, collective(8, in, 9, nullptr, compute_sp_16832<false>));
}
void mma_sp_16832_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e) {
    check_full_warp();
    const unsigned in[9] = {a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], e};
    finish(d, collective(9, in, 9, nullptr, compute_sp_16832<true>));
}
void mma_sp_16864_s8(int (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], unsigned e) {
    check_full_warp();
    const unsigned in[9] = {a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], e};
    finish(d, collective(10, in, 9, nullptr, compute_sp_16864_s8));
}


// ---------------------------------------------------------------------------------------------
// Hopper (kernels/common/hopper.cuh): mbarriers, TMA tensor loads, wgmma, setmaxnreg.
// The shared window: dynamic shared memory starts at shared address kSharedBase, which is not
// 1024-byte aligned on purpose — a kernel must align its swizzled tiles itself.
namespace {
constexpr unsigned kSharedBase = 0x410;

char* shared_host(unsigned sa, size_t n, const char* what) {
    if (sa < kSharedBase || (size_t)(sa - kSharedBase) + n > L->smem_bytes) {
        char b[200];
        std::snprintf(b, sizeof b, "memcheck: %s of %zu bytes at shared address 0x%x outside the %zu bytes of dynamic shared memory",
                      what, n, sa, L->smem_bytes);
        fault(b);
    }
    return L->smem + (sa - kSharedBase);
}

Launch::MBar& mbar_of(void* bar, const char* what) {
    const uintptr_t a = (uintptr_t)bar;
    if ((a & 7) != 0 || a < (uintptr_t)L->smem || a + 8 > (uintptr_t)L->smem + L->smem_bytes) {
        char b[200];
        std::snprintf(b, sizeof b, "%s: mbarrier at %p is not an 8-byte aligned object in dynamic shared memory", what, bar);
        fault(b);
    }
    auto it = L->mbars.find(a);
    if (it == L->mbars.end()) {
        char b[200];
        std::snprintf(b, sizeof b, "%s on an mbarrier that no thread of the block initialised (mbarrier.init, then a barrier)", what);
        fault(b);
    }
    return it->second;
}

// Completes the current phase when every arrival and every announced byte is in: the phase
// bit flips, the arrival count resets, and the threads waiting on the barrier run again.
void mbar_progress(uintptr_t a, Launch::MBar& m) {
    if (m.pending != 0 || m.tx != 0) return;
    m.phase ^= 1u;
    m.pending = m.expected;
    for (auto& f : L->fibers)
        if (f.st == St::MBar && f.mbar == a) f.st = St::Run;
}

void land_bulk(const Launch::Bulk& b) {
    for (size_t i = 0; i < b.offs.size(); ++i) std::memcpy(L->smem + b.offs[i], b.data.data() + i * b.esize, b.esize);
    // Shadow: written by the async proxy, ordered before every thread that reads it after the
    // mbarrier wait (a barrier count no thread has). A read before the data landed still finds
    // the bytes unwritten (initcheck) or holding the previous stage (wrong results).
    if (L->checks & (kInitcheck | kRacecheck))
        for (size_t off : b.offs)
            for (size_t j = 0; j < b.esize; ++j) L->dyn_shadow[off + j] = Sh{L->stamp, 0, 0, 0xFFFFFFFFu, 0, 0, 0, kWritten};
    auto it = L->mbars.find(b.bar);
    if (it == L->mbars.end()) fault("TMA copy completed on an mbarrier that is no longer initialised");
    it->second.tx -= b.bytes;
    mbar_progress(b.bar, it->second);
}

// The emulator's tensor map (src/device/tma.rs writes it for the emulated GPU).
struct EmuTmap {
    unsigned long long magic, base, dims[3], strides[2], box, fmt;
};
constexpr unsigned long long kTmapMagic = 0x4d4b544d41500001ull;

unsigned wg_of() { return L->cur / 128; }

// Warpgroup rendezvous: the 128 threads of warpgroup wg_of() all reach the same instruction;
// the last to arrive runs `last`. `op` names the instruction (divergence check).
template <typename F> void wg_collective(int op, F last) {
    if (L->nthreads % 128 != 0) fault("warpgroup instruction in a block whose size is not a multiple of 128 threads");
    Launch::WG& g = L->wgs[wg_of()];
    L->fibers[L->cur].wsync += 1;
    if (g.arrived == 0) g.op = op;
    else if (g.op != op) fault("warpgroup divergence: threads of one warpgroup reached different wgmma/setmaxnreg instructions");
    g.arrived += 1;
    const unsigned base = wg_of() * 128;
    for (unsigned t = base; t < base + 128; ++t)
        if (L->fibers[t].st == St::Done) fault("warpgroup instruction after threads of the warpgroup exited");
    if (g.arrived == 128) {
        last(g);
        g.arrived = 0;
        g.gen += 1;
        for (unsigned t = base; t < base + 128; ++t)
            if (L->fibers[t].st == St::WG) L->fibers[t].st = St::Run;
        yield();
    } else {
        L->fibers[L->cur].st = St::WG;
        yield();
    }
}

// The shared address of element (row r, byte kb of K) of a K-major wgmma operand described by
// `desc` (PTX ISA "Shared Memory Matrix Layout"): 8-row groups SBO apart; within a group rows
// are one swizzle span (128/64/32 bytes) apart and the span's 16-byte chunks are permuted by
// the row (Swizzle<3|2|1, 4, 3> on the address), or, without swizzle, 8x16-byte core matrices
// LBO apart along K.
unsigned desc_addr(unsigned long long desc, unsigned r, unsigned kb) {
    const unsigned start = (unsigned)(desc & 0x3FFF) << 4, lbo = (unsigned)((desc >> 16) & 0x3FFF) << 4,
                   sbo = (unsigned)((desc >> 32) & 0x3FFF) << 4, layout = (unsigned)(desc >> 62);
    if (((desc >> 49) & 7) != 0) fault("wgmma descriptor with a nonzero base offset (not emulated)");
    if (layout == 0) return start + (r / 8) * sbo + (kb / 16) * lbo + (r % 8) * 16 + kb % 16;
    const unsigned span = layout == 1 ? 128 : layout == 2 ? 64 : 32, bits = layout == 1 ? 7 : layout == 2 ? 3 : 1;
    const unsigned a = start + (r / 8) * sbo + (r % 8) * span + kb;
    return a ^ (((a >> 7) & bits) << 4);
}
}  // namespace

unsigned shared_addr(const void* p) {
    const char* c = static_cast<const char*>(p);
    if (c < L->smem || c > L->smem + L->smem_bytes) fault("shared address of a pointer outside dynamic shared memory (not emulated)");
    return kSharedBase + (unsigned)(c - L->smem);
}

void mbar_init(void* bar, unsigned count) {
    const uintptr_t a = (uintptr_t)bar;
    if ((a & 7) != 0 || a < (uintptr_t)L->smem || a + 8 > (uintptr_t)L->smem + L->smem_bytes)
        fault("mbarrier.init: not an 8-byte aligned object in dynamic shared memory");
    if (count == 0 || count >= (1u << 20)) fault("mbarrier.init: the arrival count must be 1 to 2^20 - 1");
    for (const auto& b : L->bulks)
        if (b.bar == a) fault("mbarrier.init on an mbarrier with a TMA copy in flight");
    Launch::MBar& m = L->mbars[a];
    m.expected = m.pending = count;
    m.phase = 0;
    m.tx = 0;
}
void fence_mbar_init() {}

void mbar_arrive(void* bar) {
    Launch::MBar& m = mbar_of(bar, "mbarrier.arrive");
    if (m.pending == 0) fault("mbarrier.arrive: more arrivals than the count of the phase");
    m.pending -= 1;
    mbar_progress((uintptr_t)bar, m);
}
void mbar_arrive_expect_tx(void* bar, unsigned bytes) {
    Launch::MBar& m = mbar_of(bar, "mbarrier.arrive.expect_tx");
    m.tx += bytes;
    mbar_arrive(bar);
}
void mbar_wait(void* bar, unsigned parity) {
    mbar_of(bar, "mbarrier.try_wait.parity");
    for (;;) {
        Launch::MBar& m = mbar_of(bar, "mbarrier.try_wait.parity");
        if ((m.phase & 1u) != (parity & 1u)) return;
        Fiber& f = L->fibers[L->cur];
        f.st = St::MBar;
        f.mbar = (uintptr_t)bar;
        yield();
    }
}

namespace {
// Each TMA copy still in flight lands with probability 1/4 at every yield (all of them when
// `all`): the data and the transaction bytes arrive at a random point after issue.
void land_bulks_some(bool all) {
    for (size_t i = 0; i < L->bulks.size();) {
        if (all || (L->rng() & 3) == 0) {
            Launch::Bulk b = std::move(L->bulks[i]);
            L->bulks.erase(L->bulks.begin() + (long)i);
            land_bulk(b);
        } else {
            ++i;
        }
    }
}
}  // namespace

void tma_load(void* dst, const void* map, int c0, int c1, int c2, void* bar) {
    EmuTmap t;
    std::memcpy(&t, map, sizeof t);
    if (t.magic != kTmapMagic) fault("cp.async.bulk.tensor: the tensor map was not encoded for the emulated GPU (src/device/tma.rs)");
    const unsigned esize = (unsigned)(t.fmt & 0xFF), rank = (unsigned)((t.fmt >> 8) & 0xFF),
                   swz = (unsigned)((t.fmt >> 16) & 0xFFFF);
    const unsigned box[3] = {(unsigned)(t.box & 0xFFFF), (unsigned)((t.box >> 16) & 0xFFFF), (unsigned)((t.box >> 32) & 0xFFFF)};
    if (rank != 3) fault("cp.async.bulk.tensor.3d with a tensor map of another rank");
    const unsigned sa = shared_addr(dst);
    if (sa % 128 != 0) fault("misaligned address (CUDA_ERROR_MISALIGNED_ADDRESS): TMA shared destination not 128-byte aligned");
    if (swz != 0 && box[0] * esize != swz) fault("TMA: a swizzled box's inner row must be the swizzle span (not emulated otherwise)");
    const unsigned bytes = box[0] * box[1] * box[2] * esize;
    shared_host(sa, bytes, "TMA destination");
    mbar_of(bar, "cp.async.bulk.tensor (its completion mbarrier)");
    Launch::Bulk b{{}, {}, esize, (uintptr_t)bar, bytes};
    b.offs.reserve(bytes / esize);
    b.data.resize(bytes, 0);
    const long long c[3] = {c0, c1, c2};
    const unsigned bits = swz == 128 ? 7 : swz == 64 ? 3 : swz == 32 ? 1 : 0;
    size_t i = 0;
    for (unsigned z = 0; z < box[2]; ++z)
        for (unsigned y = 0; y < box[1]; ++y)
            for (unsigned x = 0; x < box[0]; ++x, ++i) {
                unsigned a = sa + (unsigned)(i * esize);
                a ^= ((a >> 7) & bits) << 4;
                b.offs.push_back(a - kSharedBase);
                const long long g[3] = {c[0] + x, c[1] + y, c[2] + z};
                bool in = true;
                for (int d = 0; d < 3; ++d) in = in && g[d] >= 0 && (unsigned long long)g[d] < t.dims[d];
                if (!in) continue;  // out of bounds: zeros
                const char* src = reinterpret_cast<const char*>(t.base) + g[0] * esize + g[1] * (long long)t.strides[0] +
                                  g[2] * (long long)t.strides[1];
                if (!in_alloc(src, esize)) {
                    char m[160];
                    std::snprintf(m, sizeof m, "memcheck: TMA reads %u bytes at %p outside every allocation (the tensor map's extent)", esize, (const void*)src);
                    fault(m);
                }
                global_access((uintptr_t)src, esize, false);
                std::memcpy(b.data.data() + i * esize, src, esize);
            }
    L->bulks.push_back(std::move(b));
}

void setmaxnreg(unsigned n, bool inc) {
    if (n < 24 || n > 256 || n % 8 != 0) fault("setmaxnreg: the register count must be a multiple of 8 in [24, 256]");
    wg_collective(inc ? 10 : 11, [](Launch::WG&) {});
}

void wgmma_fence() {
    wg_collective(12, [](Launch::WG& g) { g.fenced = true; });
}

void wgmma_m64n128k16(float (&d)[64], unsigned long long da, unsigned long long db, int scale_d, bool bf16) {
    Launch::WG& g = L->wgs[wg_of()];
    const unsigned t = L->cur % 128;
    g.d[t] = d;
    if (g.arrived == 0) {
        g.in[0] = da;
        g.in[1] = db;
        g.in[2] = (unsigned long long)scale_d;
        g.in[3] = bf16;
    } else if (g.in[0] != da || g.in[1] != db || g.in[2] != (unsigned long long)scale_d) {
        fault("wgmma.mma_async: descriptors and scale-d differ between threads of the warpgroup");
    }
    wg_collective(13, [](Launch::WG& w) {
        if (!w.fenced) fault("wgmma.mma_async with no wgmma.fence since the warpgroup's last wgmma.wait_group");
        if (w.groups.empty()) w.groups.emplace_back();
        Launch::WgOp op{w.in[0], w.in[1], (int)w.in[2], w.in[3] != 0, {}};
        std::memcpy(op.d, w.d, sizeof op.d);
        w.groups.back().push_back(op);
    });
}

void wgmma_commit() {
    wg_collective(14, [](Launch::WG& g) {
        if (g.groups.empty()) g.groups.emplace_back();
        g.groups.emplace_back();
    });
}

namespace {
// D[64 x 128] (+)= A[64 x 16] · B^T, both K-major through their descriptors, read now (at
// wgmma.wait_group): shared memory changed between issue and wait changes the result, as it
// may on the hardware.
void run_wgmma(const Launch::WgOp& op) {
    float A[64][16], B[128][16];
    for (unsigned r = 0; r < 64; ++r)
        for (unsigned k = 0; k < 16; ++k) {
            unsigned short v;
            std::memcpy(&v, shared_host(desc_addr(op.da, r, 2 * k), 2, "wgmma A operand"), 2);
            A[r][k] = bits_to_f(v, op.bf16);
        }
    for (unsigned n = 0; n < 128; ++n)
        for (unsigned k = 0; k < 16; ++k) {
            unsigned short v;
            std::memcpy(&v, shared_host(desc_addr(op.db, n, 2 * k), 2, "wgmma B operand"), 2);
            B[n][k] = bits_to_f(v, op.bf16);
        }
    for (unsigned t = 0; t < 128; ++t) {
        const unsigned w = t / 32, l = t % 32;
        for (unsigned i = 0; i < 64; ++i) {
            const unsigned row = 16 * w + l / 4 + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * (l % 4) + (i & 1);
            float acc = 0;  // products of f16/bf16 are exact in f32
            for (unsigned k = 0; k < 16; ++k) acc += A[row][k] * B[col][k];
            op.d[t][i] = op.scale_d ? op.d[t][i] + acc : acc;
        }
    }
}
}  // namespace

void wgmma_wait(int n) {
    wg_collective(15, [n](Launch::WG& g) {
        // After a wait the threads may touch the accumulators again: the next wgmma needs a
        // new wgmma.fence (stricter than PTX, which exempts back-to-back accumulation).
        g.fenced = false;
        // groups.back() is the open group; committed ones precede it.
        int committed = (int)g.groups.size() - (g.groups.empty() ? 0 : 1);
        while (committed > n) {
            for (const auto& op : g.groups.front()) run_wgmma(op);
            g.groups.pop_front();
            committed -= 1;
        }
    });
}

}  // namespace mk_emu

// ---------------------------------------------------------------------------------------------
// The C interface for src/device/emu.rs.

using namespace mk_emu;

extern "C" const mk_emu::Entry* mk_emu_find(const char* name);  // generated by build.rs

extern "C" void* mk_emu_alloc(size_t bytes) {
    const size_t user = round_up(bytes == 0 ? 1 : bytes, 256);
    const size_t body = round_up(user, page());
    const size_t len = body + page();
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    char* base = static_cast<char*>(m);
    if (mprotect(base + body, page(), PROT_NONE) != 0) {
        munmap(m, len);
        return nullptr;
    }
    char* p = base + body - user;
    std::memset(p, 0xFF, user);
    unsigned char* init = static_cast<unsigned char*>(std::calloc(user / 8, 1));
    if (init == nullptr) {
        munmap(m, len);
        return nullptr;
    }
    std::lock_guard<std::mutex> lk(g_alloc_mu);
    g_allocs[(uintptr_t)p] = Alloc{base, len, bytes, init};
    return p;
}

extern "C" void mk_emu_free(void* p) {
    std::lock_guard<std::mutex> lk(g_alloc_mu);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end()) return;
    munmap(it->second.map, it->second.map_len);
    std::free(it->second.init);
    g_allocs.erase(it);
}

// initcheck: the host wrote [p, p + n) of an allocation (an upload or a fill).
extern "C" void mk_emu_mark_init(void* p, size_t n) {
    std::lock_guard<std::mutex> lk(g_alloc_mu);
    auto it = g_allocs.upper_bound((uintptr_t)p);
    if (it == g_allocs.begin()) return;
    --it;
    const size_t off = (uintptr_t)p - it->first;
    if (off > it->second.size) return;
    n = std::min(n, it->second.size - off);
    size_t i = off;
    for (; i < off + n && (i & 7); ++i) it->second.init[i >> 3] |= (unsigned char)(1u << (i & 7));
    if (off + n - i >= 8) {
        std::memset(it->second.init + (i >> 3), 0xFF, (off + n - i) / 8);
        i += (off + n - i) / 8 * 8;
    }
    for (; i < off + n; ++i) it->second.init[i >> 3] |= (unsigned char)(1u << (i & 7));
}

// The checks of MEDKERN_EMU_CHECKS: unset or "all" for every one, "none" for none, or a comma
// list of memcheck, initcheck, racecheck.
static unsigned checks_from_env() {
    const char* v = std::getenv("MEDKERN_EMU_CHECKS");
    if (v == nullptr || std::strcmp(v, "all") == 0) return kMemcheck | kInitcheck | kRacecheck;
    std::string s(v);
    unsigned c = 0;
    if (s.find("memcheck") != std::string::npos) c |= kMemcheck;
    if (s.find("initcheck") != std::string::npos) c |= kInitcheck;
    if (s.find("racecheck") != std::string::npos) c |= kRacecheck;
    if (c == 0 && s != "none") {
        std::fprintf(stderr, "medkern emu: MEDKERN_EMU_CHECKS=%s names no check (all, none, or memcheck,initcheck,racecheck); running all\n", v);
        c = kMemcheck | kInitcheck | kRacecheck;
    }
    return c;
}

// The checks of this OS thread's next launches: a mask of kMemcheck | kInitcheck | kRacecheck,
// or -1 for MEDKERN_EMU_CHECKS (tests switch a check off to observe what a GPU would compute).
static thread_local int g_checks_override = -1;
extern "C" void mk_emu_set_checks(int mask) { g_checks_override = mask; }

// ThreadSanitizer's instrumentation entry points (build.rs compiles the kernels with
// -fsanitize=thread and no TSan runtime): every load and store of kernel code lands here.
#define MK_TSAN_RW(N)                                                                 \
    extern "C" void __tsan_read##N(void* p) { shadow_access(p, N, false); }                \
    extern "C" void __tsan_write##N(void* p) { shadow_access(p, N, true); }                \
    extern "C" void __tsan_unaligned_read##N(void* p) { shadow_access(p, N, false); }      \
    extern "C" void __tsan_unaligned_write##N(void* p) { shadow_access(p, N, true); }      \
    extern "C" void __tsan_volatile_read##N(void* p) { shadow_access(p, N, false); }       \
    extern "C" void __tsan_volatile_write##N(void* p) { shadow_access(p, N, true); }
MK_TSAN_RW(1)
MK_TSAN_RW(2)
MK_TSAN_RW(4)
MK_TSAN_RW(8)
MK_TSAN_RW(16)
#undef MK_TSAN_RW
extern "C" void __tsan_read_range(void* p, size_t n) { shadow_access(p, n, false); }
extern "C" void __tsan_write_range(void* p, size_t n) { shadow_access(p, n, true); }
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}

// Runs one launch. Returns 0, or -1 with a message in err: a parameter list that does not
// match the kernel, an unknown kernel, or a fault (kernel, block, thread, address).
extern "C" int mk_emu_launch(const char* kernel, const unsigned* grid, const unsigned* block, unsigned smem_bytes,
                             void** args, unsigned nargs, const unsigned* arg_sizes, unsigned long long seed,
                             char* err, size_t err_len) {
    auto fail = [&](const std::string& m) {
        std::snprintf(err, err_len, "%s", m.c_str());
        return -1;
    };
    const Entry* e = mk_emu_find(kernel);
    if (e == nullptr) return fail(std::string("no emulation entry for kernel ") + kernel);
    if (e->nparams != nargs) {
        char b[200];
        std::snprintf(b, sizeof b, "%s takes %u parameters, the launch passed %u", kernel, e->nparams, nargs);
        return fail(b);
    }
    for (unsigned i = 0; i < nargs; ++i)
        if (e->sizes[i] != arg_sizes[i]) {
            char b[200];
            std::snprintf(b, sizeof b, "%s parameter %u is %u bytes, the launch passed %u", kernel, i, e->sizes[i],
                          arg_sizes[i]);
            return fail(b);
        }
    const unsigned nt = block[0] * block[1] * block[2];
    if (nt > e->max_threads) {
        char b[240];
        std::snprintf(b, sizeof b,
                      "%s: block of %u threads above its __launch_bounds__(%u): too many resources requested "
                      "for launch (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)",
                      kernel, nt, e->max_threads);
        return fail(b);
    }
    if (nt == 0 || grid[0] * grid[1] * grid[2] == 0) return 0;
    install_handlers();

    Launch launch;
    launch.entry = e;
    launch.args = args;
    launch.nthreads = nt;
    launch.rng.seed(seed);
    launch.smem_bytes = smem_bytes;
    static const unsigned checks = checks_from_env();
    launch.checks = g_checks_override >= 0 ? (unsigned)g_checks_override : checks;
    std::unique_ptr<Sh, decltype(&std::free)> dyn_shadow(
        static_cast<Sh*>(std::calloc(std::max<size_t>(smem_bytes, 1), sizeof(Sh))), &std::free);
    if (!dyn_shadow) return fail("emulator: cannot allocate the shared-memory shadow");
    launch.dyn_shadow = dyn_shadow.get();
    // Dynamic shared memory: its launched size ends at a guard page.
    const size_t smem_body = round_up(std::max<size_t>(smem_bytes, 16), page());
    char* smem_map = static_cast<char*>(
        mmap(nullptr, smem_body + page(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (smem_map == MAP_FAILED) return fail("emulator: cannot map shared memory");
    mprotect(smem_map + smem_body, page(), PROT_NONE);
    launch.smem = smem_map + smem_body - round_up(smem_bytes, 16);
    // Fiber stacks, each with a guard page below it.
    const size_t slot = kStack + page();
    launch.stacks_len = slot * nt;
    launch.stacks = static_cast<char*>(
        mmap(nullptr, launch.stacks_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (launch.stacks == MAP_FAILED) {
        munmap(smem_map, smem_body + page());
        return fail("emulator: cannot map fiber stacks");
    }
    for (unsigned t = 0; t < nt; ++t) mprotect(launch.stacks + t * slot, page(), PROT_NONE);

    Launch* prev = L;
    L = &launch;
    blockDim = {block[0], block[1], block[2]};
    gridDim = {grid[0], grid[1], grid[2]};
    const emu_dim3 saved_tid = threadIdx;
    sigjmp_buf jb;
    sigjmp_buf* prev_jmp = g_jmp;
    int rc = 0;
    for (unsigned z = 0; z < grid[2] && rc == 0; ++z)
        for (unsigned y = 0; y < grid[1] && rc == 0; ++y)
            for (unsigned x = 0; x < grid[0] && rc == 0; ++x) {
                blockIdx = {x, y, z};
                std::memset(launch.smem, 0xA5, round_up(smem_bytes, 16));  // garbage, like real smem
                ++g_block_gen;  // static shared arrays are refilled at their first use below
                launch.stamp = (uint32_t)g_block_gen == 0 ? 1 : (uint32_t)g_block_gen;  // shadow records of older blocks go stale
                launch.fibers.assign(nt, Fiber{});
                launch.warps.assign((nt + 31) / 32, Warp{});
                for (unsigned w = 0; w < launch.warps.size(); ++w) launch.warps[w].lanes = std::min(32u, nt - 32 * w);
                launch.live = nt;
                launch.bar_arrived = 0;
                launch.mbars.clear();
                launch.bulks.clear();
                launch.wgs.assign((nt + 127) / 128, Launch::WG{});
                for (unsigned t = 0; t < nt; ++t) {
                    Fiber& f = launch.fibers[t];
                    f.tid = {t % block[0], (t / block[0]) % block[1], t / (block[0] * block[1])};
                    // Initial frame for mk_emu_switch: FP control words, six callee-saved
                    // registers, then the entry as the return address (16-byte aligned + 8
                    // at entry, as after a call).
                    uintptr_t top = (uintptr_t)(launch.stacks + (t + 1) * slot);
                    top &= ~(uintptr_t)15;
                    void** sp = reinterpret_cast<void**>(top);
                    *--sp = nullptr;  // alignment padding / fake return of the entry
                    *--sp = reinterpret_cast<void*>(&mk_emu_fiber_entry);
                    for (int i = 0; i < 6; ++i) *--sp = nullptr;
                    --sp;
                    unsigned fpw[2];
                    asm volatile("stmxcsr %0" : "=m"(fpw[0]));
                    asm volatile("fnstcw %0" : "=m"(fpw[1]));
                    std::memcpy(sp, fpw, 8);
                    f.sp = sp;
                }
                g_jmp = &jb;
                if (sigsetjmp(jb, 1) != 0) {
                    rc = -1;
                    std::string m = describe_fault(g_fault_addr);
                    launch.error = m + " (" + where() + ")";
                    break;
                }
                // Warps are independent between barriers, so the scheduler does not keep them
                // in step: every sweep visits the warps in a random order and gives each 0 to 3
                // turns (a turn runs each runnable lane to its next yield). A warp that stalls
                // while another runs ahead opens the windows that a missing barrier leaves (a
                // prefetch overwriting a stage still being read, shared scratch reused early).
                std::vector<unsigned> order(launch.warps.size());
                for (unsigned w = 0; w < order.size(); ++w) order[w] = w;
                while (launch.live > 0 && !launch.failed) {
                    bool runnable = false;
                    for (const auto& f : launch.fibers) runnable |= f.st == St::Run;
                    if (!runnable && !launch.bulks.empty()) {
                        // Everyone waits: the TMA copies in flight land now.
                        land_bulks_some(true);
                        continue;
                    }
                    if (!runnable) {
                        rc = -1;
                        bool mb = false;
                        for (const auto& f : launch.fibers) mb |= f.st == St::MBar;
                        if (mb) {
                            launch.error = std::string("deadlock: threads of kernel ") + e->name +
                                           " wait on an mbarrier phase that never completes (missing arrivals or TMA bytes)";
                            break;
                        }
                        launch.error = std::string("deadlock: threads of kernel ") + e->name +
                                       " wait at a barrier or warp collective that the rest of the block/warp never reaches";
                        break;
                    }
                    std::shuffle(order.begin(), order.end(), launch.rng);
                    for (unsigned w : order) {
                        const unsigned turns = order.size() == 1 ? 1 : unsigned(launch.rng() % 4);
                        for (unsigned k = 0; k < turns && !launch.failed; ++k)
                            for (unsigned t = 32 * w; t < std::min(nt, 32 * w + 32) && !launch.failed; ++t) {
                                Fiber& f = launch.fibers[t];
                                if (f.st != St::Run) continue;
                                launch.cur = t;
                                threadIdx = f.tid;
                                mk_emu_switch(&launch.sched_sp, f.sp);
                            }
                    }
                }
                if (launch.failed) rc = -1;
                if (rc == 0 && !launch.bulks.empty()) {
                    rc = -1;
                    launch.error = std::string("kernel ") + e->name +
                                   ": the block exited with TMA copies in flight (nobody waited on their mbarrier)";
                }
            }
    g_jmp = prev_jmp;
    L = prev;
    threadIdx = saved_tid;
    munmap(launch.stacks, launch.stacks_len);
    munmap(smem_map, smem_body + page());
    if (rc != 0) return fail(launch.error);
    return 0;
}

// The CountSketch of the parameters, S.theta, for a SketchedWindow on the CPU (tracking/sketch.py).
//
// Why: the torch path costs about 7 ns per scalar, nearly all of it in the torch calls that compute the
// hash (eight elementwise int64 ops and a gather, each a pass over 8-byte scratch buffers) and in two
// bincounts. Here each piece is read twice: once for its largest magnitude (which fixes the split), once
// to hash each element in registers and add its split value into the bucket sums.
//
// Bit-identical to the torch path (its _Accumulator.add, which is the reference). That path fixes every
// rounding: per piece of the plan it takes peak = max |v|, a grid from peak and the piece's length, splits
// v = hi + lo with hi = (v + shifter) - shifter, sums hi and lo separately into 2m slots (2h for sign +1,
// 2h + 1 for -1) in element order (torch.bincount's CPU loop), subtracts the odd slots from the even ones,
// and folds the piece into the running double-double (hi, lo) with TwoSum, piece after piece in plan order.
// This file does the same operations on the same doubles in the same order, so the result is equal bit
// for bit (not only to the last ulp): each slot's sums are made in element order by one thread per piece
// (the hi sums are exact in any order, but the lo sums, and the hi sums of a piece too large to split,
// are not), and the fold runs in plan order. Only additions and subtractions touch
// doubles (the hash's product is an integer one), so no contraction into FMA can change a rounding; the
// build has no -ffast-math.
//
// Parallel and deterministic: pieces are sketched in waves of K (one scratch of 4m doubles per piece in
// flight, K = scratch.size(0), chosen by the caller from the thread count); each wave's pieces run on
// torch's intra-op threads (at::parallel_for), then the wave is folded into the result bucket by bucket,
// also in parallel (buckets are independent) and in plan order for each bucket. Which thread sketches a
// piece never changes what it computes, so the result does not depend on the thread count or on K.
//
// The hash (count_sketch_hash in sketch.py) reads the tables the Python side built for the seed and the
// segment keys K[q] it computed for the pieces, so the two cannot diverge. It needs only the low 32 bits of
// b = a XOR D[a >> 47] and of a = T[c] XOR K[q], and a's bits 47..62, which are those bits of T[c] and
// K[q] XORed: so the tables come as three 2^16 uint32 arrays (low 32 bits of T, T >> 47, low 32 bits of D),
// half the bytes of the int64 ones, and the hash runs in 32-bit lanes (16 to an AVX-512 register, the
// lookup of D one 32-bit gather).
//
// Built with fused_push.cpp and window_spectra.cpp into one extension by tracking/_native.py; registered
// as a torch operator in the namespace named after the extension (that file holds the pybind11 module).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define SE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SE_CLONES
#endif

namespace {

constexpr int64_t CHAR_BITS = 16;
constexpr int64_t DERIVED_SHIFT = 63 - CHAR_BITS;
// Elements hashed before their values are added: the hash loop has no loads that depend on the bucket
// sums, so it runs at full vector width (measured on an AMD EPYC, P = 1e6, m = 1e4: 2.4 ns a scalar when
// the D lookup was a 64-bit gather and hi and lo two scalar adds, 2.0 ns now; prefetching the buckets
// ahead or blocks of 2048 changed nothing measurable).
constexpr int64_t BLOCK = 512;

// The bits of a value and its magnitude: max |v| of a piece is the largest |bits| (sign cleared), which is
// an integer max that vectorises, and a NaN or Inf anywhere shows as |bits| >= the exponent mask.
template <typename T> struct Traits;
template <> struct Traits<float> {
  using Bits = uint32_t;
  static constexpr Bits ABS = 0x7FFFFFFFu, INF = 0x7F800000u;
  static double widen(float v) { return v; }
};
template <> struct Traits<double> {
  using Bits = uint64_t;
  static constexpr Bits ABS = 0x7FFFFFFFFFFFFFFFull, INF = 0x7FF0000000000000ull;
  static double widen(double v) { return v; }
};
template <> struct Traits<c10::BFloat16> {
  using Bits = uint16_t;
  static constexpr Bits ABS = 0x7FFF, INF = 0x7F80;
  static double widen(c10::BFloat16 v) { return static_cast<float>(v); }
};
template <> struct Traits<c10::Half> {
  using Bits = uint16_t;
  static constexpr Bits ABS = 0x7FFF, INF = 0x7C00;
  static double widen(c10::Half v) { return static_cast<float>(v); }
};

// max |bits| over n values: >= Traits<T>::INF means a NaN or an Inf.
template <typename T>
SE_CLONES static typename Traits<T>::Bits peak_bits(const T* x, int64_t n) {
  using Bits = typename Traits<T>::Bits;
  static_assert(sizeof(Bits) == sizeof(T), "bits and value of one size");
  const Bits* b = reinterpret_cast<const Bits*>(x);
  constexpr int64_t L = 64 / sizeof(Bits);
  Bits acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int64_t j = 0; j < L; ++j) acc[j] = std::max<Bits>(acc[j], b[i + j] & Traits<T>::ABS);
  Bits top = 0;
  for (int64_t j = 0; j < L; ++j) top = std::max(top, acc[j]);
  for (; i < n; ++i) top = std::max<Bits>(top, b[i] & Traits<T>::ABS);
  return top;
}

template <typename T>
static double value_of_bits(typename Traits<T>::Bits bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return Traits<T>::widen(v);
}

// The grid of one piece, as the torch path derives it from its peak and length.
struct Split {
  bool on;         // false: hi = v, lo = 0 (values within about n * 2^-52 of float64's largest)
  double shifter;  // hi = (v + shifter) - shifter
};

static Split split_of(double peak, int64_t n) {
  int e = 0;
  std::frexp(peak, &e);
  int64_t bits = 0;
  for (uint64_t r = static_cast<uint64_t>(n - 1); r != 0; r >>= 1) ++bits;  // (n - 1).bit_length()
  const int64_t grid_exponent = e + std::max<int64_t>(1, bits) - 52;
  if (grid_exponent + 53 < 1024)
    return {true, 1.5 * std::ldexp(1.0, static_cast<int>(grid_exponent + 52))};
  return {false, 0.0};
}

// Slots 4h + 2 (sign) of the bucket sums: hi at +0 and lo at +1 of each pair, so that a value's two parts
// are added by one 16-byte load, add and store (two IEEE additions, as two scalar ones would be).
SE_CLONES static void hash_block(const uint32_t* __restrict t_low, const uint32_t* __restrict t_top,
                                 int64_t len, uint64_t key, const uint32_t* __restrict d_low, uint64_t two_m,
                                 int32_t* __restrict slot) {
  const uint32_t key_low = static_cast<uint32_t>(key);
  const uint32_t key_top = static_cast<uint32_t>(key >> DERIVED_SHIFT);
  for (int64_t k = 0; k < len; ++k) {
    const uint32_t b = t_low[k] ^ key_low ^ d_low[t_top[k] ^ key_top];  // b mod 2^32
    const uint32_t j = static_cast<uint32_t>((static_cast<uint64_t>(b) * two_m) >> 32);  // < 2m <= 2^31
    slot[k] = static_cast<int32_t>(((j >> 1) << 2) | ((j & 1) << 1));
  }
}

typedef double pair_t __attribute__((vector_size(16)));

// Sketch n values x of the elements start, start + 1, ... into the slot sums s (4 doubles a bucket: hi and
// lo for sign +1, hi and lo for -1), in element order. `keys` is K[start >> 16] onwards.
template <typename T>
SE_CLONES static void sketch_values(const T* __restrict x, int64_t n, int64_t start, const int64_t* keys,
                                    const uint32_t* __restrict tables, uint64_t two_m, Split split,
                                    double* __restrict s) {
  constexpr int64_t C = int64_t{1} << CHAR_BITS;
  alignas(64) int32_t slot[BLOCK];
  const int64_t q0 = start >> CHAR_BITS;
  int64_t done = 0;
  while (done < n) {
    const int64_t i0 = start + done;
    const int64_t c0 = i0 & (C - 1);
    // A block stays within one segment of 2^16 indices, so its key is one number.
    const int64_t len = std::min({BLOCK, n - done, C - c0});
    hash_block(tables + c0, tables + C + c0, len, static_cast<uint64_t>(keys[(i0 >> CHAR_BITS) - q0]),
                  tables + 2 * C, two_m, slot);
    const T* __restrict v = x + done;
    const double sh = split.shifter;
    for (int64_t k = 0; k < len; ++k) {
      const double w = Traits<T>::widen(v[k]);
      double h = w, l = 0.0;
      if (split.on) {
        h = (w + sh) - sh;
        l = w - h;
      }
      pair_t sum;
      std::memcpy(&sum, s + slot[k], sizeof sum);
      sum += pair_t{h, l};
      std::memcpy(s + slot[k], &sum, sizeof sum);
    }
    done += len;
  }
}

struct Segment {
  const void* data;
  at::ScalarType dtype;
  int64_t lo, n;  // elements [lo, lo + n) of the tensor
};

template <typename F>
static void dispatch(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "count_sketch reads float32, float64, bfloat16 and float16, not ", dtype);
  }
}

// What one piece left in its scratch.
enum Status : uint8_t { EMPTY = 0, SUMS = 1, NONFINITE = 2 };

}  // namespace

// S.v for the plan's pieces, as (hi, lo) in out (2, n_groups, m), float64, overwritten.
//
// values: flat contiguous CPU tensors (float32, float64, bfloat16, float16).
// segments (n_segments, 3) int64: tensor index, first element, element count; the segments of one piece
//   follow one another and lie at consecutive global indices.
// pieces (n_pieces, 5) int64: first segment, end segment, global index of the first element, group, index
//   in `keys` of K[start >> 16].
// tables (3, 2^16) int32: the low 32 bits of T, T >> 47 and the low 32 bits of D; keys (int64): the
//   segment keys; see tracking/sketch.py's _tables and _stream.
// scratch (K, 4m) float64: all zero on entry, left all zero; K pieces are sketched at once.
// A group that holds a NaN or an Inf is NaN in both parts, as in the torch path.
void count_sketch(at::TensorList values, const at::Tensor& segments, const at::Tensor& pieces,
                  const at::Tensor& tables, const at::Tensor& keys, int64_t m,
                  const at::Tensor& out, const at::Tensor& scratch) {
  TORCH_CHECK(m >= 1 && m <= (int64_t{1} << 30), "sketch_dim must be in [1, 2^30], got ", m);
  TORCH_CHECK(out.scalar_type() == at::kDouble && out.is_contiguous() && out.dim() == 3 && out.size(0) == 2 &&
                  out.size(2) == m, "out must be (2, n_groups, m) float64");
  const int64_t n_groups = out.size(1);
  TORCH_CHECK(scratch.scalar_type() == at::kDouble && scratch.is_contiguous() && scratch.dim() == 2 &&
                  scratch.size(0) >= 1 && scratch.size(1) == 4 * m, "scratch must be (K, 4m) float64");
  TORCH_CHECK(tables.scalar_type() == at::kInt && tables.is_contiguous() && tables.dim() == 2 &&
                  tables.size(0) == 3 && tables.size(1) == (int64_t{1} << CHAR_BITS),
              "the hash tables must be (3, 2^16) int32");
  TORCH_CHECK(keys.scalar_type() == at::kLong && keys.is_contiguous(), "keys must be int64");
  TORCH_CHECK(segments.scalar_type() == at::kLong && segments.is_contiguous() && segments.dim() == 2 &&
                  segments.size(1) == 3, "segments must be (n, 3) int64");
  TORCH_CHECK(pieces.scalar_type() == at::kLong && pieces.is_contiguous() && pieces.dim() == 2 &&
                  pieces.size(1) == 5, "pieces must be (n, 5) int64");

  std::vector<Segment> segs(static_cast<size_t>(segments.size(0)));
  const int64_t* sg = segments.data_ptr<int64_t>();
  for (size_t k = 0; k < segs.size(); ++k) {
    const int64_t t = sg[3 * k], lo = sg[3 * k + 1], n = sg[3 * k + 2];
    TORCH_CHECK(t >= 0 && t < static_cast<int64_t>(values.size()), "segment of a missing tensor");
    const at::Tensor& v = values[t];
    TORCH_CHECK(v.device().is_cpu() && v.is_contiguous(), "values must be contiguous CPU tensors");
    TORCH_CHECK(lo >= 0 && n >= 0 && lo + n <= v.numel(), "segment outside its tensor");
    segs[k] = {v.data_ptr(), v.scalar_type(), lo, n};
    dispatch(v.scalar_type(), [](auto) {});  // the dtype check, before any thread starts
  }
  const int64_t n_pieces = pieces.size(0), n_keys = keys.numel();
  const int64_t* pc = pieces.data_ptr<int64_t>();
  for (int64_t p = 0; p < n_pieces; ++p) {
    const int64_t* r = pc + 5 * p;
    TORCH_CHECK(r[0] >= 0 && r[0] <= r[1] && r[1] <= static_cast<int64_t>(segs.size()), "bad piece segments");
    TORCH_CHECK(r[2] >= 0 && r[3] >= 0 && r[3] < n_groups, "bad piece start or group");
    int64_t n = 0;
    for (int64_t k = r[0]; k < r[1]; ++k) n += segs[k].n;
    const int64_t segments_spanned = n == 0 ? 0 : ((r[2] + n - 1) >> CHAR_BITS) - (r[2] >> CHAR_BITS) + 1;
    TORCH_CHECK(r[4] >= 0 && r[4] + segments_spanned <= n_keys, "keys do not cover the piece");
  }

  const int64_t K = scratch.size(0);
  const uint64_t two_m = 2 * static_cast<uint64_t>(m);
  const uint32_t* tab = reinterpret_cast<const uint32_t*>(tables.data_ptr<int32_t>());
  const int64_t* key = keys.data_ptr<int64_t>();
  double* scr = scratch.data_ptr<double>();
  double* acc_hi = out.data_ptr<double>();
  double* acc_lo = acc_hi + n_groups * m;
  std::fill(acc_hi, acc_hi + 2 * n_groups * m, 0.0);
  std::vector<uint8_t> bad(static_cast<size_t>(n_groups), 0);
  std::vector<uint8_t> status(static_cast<size_t>(K), EMPTY);

  for (int64_t w0 = 0; w0 < n_pieces; w0 += K) {
    const int64_t w1 = std::min(n_pieces, w0 + K);
    at::parallel_for(w0, w1, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t* r = pc + 5 * p;
        double* s = scr + (p - w0) * 4 * m;
        double peak = 0.0;
        bool nonfinite = false;
        int64_t n = 0;
        for (int64_t k = r[0]; k < r[1]; ++k) {
          const Segment& g = segs[k];
          n += g.n;
          dispatch(g.dtype, [&](auto zero) {
            using T = decltype(zero);
            const auto top = peak_bits(static_cast<const T*>(g.data) + g.lo, g.n);
            if (top >= Traits<T>::INF) nonfinite = true;
            else peak = std::max(peak, value_of_bits<T>(top));
          });
        }
        if (nonfinite || n == 0 || peak == 0.0) {  // the torch path adds nothing for these
          status[p - w0] = nonfinite ? NONFINITE : EMPTY;
          continue;
        }
        const Split split = split_of(peak, n);
        int64_t start = r[2];
        const int64_t* piece_keys = key + r[4];
        for (int64_t k = r[0]; k < r[1]; ++k) {
          const Segment& g = segs[k];
          dispatch(g.dtype, [&](auto zero) {
            using T = decltype(zero);
            const int64_t* seg_keys = piece_keys + ((start >> CHAR_BITS) - (r[2] >> CHAR_BITS));
            sketch_values(static_cast<const T*>(g.data) + g.lo, g.n, start, seg_keys, tab, two_m, split, s);
          });
          start += g.n;
        }
        status[p - w0] = SUMS;
      }
    });
    for (int64_t p = w0; p < w1; ++p)
      if (status[p - w0] == NONFINITE) bad[pc[5 * p + 3]] = 1;
    // Fold the wave into (hi, lo) in plan order: TwoSum of hi and the piece's exact hi sum, then
    // lo += err + the piece's lo sum, as _Accumulator.add does; and zero the scratch behind.
    at::parallel_for(0, m, 2048, [&](int64_t h0, int64_t h1) {
      for (int64_t p = w0; p < w1; ++p) {
        if (status[p - w0] != SUMS) continue;
        const int64_t g = pc[5 * p + 3];
        double* hi = acc_hi + g * m;
        double* lo = acc_lo + g * m;
        double* s = scr + (p - w0) * 4 * m;
        for (int64_t h = h0; h < h1; ++h) {
          double* b = s + 4 * h;
          const double part_hi = b[0] - b[2], part_lo = b[1] - b[3];
          b[0] = b[1] = b[2] = b[3] = 0.0;
          const double a = hi[h], t = a + part_hi, bb = t - a;
          const double err = (a - (t - bb)) + (part_hi - bb);
          hi[h] = t;
          lo[h] = lo[h] + (err + part_lo);
        }
      }
    });
  }
  // The result normalised as _Accumulator.result: (hi, lo) = TwoSum(hi, lo); NaN for a nonfinite group.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t g = 0; g < n_groups; ++g) {
    double* hi = acc_hi + g * m;
    double* lo = acc_lo + g * m;
    if (bad[g]) {
      std::fill(hi, hi + m, nan);
      std::fill(lo, lo + m, nan);
      continue;
    }
    for (int64_t h = 0; h < m; ++h) {
      const double a = hi[h], b = lo[h], t = a + b, bb = t - a;
      hi[h] = t;
      lo[h] = (a - (t - bb)) + (b - bb);
    }
  }
}

// The operator's namespace is the extension's name (a hash of its sources), so that two builds loaded in
// one process cannot clash; the indirection expands the macro before TORCH_LIBRARY pastes it.
#define SE_LIBRARY(ns, lib) TORCH_LIBRARY(ns, lib)
SE_LIBRARY(TORCH_EXTENSION_NAME, lib) {
  lib.def(
      "count_sketch(Tensor[] values, Tensor segments, Tensor pieces, Tensor tables, Tensor keys, "
      "int sketch_dim, Tensor(a!) out, Tensor(b!) scratch) -> ()");
  lib.impl("count_sketch", c10::DispatchKey::CompositeExplicitAutograd,
           TORCH_FN(count_sketch));
}

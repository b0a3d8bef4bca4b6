// The fused push of a float32 window on the CPU: UpdateWindow.push in one call (tracking/window.py).
//
// Why: the torch path makes about eight torch calls per piece of the parameters (gather, subtract, refresh
// the snapshot, W dot products, |d|^2, write the row). For a model of 1e5-1e6 parameters those calls, not
// memory, set the cost, and BLAS runs the dot products on one core. This kernel does the whole push in one
// call: it walks every tensor in blocks of 8192 values spread over torch's own intra-op threads
// (at::parallel_for, so it never competes with the training loop's thread pool), and for each block
// computes d = theta - prev into a stack buffer, refreshes prev, takes |d|^2 and the W dot products in
// float64 (each product of two floats is exact there), and writes d over the target row. X, theta and
// prev are each touched once.
//
// What keeps it at memory speed: every sum runs in many independent lanes (a single running sum waits
// 3-4 cycles per add), and the dot products read five rows of X in one sweep of the block, so five streams
// are in flight and each value of d is loaded once per five products. On x86-64 with GCC the block
// routine also has an AVX2 build, chosen when the module loads on a CPU that has it.
//
// Built with window_spectra.cpp into one extension by tracking/_native.py; this file holds the module's
// Python bindings.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

// On x86-64 with GCC and glibc, the block routine is compiled for AVX2 and for the baseline, and the
// loader picks the one this CPU runs (an ifunc); elsewhere it is compiled once, for the baseline.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define SE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SE_CLONES
#endif

// Independent partial sums: a single running sum makes every add wait for the previous one (3-4 cycles),
// which caps a dot product far below memory speed. L separate lanes are L independent chains that the
// compiler keeps in vector registers. The order of the adds is written out, so no -ffast-math is needed.
constexpr int64_t L = 32;

template <int64_t N>
static inline double lane_total(const double* acc) {
  double s = 0.0;
  for (int64_t j = 0; j < N; ++j) s += acc[j];
  return s;
}

// out[r] = <d, row r> for R rows of X at once (rows P apart): R streams in flight instead of one, and each
// value of d loaded once for R products. Each product of two floats is exact in double (24 + 24 < 53
// mantissa bits) and the sums run in double, so the result is the dot product of the stored values to
// about n * 1e-16 of sum |d_i x_i|, whatever their scale (float32 would lose small singular values to
// cancellation, and underflow or overflow products of updates near 1e-30 or 1e19).
template <int R>
static inline void dot_rows(const float* __restrict d, const float* x0, int64_t P, int64_t n,
                            double* out) {
  constexpr int64_t M = 8;  // lanes per row
  alignas(64) double acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) acc[r][j] = 0.0;
  int64_t k = 0;
  for (; k + M <= n; k += M)
    for (int r = 0; r < R; ++r) {
      const float* __restrict xr = x0 + r * P + k;
      for (int64_t j = 0; j < M; ++j)
        acc[r][j] += static_cast<double>(d[k + j]) * static_cast<double>(xr[j]);
    }
  for (int r = 0; r < R; ++r) {
    double s = lane_total<M>(acc[r]);
    for (int64_t i = k; i < n; ++i) s += static_cast<double>(d[i]) * static_cast<double>(x0[r * P + i]);
    out[r] = s;
  }
}

constexpr int ROWS_PER_SWEEP = 5;

// One block of n <= B values: d = theta - prev (prev refreshed to theta), out[w] = <d, row w of X>
// (the target row too: its old value is b, the update leaving), out[W] = |d|^2, then d over the target row.
SE_CLONES
static void push_block(const float* __restrict th, float* __restrict pv, float* __restrict d,
                       float* x, int64_t P, int64_t W, int64_t col, int64_t target, int64_t n,
                       double* __restrict out) {
  alignas(64) double acc[L];
  for (int64_t j = 0; j < L; ++j) acc[j] = 0.0;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    for (int64_t j = 0; j < L; ++j) {
      const float v = th[i + j] - pv[i + j];
      pv[i + j] = th[i + j];
      d[i + j] = v;
      acc[j] += static_cast<double>(v) * static_cast<double>(v);
    }
  }
  double dd = lane_total<L>(acc);
  for (; i < n; ++i) {
    const float v = th[i] - pv[i];
    pv[i] = th[i];
    d[i] = v;
    dd += static_cast<double>(v) * static_cast<double>(v);
  }
  int64_t w = 0;
  for (; w + ROWS_PER_SWEEP <= W; w += ROWS_PER_SWEEP)
    dot_rows<ROWS_PER_SWEEP>(d, x + w * P + col, P, n, out + w);
  for (; w < W; ++w) dot_rows<1>(d, x + w * P + col, P, n, out + w);
  out[W] = dd;
  std::copy(d, d + n, x + target * P + col);
}

// segments s: theta[s] and prev[s] are flat contiguous float32 CPU tensors of one length; their values
// sit in columns [cols[s], cols[s] + n) of X (W x P, float32, contiguous); their dot products belong to
// group rows[s]. grams (n_groups x W x W, float64) are the groups' Grams indexed by slot: row and column
// `target` of each are overwritten with the group's dot products and |a|^2 (the Python side zeroes them
// again if it rejects the update). Returns W + 2 floats: the W dot products <x_w, a> summed over groups
// (slot order; at `target`, the leaving update's a^T b), |a|^2, and the sum of the groups' old diagonal
// entries at `target` (|b|^2 of the leaving update, read before the overwrite).
std::vector<double> fused_push(const std::vector<at::Tensor>& thetas, const std::vector<at::Tensor>& prevs,
                               const std::vector<int64_t>& cols, const std::vector<int64_t>& rows,
                               at::Tensor X, int64_t target, at::Tensor grams) {
  TORCH_CHECK(X.is_contiguous() && X.scalar_type() == at::kFloat && X.dim() == 2, "X must be (W, P) float32");
  const int64_t W = X.size(0), P = X.size(1);
  TORCH_CHECK(grams.scalar_type() == at::kDouble && grams.is_contiguous() && grams.dim() == 3 &&
              grams.size(1) == W && grams.size(2) == W, "grams must be (n_groups, W, W) float64");
  TORCH_CHECK(target >= 0 && target < W, "target slot outside the window");
  const int64_t n_groups = grams.size(0);
  constexpr int64_t B = 8192;
  TORCH_CHECK(prevs.size() == thetas.size() && cols.size() == thetas.size() && rows.size() == thetas.size(),
              "one prev, column and row per segment");
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (segment, first element)
  for (size_t s = 0; s < thetas.size(); ++s) {
    const int64_t n = thetas[s].numel();
    TORCH_CHECK(prevs[s].numel() == n && cols[s] >= 0 && cols[s] + n <= P, "segment does not fit X");
    TORCH_CHECK(rows[s] >= 0 && rows[s] < n_groups, "segment's group is outside grams");
    for (int64_t lo = 0; lo < n; lo += B) blocks.emplace_back(static_cast<int64_t>(s), lo);
  }
  const int64_t nb = static_cast<int64_t>(blocks.size());
  std::vector<double> out(static_cast<size_t>(nb * (W + 1)), 0.0);
  float* x = X.data_ptr<float>();
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    alignas(64) float d[B];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t s = blocks[b].first, lo = blocks[b].second;
      const int64_t n = std::min(B, thetas[s].numel() - lo);
      push_block(thetas[s].data_ptr<float>() + lo, prevs[s].data_ptr<float>() + lo, d, x, P, W,
                 cols[s] + lo, target, n, out.data() + b * (W + 1));
    }
  });
  std::vector<double> part(static_cast<size_t>(n_groups * (W + 1)), 0.0);  // per group, in block order
  for (int64_t b = 0; b < nb; ++b) {
    double* row = part.data() + rows[blocks[b].first] * (W + 1);
    const double* o = out.data() + b * (W + 1);
    for (int64_t w = 0; w <= W; ++w) row[w] += o[w];
  }
  std::vector<double> result(static_cast<size_t>(W + 2), 0.0);
  double* g = grams.data_ptr<double>();
  for (int64_t k = 0; k < n_groups; ++k) {
    double* gk = g + k * W * W;
    const double* pk = part.data() + k * (W + 1);
    result[W + 1] += gk[target * W + target];
    for (int64_t w = 0; w <= W; ++w) result[w] += pk[w];
    for (int64_t j = 0; j < W; ++j) gk[target * W + j] = gk[j * W + target] = pk[j];
    gk[target * W + target] = pk[W];
  }
  return result;
}


// Defined in window_spectra.cpp.
py::object window_spectra(at::Tensor grams, const std::vector<int64_t>& order, bool with_groups,
                          bool with_half);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_push", &fused_push, "One push of a float32 CPU window (see the top of this file).");
  m.def("window_spectra", &window_spectra, "The record's eigen stage (see window_spectra.cpp).");
}

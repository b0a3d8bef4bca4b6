// The eigen stage of a record (tracking/_spectra.py): the spectra of the window's Gram matrices.
//
// Why compiled: at W = 10 each NumPy call of this stage costs 10-20 us right after a training step (its
// code and data are out of cache), and the stage made about fifteen of them. Here it is one call:
// Householder reduction to tridiagonal form and implicit symmetric QR steps with a Wilkinson shift
// (Golub & Van Loan, Algs 8.3.1 and 8.3.3), which for these small matrices touches a few kilobytes of
// code and data. tracking/_spectra.py's window_spectra_numpy (LAPACK) is its reference and fallback.

#include <torch/extension.h>

#include <cmath>
#include <limits>

// Entries of the scaled matrix (max |a_ij| = 1) below this are dropped: far below the eps * |A| error of
// any backward-stable solver, and squares of anything above it are normal numbers, so no reflector or
// shift divides by an underflowed or subnormal value (which gave beta = inf on rank-deficient Grams,
// whose trailing blocks shrink by ~1e-16 per Householder step).
constexpr double NEGLIGIBLE = 1e-150;

// Eigenvalues (and, with q != nullptr, eigenvectors as the columns of q) of the symmetric n x n matrix a
// (row-major, overwritten), in no particular order. Householder reduction to tridiagonal form, then
// implicit symmetric QR steps with a Wilkinson shift on the unreduced blocks (Golub & Van Loan, Algs
// 8.3.1-8.3.3). The matrix is scaled to max |a_ij| = 1 first, so that no square in the reflectors or
// rotations can overflow. Returns false if an intermediate is not finite or the QR iteration did not
// converge within 30 n steps (the caller then falls back to LAPACK).
static bool symmetric_eigen(double* a, int64_t n, double* lam, double* q) {
  if (q != nullptr) {
    for (int64_t i = 0; i < n * n; ++i) q[i] = 0.0;
    for (int64_t i = 0; i < n; ++i) q[i * n + i] = 1.0;
  }
  double scale = 0.0;
  for (int64_t i = 0; i < n * n; ++i) scale = std::max(scale, std::abs(a[i]));
  if (scale == 0.0) {
    for (int64_t i = 0; i < n; ++i) lam[i] = 0.0;
    return true;
  }
  for (int64_t i = 0; i < n * n; ++i) a[i] /= scale;

  double v[64], p[64], d[64], e[64];
  for (int64_t k = 0; k + 2 < n; ++k) {
    // The reflector H = I - beta v v^T that zeroes a[k+2:, k] against a[k+1, k].
    double tail = 0.0;
    for (int64_t i = k + 2; i < n; ++i) { v[i] = a[i * n + k]; tail += v[i] * v[i]; }
    if (tail <= NEGLIGIBLE * NEGLIGIBLE) continue;  // this column is tridiagonal, to far below round-off
    const double head = a[(k + 1) * n + k];
    const double norm = std::sqrt(tail + head * head);
    const double alpha = head >= 0.0 ? -norm : norm;  // a[k+1, k] after the reflection
    v[k + 1] = head - alpha;
    const double beta = 2.0 / (tail + v[k + 1] * v[k + 1]);
    // A <- H A H on the trailing block: p = beta A v, w = p - (beta/2)(p.v) v, A <- A - v w^T - w v^T.
    double pv = 0.0;
    for (int64_t i = k + 1; i < n; ++i) {
      double s = 0.0;
      for (int64_t j = k + 1; j < n; ++j) s += a[i * n + j] * v[j];
      p[i] = beta * s;
      pv += p[i] * v[i];
    }
    const double half = 0.5 * beta * pv;
    for (int64_t i = k + 1; i < n; ++i) p[i] -= half * v[i];
    for (int64_t i = k + 1; i < n; ++i)
      for (int64_t j = k + 1; j < n; ++j) a[i * n + j] -= v[i] * p[j] + p[i] * v[j];
    a[(k + 1) * n + k] = a[k * n + k + 1] = alpha;
    if (q != nullptr)  // Q <- Q H
      for (int64_t r = 0; r < n; ++r) {
        double s = 0.0;
        for (int64_t j = k + 1; j < n; ++j) s += q[r * n + j] * v[j];
        s *= beta;
        for (int64_t j = k + 1; j < n; ++j) q[r * n + j] -= s * v[j];
      }
  }
  for (int64_t i = 0; i < n; ++i) d[i] = a[i * n + i];
  for (int64_t i = 0; i + 1 < n; ++i) e[i] = a[(i + 1) * n + i];

  const double eps = std::numeric_limits<double>::epsilon();
  int64_t hi = n - 1, steps = 0;
  while (hi > 0) {
    for (int64_t i = 0; i < hi; ++i)  // deflate negligible off-diagonals (relative, or absolutely tiny)
      if (std::abs(e[i]) <= eps * (std::abs(d[i]) + std::abs(d[i + 1])) || std::abs(e[i]) <= NEGLIGIBLE)
        e[i] = 0.0;
    while (hi > 0 && e[hi - 1] == 0.0) --hi;
    if (hi == 0) break;
    int64_t lo = hi - 1;  // the unreduced block is [lo, hi]
    while (lo > 0 && e[lo - 1] != 0.0) --lo;
    if (++steps > 30 * n) return false;
    // Wilkinson shift: the eigenvalue of the trailing 2 x 2 nearer d[hi].
    const double delta = 0.5 * (d[hi - 1] - d[hi]), b = e[hi - 1];
    const double r = std::sqrt(delta * delta + b * b);
    const double mu = d[hi] - b * b / (delta + (delta >= 0.0 ? r : -r));  // |b| > NEGLIGIBLE: no 0/0
    if (!std::isfinite(mu)) return false;
    double x = d[lo] - mu, z = e[lo];
    for (int64_t k = lo; k < hi; ++k) {
      // The Givens rotation G(k, k+1) with [c -s; s c]^T [x; z] = [h; 0], chasing the bulge down. If
      // x^2 + z^2 underflows, both are below 1e-154 and the rotation is skipped: an error of that size.
      const double h = std::sqrt(x * x + z * z);
      const double c = h > 0.0 ? x / h : 1.0, s = h > 0.0 ? -z / h : 0.0;
      if (k > lo) e[k - 1] = c * e[k - 1] - s * z;
      const double dk = d[k], dk1 = d[k + 1], ek = e[k];
      d[k] = c * c * dk - 2.0 * c * s * ek + s * s * dk1;
      d[k + 1] = s * s * dk + 2.0 * c * s * ek + c * c * dk1;
      e[k] = c * s * (dk - dk1) + (c * c - s * s) * ek;
      if (k + 1 < hi) {
        x = e[k];
        z = -s * e[k + 1];  // the new bulge at (k+2, k)
        e[k + 1] *= c;
      }
      if (q != nullptr)
        for (int64_t r2 = 0; r2 < n; ++r2) {
          const double t1 = q[r2 * n + k], t2 = q[r2 * n + k + 1];
          q[r2 * n + k] = c * t1 - s * t2;
          q[r2 * n + k + 1] = s * t1 + c * t2;
        }
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(d[i])) return false;
    lam[i] = d[i] * scale;
  }
  return true;
}

// Sort the eigenvalues descending (insertion sort: n <= 64), carrying the columns of q along if given.
static void sort_descending(double* lam, int64_t n, double* q) {
  for (int64_t i = 1; i < n; ++i)
    for (int64_t j = i; j > 0 && lam[j - 1] < lam[j]; --j) {
      std::swap(lam[j - 1], lam[j]);
      if (q != nullptr)
        for (int64_t r = 0; r < n; ++r) std::swap(q[r * n + j - 1], q[r * n + j]);
    }
}

// Descending eigenvalues of (m + m^T)/2 for the n x n matrix m, and its eigenvectors if q is given.
static bool descending_eigen(const double* m, int64_t n, double* lam, double* q) {
  double a[64 * 64];
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) a[i * n + j] = 0.5 * (m[i * n + j] + m[j * n + i]);
  if (!symmetric_eigen(a, n, lam, q)) return false;
  sort_descending(lam, n, q);
  return true;
}

// grams: (n_groups, S, S) float64, each group's Gram indexed by slot; order: the W slots of the window,
// oldest first. Returns None (the caller falls back to NumPy) for W > 64, a non-finite entry, or no
// convergence; else (total, vectors, groups, half):
//   total: the W descending eigenvalues of G = sum of the groups' Grams in time order;
//   vectors: (W, W) tensor, its eigenvectors as columns in the same order;
//   groups: each group's W descending eigenvalues (None unless with_groups);
//   half: (lam1, lam2, cross) of the halves G11 = G[:h, :h] and G22 = G[W-h:, W-h:], h = W // 2, with
//         cross_j = u1_j^T G12 u2_j, G12 = G[:h, W-h:] (None unless with_half and W >= 4).
py::object window_spectra(at::Tensor grams, const std::vector<int64_t>& order, bool with_groups,
                          bool with_half) {
  TORCH_CHECK(grams.scalar_type() == at::kDouble && grams.is_contiguous() && grams.dim() == 3 &&
              grams.size(1) == grams.size(2), "grams must be (n_groups, S, S) contiguous float64");
  const int64_t n_groups = grams.size(0), slots = grams.size(1), w = static_cast<int64_t>(order.size());
  if (w < 2 || w > 64) return py::none();
  for (int64_t slot : order) TORCH_CHECK(slot >= 0 && slot < slots, "a slot of the order is outside grams");
  const double* src = grams.data_ptr<double>();
  std::vector<double> g(static_cast<size_t>(n_groups * w * w)), total(static_cast<size_t>(w * w), 0.0);
  for (int64_t k = 0; k < n_groups; ++k)
    for (int64_t i = 0; i < w; ++i)
      for (int64_t j = 0; j < w; ++j) {
        const double value = src[(k * slots + order[i]) * slots + order[j]];
        if (!std::isfinite(value)) return py::none();
        g[(k * w + i) * w + j] = value;
        total[i * w + j] += value;
      }

  at::Tensor vectors = at::empty({w, w}, grams.options());
  std::vector<double> lam(static_cast<size_t>(w));
  if (!descending_eigen(total.data(), w, lam.data(), vectors.data_ptr<double>())) return py::none();

  py::object groups = py::none();
  if (with_groups) {
    py::list rows;
    std::vector<double> row(static_cast<size_t>(w));
    for (int64_t k = 0; k < n_groups; ++k) {
      if (!descending_eigen(g.data() + k * w * w, w, row.data(), nullptr)) return py::none();
      rows.append(py::cast(row));
    }
    groups = rows;
  }

  py::object half = py::none();
  if (with_half && w >= 4) {
    const int64_t h = w / 2, off = w - h;
    double g11[32 * 32], g22[32 * 32], u1[32 * 32], u2[32 * 32];
    std::vector<double> lam1(static_cast<size_t>(h)), lam2(static_cast<size_t>(h)), cross(static_cast<size_t>(h));
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < h; ++j) {
        g11[i * h + j] = total[i * w + j];
        g22[i * h + j] = total[(off + i) * w + off + j];
      }
    if (!descending_eigen(g11, h, lam1.data(), u1) || !descending_eigen(g22, h, lam2.data(), u2))
      return py::none();
    for (int64_t j = 0; j < h; ++j) {  // u1_j^T G12 u2_j
      double s = 0.0;
      for (int64_t a = 0; a < h; ++a) {
        double row = 0.0;
        for (int64_t b = 0; b < h; ++b) row += total[a * w + off + b] * u2[b * h + j];
        s += u1[a * h + j] * row;
      }
      cross[static_cast<size_t>(j)] = s;
    }
    half = py::make_tuple(lam1, lam2, cross);
  }
  return py::make_tuple(lam, vectors, groups, half);
}

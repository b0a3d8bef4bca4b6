"""Curvature along the trajectory: Hessian–vector products, Lanczos top eigenvalues, and projections.

The thesis explains the gap through the loss Hessian H: the Krylov bound k* ≤ #{j : h_j ≳ 1/(ηW)}
(Prop 5.5, eq 12) needs H's top eigenvalues, and the gap-flow equation (Thm 14.2, eq 68) needs, for each
trajectory direction v_j, its curvature h_j = v_jᵀ H v_j and its gradient component G_j = ⟨v_j, ∇L⟩.
This module measures those on any model and loss:

- :class:`HessianOperator` turns a model and a loss closure into the map v ↦ H v over the flattened
  trainable parameters (double backward on one retained graph: the loss and its gradient are evaluated
  once, each product costs about one extra backward pass);
- :func:`lanczos` finds the top-k eigenvalues of any symmetric operator with full reorthogonalisation;
- :func:`rayleigh_quotients` and :func:`gradient_projections` give h_j and G_j along given directions,
  e.g. the monitor's :meth:`~spectral_edge.tracking.SpectralMonitor.principal_directions`.

Flattening follows the order of the parameters passed in: pass ``monitor.monitored_parameters()`` to
use the monitor's own order, so that directions from the monitor line up with H's coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]


class HessianOperator:
    """v ↦ H v for the Hessian of ``loss_fn()`` with respect to a model's trainable parameters.

    The loss is evaluated once, at construction, at the parameters' current values; the gradient graph
    is kept so that each product is one backward pass through it. Build a new operator after the
    parameters change. Put the model in ``eval()`` mode (or use a deterministic loss) so that dropout
    does not make H random. The loss and its gradient graph are built with ``scaled_dot_product_attention``
    on its plain math kernel: the fused (flash, memory-efficient) kernels have no second derivative, and
    the math kernel computes the same function.

    Args:
        model_or_params: an ``nn.Module`` (its parameters with ``requires_grad``), or an iterable of
            tensors or of (name, tensor) pairs, in the order that defines the flat coordinates.
        loss_fn: a zero-argument callable returning the scalar loss (it closes over the batch).

    Example:
        >>> theta = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
        >>> H = HessianOperator([theta], lambda: 0.5 * theta @ A @ theta)
        >>> H(torch.tensor([1.0, 0.0])).tolist(), H.gradient.tolist()
        ([3.0, 1.0], [5.0, 5.0])
    """

    def __init__(
        self,
        model_or_params: torch.nn.Module | Iterable[Any] | Mapping[str, torch.Tensor],
        loss_fn: Callable[[], torch.Tensor],
    ) -> None:
        self.names, self.params = _named_trainable(model_or_params)
        if not self.params:
            raise ValueError("no trainable parameters: every tensor passed has requires_grad=False")
        with torch.enable_grad(), _attention_with_second_derivative():
            loss = loss_fn()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        missing = [n for n, g in zip(self.names, grads, strict=True) if g is None]
        if missing:
            raise ValueError(
                f"the loss does not depend on {len(missing)} parameter tensors ({', '.join(missing[:5])}); "
                "pass only the parameters the loss uses, or freeze the others (requires_grad=False)"
            )
        self.loss = float(loss.detach())
        self._grad = torch.cat([g.reshape(-1) for g in grads])  # (P,) with its graph
        self._numels = [p.numel() for p in self.params]
        self.gradient = self._grad.detach().clone()  # ∇L, flat (P,)
        self.products = 0  # Hessian–vector products taken so far

    @property
    def dim(self) -> int:
        """P, the number of flattened coordinates."""
        return self._grad.numel()

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat (P,) vector, in the parameters' dtype and device (detached)."""
        if v.shape != (self.dim,):
            raise ValueError(f"expected a flat vector of shape ({self.dim},), got {tuple(v.shape)}")
        v = v.to(dtype=self._grad.dtype, device=self._grad.device)
        # The graph was recorded on the math attention kernel, whose backward has a derivative.
        parts = torch.autograd.grad(
            self._grad, self.params, grad_outputs=v, retain_graph=True, allow_unused=True
        )
        self.products += 1
        return torch.cat(
            [
                torch.zeros(n, dtype=v.dtype, device=v.device) if part is None else part.reshape(-1)
                for part, n in zip(parts, self._numels, strict=True)
            ]
        ).detach()


def _attention_with_second_derivative() -> Any:
    """``scaled_dot_product_attention`` restricted to its math kernel, the one with a double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@dataclass(frozen=True)
class LanczosResult:
    """Top eigenpairs of a symmetric operator from :func:`lanczos`."""

    eigenvalues: np.ndarray  # (k,) descending (largest algebraic first), float64
    eigenvectors: torch.Tensor | None  # (k, dim) unit Ritz vectors, or None when not requested
    residuals: np.ndarray  # (k,) ‖A y − θ y‖ bounds |β_m s_m|: small means converged
    iterations: int  # Krylov dimension reached (fewer than asked if an invariant subspace was found)


def lanczos(
    matvec: MatVec,
    dim: int,
    *,
    k: int = 5,
    iterations: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    return_vectors: bool = False,
) -> LanczosResult:
    """The k largest eigenvalues of a symmetric operator by Lanczos with full reorthogonalisation.

    Each iteration takes one product ``matvec(q)`` and orthogonalises the new vector against all previous
    ones twice (classical Gram–Schmidt, repeated), so the Ritz values do not duplicate: memory is
    ``iterations × dim`` values. The tridiagonal problem is solved in float64.

    Args:
        matvec: v ↦ A v on flat (dim,) tensors (e.g. a :class:`HessianOperator`).
        dim: the operator's size.
        k: eigenvalues wanted (largest algebraic first, so a negative curvature is ranked last).
        iterations: Krylov dimension; default ``min(dim, max(2k + 20, 40))``.
        seed: seed of the random unit start vector.
        dtype: dtype of the Lanczos vectors; products are taken in the operator's own dtype.
        device: device of the Lanczos vectors (default CPU).
        return_vectors: also return the Ritz vectors (k, dim).

    Example:
        >>> A = torch.diag(torch.cat([torch.tensor([300.0, 200.0, 150.0]), torch.linspace(0, 1, 997)]).double())
        >>> result = lanczos(lambda v: A @ v, 1000, k=3)
        >>> result.eigenvalues.round(8).tolist(), bool(result.residuals.max() < 1e-6)
        ([300.0, 200.0, 150.0], True)
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, dim={dim}], got {k}")
    m = min(dim, max(2 * k + 20, 40)) if iterations is None else iterations
    if not k <= m <= dim:
        raise ValueError(f"iterations must be in [k={k}, dim={dim}], got {m}")
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    q /= torch.linalg.vector_norm(q)
    basis = torch.zeros(m, dim, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for j in range(m):
        basis[j] = q
        w = matvec(q).to(dtype=dtype, device=basis.device)
        alpha = float(torch.dot(q, w))
        alphas.append(alpha)
        for _ in range(2):  # "twice is enough" (Kahan–Parlett) for full reorthogonalisation
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(alpha), beta)
        if j == m - 1 or beta <= 1e-12 * max(scale, np.finfo(float).tiny):
            break  # the Krylov space is complete, or invariant: the Ritz values are exact
        betas.append(beta)
        q = w / beta
    n = len(alphas)
    tri = np.diag(alphas) + np.diag(betas[: n - 1], 1) + np.diag(betas[: n - 1], -1)
    theta, s = np.linalg.eigh(tri)  # ascending
    order = np.argsort(theta)[::-1][: min(k, n)]
    last_beta = beta if n < dim else 0.0
    residuals = np.abs(last_beta * s[-1, order])
    vectors = None
    if return_vectors:
        coeffs = torch.as_tensor(s[:, order].T.copy(), dtype=dtype, device=basis.device)  # (k, n)
        vectors = coeffs @ basis[:n]
    return LanczosResult(
        eigenvalues=theta[order].copy(), eigenvectors=vectors, residuals=residuals, iterations=n
    )


def rayleigh_quotients(matvec: MatVec, directions: torch.Tensor) -> np.ndarray:
    """h_j = v_jᵀ A v_j / v_jᵀ v_j for each row of ``directions`` (k, dim): one product per direction.

    With A = H and the trajectory's principal directions this is the curvature h_j of eq 38 and eq 68.

    Example:
        >>> A = torch.diag(torch.tensor([4.0, 1.0]))
        >>> rayleigh_quotients(lambda v: A @ v, torch.tensor([[1.0, 0.0], [1.0, 1.0]])).tolist()
        [4.0, 2.5]
    """
    rows = _rows(directions)
    out = np.empty(rows.shape[0])
    for j, v in enumerate(rows):
        av = matvec(v).to(dtype=torch.float64, device=v.device)
        v64 = v.to(torch.float64)
        out[j] = float(torch.dot(v64, av) / torch.dot(v64, v64))
    return out


def gradient_projections(gradient: torch.Tensor, directions: torch.Tensor) -> np.ndarray:
    """G_j = ⟨v_j, ∇L⟩ / ‖v_j‖ for each row of ``directions`` (k, P): the driving force of eq 67–68.

    Example:
        >>> gradient_projections(torch.tensor([3.0, 4.0]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])).tolist()
        [3.0, 4.0]
    """
    rows = _rows(directions).to(torch.float64)
    g = gradient.reshape(-1).to(dtype=torch.float64, device=rows.device)
    if g.numel() != rows.shape[1]:
        raise ValueError(f"the gradient has {g.numel()} elements, the directions {rows.shape[1]}")
    return (rows @ g / torch.linalg.vector_norm(rows, dim=1)).cpu().numpy()


def _rows(directions: torch.Tensor) -> torch.Tensor:
    rows = torch.as_tensor(directions)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"directions must be a (k, P) tensor with k >= 1, got shape {tuple(rows.shape)}")
    if not torch.all(torch.linalg.vector_norm(rows.to(torch.float64), dim=1) > 0):
        raise ValueError("a direction is the zero vector")
    return rows


def _named_trainable(obj: Any) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(obj, torch.nn.Module):
        pairs = list(obj.named_parameters())
    elif isinstance(obj, Mapping):
        pairs = list(obj.items())
    else:
        items = list(obj)
        pairs = [item if isinstance(item, tuple) else (f"param_{i}", item) for i, item in enumerate(items)]
    pairs = [(n, t) for n, t in pairs if t.requires_grad]
    return [n for n, _ in pairs], [t for _, t in pairs]

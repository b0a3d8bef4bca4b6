"""Hessian–vector products, Lanczos and the h_j / G_j projections against dense float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from spectral_edge.curvature import HessianOperator, gradient_projections, lanczos, rayleigh_quotients


def planted_symmetric(dim: int, top: list[float], seed: int, *, negative: bool = False) -> np.ndarray:
    """Q diag(λ) Qᵀ with the given top eigenvalues above a bulk in [0, 1] (or [-1, 1])."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    bulk = rng.uniform(-1.0 if negative else 0.0, 1.0, dim - len(top))
    lam = np.concatenate([top, bulk])
    return (q * lam) @ q.T


def operator(a: np.ndarray):
    at = torch.as_tensor(a)
    return lambda v: at @ v.to(torch.float64)


# ------------------------------------------------------------------ Lanczos


@pytest.mark.parametrize("seed", range(5))
def test_lanczos_finds_planted_top_eigenvalues(seed):
    a = planted_symmetric(300, [50.0, 20.0, 10.0, 5.0, 3.0], seed)
    result = lanczos(operator(a), 300, k=5, seed=seed)
    expected = np.sort(np.linalg.eigvalsh(a))[::-1][:5]
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=1e-9)
    assert result.residuals.max() < 1e-6 * expected[0]


def test_lanczos_ranks_by_algebraic_value_with_negative_curvature():
    """A saddle: the most negative eigenvalue is large in magnitude but is ranked last, not first."""
    a = planted_symmetric(200, [8.0, 4.0], seed=3, negative=True)
    a -= 30.0 * np.outer(np.eye(200)[7], np.eye(200)[7])
    result = lanczos(operator(a), 200, k=2, iterations=200)
    np.testing.assert_allclose(result.eigenvalues, np.sort(np.linalg.eigvalsh(a))[::-1][:2], rtol=1e-10)


def test_lanczos_full_dimension_is_exact():
    a = planted_symmetric(8, [3.0], seed=1)
    result = lanczos(operator(a), 8, k=8, iterations=8)
    np.testing.assert_allclose(
        result.eigenvalues, np.sort(np.linalg.eigvalsh(a))[::-1], rtol=1e-10, atol=1e-12
    )


def test_lanczos_stops_on_an_invariant_subspace():
    """A rank-two operator: the Krylov space closes after two products and the values are exact."""
    rng = np.random.default_rng(0)
    u, w = np.linalg.qr(rng.standard_normal((50, 2)))[0].T
    a = 5.0 * np.outer(u, u) + 2.0 * np.outer(w, w)
    result = lanczos(operator(a), 50, k=2, iterations=40)
    assert result.iterations <= 3
    np.testing.assert_allclose(result.eigenvalues, [5.0, 2.0], rtol=1e-12)


def test_lanczos_ritz_vectors_are_unit_eigenvectors():
    a = planted_symmetric(120, [40.0, 30.0, 9.0], seed=4)
    result = lanczos(operator(a), 120, k=3, return_vectors=True)
    vectors = result.eigenvectors.numpy()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-10)
    for theta, v in zip(result.eigenvalues, vectors, strict=True):
        assert np.linalg.norm(a @ v - theta * v) < 1e-6 * theta


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"k": 0}, "k must be"), ({"k": 11}, "k must be"), ({"k": 3, "iterations": 2}, "iterations must be")],
)
def test_lanczos_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lanczos(operator(np.eye(10)), 10, **kwargs)


# ------------------------------------------------------------------ Hessian–vector products


def test_hvp_of_a_quadratic_is_its_matrix():
    """L = ½ θᵀAθ + bᵀθ over two tensors: H = A and ∇L = Aθ + b, exactly."""
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, dtype=torch.float64, requires_grad=True)
    a = torch.as_tensor(planted_symmetric(17, [6.0, 2.0], seed=2))
    b = torch.randn(17, dtype=torch.float64)

    def loss():
        theta = torch.cat([w.reshape(-1), c])
        return 0.5 * theta @ a @ theta + b @ theta

    hess = HessianOperator([("w", w), ("c", c)], loss)
    theta = torch.cat([w.detach().reshape(-1), c.detach()])
    torch.testing.assert_close(hess.gradient, a @ theta + b)
    for _ in range(3):
        v = torch.randn(17, dtype=torch.float64)
        torch.testing.assert_close(hess(v), a @ v)
    assert hess.products == 3 and hess.dim == 17
    top = lanczos(hess, hess.dim, k=2, iterations=17)
    np.testing.assert_allclose(top.eigenvalues, [6.0, 2.0], rtol=1e-10)


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 6)
        self.out = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))


def dense_hessian(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The full (P, P) Hessian of the cross-entropy by torch.autograd.functional.hessian on flat θ."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            n = int(np.prod(shape))
            params[name] = theta[offset : offset + n].reshape(shape)
            offset += n
        return torch.nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


@pytest.fixture
def tiny_problem():
    torch.manual_seed(1)
    model = TinyNet().double()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    return model, x, y


def test_hvp_of_a_network_matches_the_dense_hessian(tiny_problem):
    model, x, y = tiny_problem
    hess = HessianOperator(model, lambda: torch.nn.functional.cross_entropy(model(x), y))
    dense = dense_hessian(model, x, y)
    assert hess.dim == dense.shape[0] == sum(p.numel() for p in model.parameters())
    for seed in range(3):
        v = torch.randn(hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(hess(v), dense @ v, rtol=1e-10, atol=1e-12)
    # Lanczos over the whole space gives the dense spectrum. The cross-entropy Hessian is singular (the
    # softmax ignores a common shift of the logits), so the Krylov space closes early: the values it
    # does not return are the zero eigenvalues.
    expected = np.sort(np.linalg.eigvalsh(dense.numpy()))[::-1]
    exact = lanczos(hess, hess.dim, k=hess.dim, iterations=hess.dim)
    found = np.sort(exact.eigenvalues)[::-1]
    assert exact.iterations < hess.dim
    nonzero = expected[np.abs(expected) > 1e-10]
    np.testing.assert_allclose(np.sort(found[np.abs(found) > 1e-10]), np.sort(nonzero), rtol=1e-8)
    top = lanczos(hess, hess.dim, k=2, iterations=40)
    np.testing.assert_allclose(top.eigenvalues, expected[:2], rtol=1e-6)


def test_hvp_in_float32_with_float64_lanczos_vectors(tiny_problem):
    model, x, y = tiny_problem
    dense = dense_hessian(model, x, y)
    model32 = model.float()
    hess = HessianOperator(model32, lambda: torch.nn.functional.cross_entropy(model32(x.float()), y))
    v = torch.randn(hess.dim, dtype=torch.float64)
    assert hess(v).dtype == torch.float32
    torch.testing.assert_close(hess(v).double(), dense @ v, rtol=1e-4, atol=1e-5)


def test_frozen_parameters_are_left_out(tiny_problem):
    model, x, y = tiny_problem
    model.hidden.weight.requires_grad_(False)
    hess = HessianOperator(model, lambda: torch.nn.functional.cross_entropy(model(x), y))
    assert "hidden.weight" not in hess.names
    assert hess.dim == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_hvp_errors(tiny_problem):
    model, x, y = tiny_problem
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend on 1 parameter"):
        HessianOperator([*model.parameters(), unused], lambda: torch.nn.functional.cross_entropy(model(x), y))
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator(model, lambda: model(x))
    with pytest.raises(ValueError, match="no trainable parameters"):
        HessianOperator([torch.zeros(2)], lambda: torch.tensor(0.0))
    hess = HessianOperator(model, lambda: torch.nn.functional.cross_entropy(model(x), y))
    with pytest.raises(ValueError, match="flat vector"):
        hess(torch.zeros(hess.dim + 1))


# ------------------------------------------------------------------ projections


def test_rayleigh_quotients_and_gradient_projections_match_dense(tiny_problem):
    model, x, y = tiny_problem
    hess = HessianOperator(model, lambda: torch.nn.functional.cross_entropy(model(x), y))
    dense = dense_hessian(model, x, y).numpy()
    rng = np.random.default_rng(5)
    directions = rng.standard_normal((4, hess.dim)) * rng.uniform(0.1, 10.0, (4, 1))
    h = rayleigh_quotients(hess, torch.as_tensor(directions))
    expected_h = [d @ dense @ d / (d @ d) for d in directions]
    np.testing.assert_allclose(h, expected_h, rtol=1e-10)
    g = gradient_projections(hess.gradient, torch.as_tensor(directions))
    expected_g = directions @ hess.gradient.numpy() / np.linalg.norm(directions, axis=1)
    np.testing.assert_allclose(g, expected_g, rtol=1e-12)


def test_projection_errors():
    with pytest.raises(ValueError, match="zero vector"):
        rayleigh_quotients(lambda v: v, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="elements"):
        gradient_projections(torch.zeros(4), torch.ones(1, 3))


def test_curvature_along_the_monitors_directions():
    """h_j and G_j along mon.principal_directions() equal dense projections in the monitor's coordinates."""
    torch.manual_seed(3)
    model = TinyNet().double()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    from spectral_edge import SpectralMonitor

    mon = SpectralMonitor(model, window=4, storage_dtype=torch.float64, groups="top")
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        mon.step()
    directions, sigma = mon.principal_directions(k=2)
    assert directions.shape == (2, mon.n_params) and sigma[0] >= sigma[1] > 0
    named = mon.monitored_parameters()
    hess = HessianOperator(named, lambda: torch.nn.functional.cross_entropy(model(x), y))
    # The dense Hessian in the monitor's coordinate order: permute the model-order one.
    dense = dense_hessian(model, x, y).numpy()
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = np.arange(start, start + p.numel())
        start += p.numel()
    perm = np.concatenate([offsets[name] for name, _ in named])
    dense_mon = dense[np.ix_(perm, perm)]
    v = directions.numpy()
    np.testing.assert_allclose(
        rayleigh_quotients(hess, directions), [d @ dense_mon @ d for d in v], rtol=1e-9
    )
    np.testing.assert_allclose(
        gradient_projections(hess.gradient, directions), v @ hess.gradient.numpy(), rtol=1e-9, atol=1e-15
    )


def test_attention_has_second_derivatives_without_the_caller_choosing_its_kernel():
    """The operator records scaled_dot_product_attention on its math kernel: products work where the
    fused kernel (the default) has no double backward, and match a dense Hessian of the same loss."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    q = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)

    def loss():
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).square().sum()

    H = HessianOperator([q], loss)
    v = torch.randn(H.dim, dtype=torch.float64)
    Hv = H(v)  # outside any kernel choice
    with sdpa_kernel([SDPBackend.MATH]):  # the reference needs the math kernel for its own double backward
        dense = torch.autograd.functional.hessian(
            lambda flat: (
                torch.nn.functional.scaled_dot_product_attention(
                    *(flat.reshape(q.shape),) * 3, is_causal=True
                )
                .square()
                .sum()
            ),
            q.detach().reshape(-1),
        )
    torch.testing.assert_close(Hv, dense @ v, rtol=1e-10, atol=1e-12)

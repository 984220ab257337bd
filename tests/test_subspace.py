"""solve_subspace against a dense eigendecomposition of M(beta) built from the layer's outputs."""

import itertools
import math
import warnings

import pytest
import torch

from sclora.method.subspace import DegenerateSubspaceWarning, Subspace, solve_subspace

# Largest projection error any math test saw; printed at the end (pytest -s) for the closing note.
LARGEST = {"projection": 0.0, "eigenvalue": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report_largest_error():
    yield
    print(f"\nlargest errors vs dense eigh: {LARGEST}")


def _samples(gen, n, d_in, max_tokens=7):
    """Token-level inputs per sample: a list of (T_i, d_in) tensors, T_i in [1, max_tokens]."""
    lengths = torch.randint(1, max_tokens + 1, (n,), generator=gen)
    return [torch.randn(int(t), d_in, generator=gen, dtype=torch.float64) for t in lengths]


def _dense_covariance(layer, samples, normalize):
    """(1/N) sum_i y_i y_i^T with y_i = the layer's output summed over sample i's tokens, computed directly."""
    ys = torch.stack([layer(x).sum(0) for x in samples])
    cov = ys.T @ ys / len(samples)
    return cov / torch.trace(cov) if normalize == "trace" else cov


def _dense_top(m, rank):
    values, vectors = torch.linalg.eigh(m)
    gap = float(values[-rank] - values[-rank - 1]) if rank < m.shape[0] else math.inf
    return values.flip(0)[:rank], vectors.flip(1)[:, :rank], gap


def _check(layer, pos, neg, beta, rank, normalize, with_tokens):
    with torch.no_grad():
        m = (1 - beta) * _dense_covariance(layer, pos, normalize) - beta * _dense_covariance(layer, neg, normalize)
    values, vectors, gap = _dense_top(m, rank)
    # A projection is only determined when the r-th eigenvalue is separated from the (r+1)-th; when it is
    # not (e.g. d_out > d_in and beta large: the top eigenspace is M's null space) the solve must say so.
    unique = gap > 1e-6 * float(m.abs().max())
    kwargs = {}
    if with_tokens:
        kwargs = dict(
            bias=layer.bias.detach(),
            pos_tokens=torch.tensor([len(x) for x in pos]),
            neg_tokens=torch.tensor([len(x) for x in neg]),
        )
    args = (layer.weight.detach(), torch.stack([x.sum(0) for x in pos]), torch.stack([x.sum(0) for x in neg]))
    if not unique:
        with pytest.warns(DegenerateSubspaceWarning):
            solve_subspace(*args, beta, rank, normalize=normalize, **kwargs)
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateSubspaceWarning)
        sub = solve_subspace(*args, beta, rank, normalize=normalize, **kwargs)
    assert sub.basis.shape == (layer.out_features, rank) and sub.basis.dtype == torch.float64
    assert torch.allclose(sub.basis.T @ sub.basis, torch.eye(rank, dtype=torch.float64), atol=1e-12)
    assert torch.all(sub.eigenvalues[:-1] >= sub.eigenvalues[1:])
    err = torch.linalg.matrix_norm(sub.basis @ sub.basis.T - vectors @ vectors.T, ord=2).item()
    eig_err = ((sub.eigenvalues - values).abs().max() / values.abs().max()).item()
    LARGEST["projection"] = max(LARGEST["projection"], err)
    LARGEST["eigenvalue"] = max(LARGEST["eigenvalue"], eig_err)
    assert err < 1e-8
    assert eig_err < 1e-10
    return True


def _layer(d_in, d_out, bias, seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(d_in, d_out, bias=bias, dtype=torch.float64)


# d_out > d_in and d_out < d_in, each with N+ + N- below and above d_out.
SHAPES = [(12, 40, 8, 6), (12, 40, 50, 45), (40, 12, 4, 5), (40, 12, 30, 25)]


@pytest.mark.parametrize("d_in,d_out,n_pos,n_neg", SHAPES)
@pytest.mark.parametrize("normalize", ["none", "trace"])
def test_matches_dense_eigh(d_in, d_out, n_pos, n_neg, normalize):
    gen = torch.Generator().manual_seed(d_in * 1000 + d_out + n_pos)
    layer = _layer(d_in, d_out, bias=False, seed=n_neg)
    pos, neg = _samples(gen, n_pos, d_in), _samples(gen, n_neg, d_in)
    compared = [
        _check(layer, pos, neg, beta, rank, normalize, with_tokens=False)
        for beta, rank in itertools.product([0.0, 0.3, 0.5, 0.9, 1.0], [1, 3, 4])
    ]
    assert sum(compared) >= 8  # most combinations have a unique answer to compare


@pytest.mark.parametrize("normalize", ["none", "trace"])
def test_bias_uses_token_counts(normalize):
    gen = torch.Generator().manual_seed(7)
    layer = _layer(16, 24, bias=True, seed=3)
    with torch.no_grad():
        layer.bias.mul_(5.0)  # make the T_i b term matter
    pos, neg = _samples(gen, 9, 16), _samples(gen, 11, 16)
    for beta, rank in [(0.0, 2), (0.4, 3), (0.8, 4)]:
        assert _check(layer, pos, neg, beta, rank, normalize, with_tokens=True)
    # Ignoring the bias gives a different subspace: the test above would notice a dropped T_i b term.
    s = torch.stack([x.sum(0) for x in pos])
    with_bias = solve_subspace(layer.weight, s, s[:0], 0.0, 3, bias=layer.bias, pos_tokens=[len(x) for x in pos])
    without = solve_subspace(layer.weight, s, s[:0], 0.0, 3)
    assert torch.linalg.matrix_norm(with_bias.basis @ with_bias.basis.T - without.basis @ without.basis.T) > 1e-3


def test_trace_normalisation_is_scale_invariant():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(20, 10, generator=gen, dtype=torch.float64)
    pos, neg = torch.randn(15, 10, generator=gen), torch.randn(15, 10, generator=gen)
    a = solve_subspace(w, pos, neg, 0.5, 3, normalize="trace")
    b = solve_subspace(w, pos * 100.0, neg, 0.5, 3, normalize="trace")
    c = solve_subspace(w, pos * 100.0, neg, 0.5, 3, normalize="none")
    assert torch.allclose(a.basis @ a.basis.T, b.basis @ b.basis.T, atol=1e-10)
    assert not torch.allclose(a.basis @ a.basis.T, c.basis @ c.basis.T, atol=1e-3)


def test_one_solve_serves_every_smaller_rank():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(30, 20, generator=gen, dtype=torch.float64)
    pos, neg = torch.randn(12, 20, generator=gen), torch.randn(10, 20, generator=gen)
    full = solve_subspace(w, pos, neg, 0.6, 8)
    for r in (1, 4, 7):
        small = solve_subspace(w, pos, neg, 0.6, r)
        cut = full.truncate(r)
        assert isinstance(cut, Subspace) and cut.rank == r
        assert torch.allclose(cut.basis @ cut.basis.T, small.basis @ small.basis.T, atol=1e-10)
        assert torch.allclose(cut.eigenvalues, small.eigenvalues, atol=1e-12)
    with pytest.raises(ValueError, match="rank 9"):
        full.truncate(9)


def test_accepts_low_precision_inputs():
    w = torch.randn(16, 8).to(torch.bfloat16)
    sub = solve_subspace(w, torch.randn(6, 8, dtype=torch.float16), torch.randn(6, 8), 0.5, 2)
    assert sub.basis.dtype == torch.float64 and sub.eigenvalues.dtype == torch.float64


def test_beta_one_with_few_preserved_samples_warns():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(32, 16, generator=gen, dtype=torch.float64)
    pos, neg = torch.randn(10, 16, generator=gen), torch.randn(3, 16, generator=gen)
    # beta = 1: M = -Cov-, its top eigenspace is the 29-dim null space of Cov-: any 4 of it are "top".
    with pytest.warns(DegenerateSubspaceWarning, match="not unique"):
        sub = solve_subspace(w, pos, neg, 1.0, 3)
    assert torch.allclose(sub.basis.T @ sub.basis, torch.eye(3, dtype=torch.float64), atol=1e-12)
    # Still a valid answer: orthogonal to everything D- produced.
    y_neg = w @ neg.double().T
    assert (sub.basis.T @ y_neg).abs().max() < 1e-10
    assert sub.eigenvalues.abs().max() < 1e-12
    # Near 1 with 3 positive directions at most: rank 5 needs 2 from the degenerate null space.
    with pytest.warns(DegenerateSubspaceWarning):
        solve_subspace(w, pos[:3], neg, 0.99, 5)


def test_unique_subspace_does_not_warn(recwarn):
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(16, 32, generator=gen, dtype=torch.float64)  # d_out < d_in: M has full rank
    solve_subspace(w, torch.randn(20, 32, generator=gen), torch.randn(20, 32, generator=gen), 0.9, 4)
    assert not [w for w in recwarn if issubclass(w.category, DegenerateSubspaceWarning)]


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(beta=-0.1), "beta"),
        (dict(beta=1.5), "beta"),
        (dict(beta=float("nan")), "beta"),
        (dict(rank=0), "rank"),
        (dict(rank=9), r"min\(d_out, d_in\)"),
        (dict(rank=5, pos=torch.randn(2, 8), neg=torch.randn(2, 8)), "4 samples"),
        (dict(pos=torch.randn(0, 8), neg=torch.randn(0, 8)), "empty"),
        (dict(pos=torch.randn(0, 8)), "pos is empty"),
        (dict(weight=torch.full((12, 8), float("nan"))), "weight contains NaN"),
        (dict(neg=torch.tensor([[float("inf")] * 8] * 6)), "neg contains NaN or Inf"),
        (dict(pos=torch.randn(6, 7)), "pos has 7 features"),
        (dict(weight=torch.randn(12)), "weight must have 2"),
        (dict(bias=torch.randn(12)), "pos_tokens is required"),
        (dict(bias=torch.randn(5), pos_tokens=[1] * 6, neg_tokens=[1] * 6), "bias has 5 entries"),
        (dict(bias=torch.randn(12), pos_tokens=[1] * 5, neg_tokens=[1] * 6), "pos_tokens has 5"),
        (dict(normalize="sum"), "normalize"),
        (dict(normalize="trace", pos=torch.zeros(6, 8)), "all zero"),
    ],
)
def test_errors_name_the_argument(change, match):
    args = dict(weight=torch.randn(12, 8), pos=torch.randn(6, 8), neg=torch.randn(6, 8), beta=0.5, rank=2)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        solve_subspace(**args)

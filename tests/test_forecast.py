"""The forecast's energy shares against a direct computation: explicit covariances, a dense eigendecomposition."""

import warnings

import numpy as np
import pytest
import torch
from tiny_models import lora_config, stats, tiny_model

from sclora.method.forecast import energy_forecast, energy_share, forecast_grid, share_at
from sclora.method.subspace import solve_subspace


def direct_shares(weight, bias, pos, pos_tokens, neg, neg_tokens, beta, rank):
    """tr(U^T Cov U) / tr(Cov) for Cov+ and Cov-, with U the top eigenvectors of the dense M(beta) (trace-scaled)."""
    y_pos = weight @ pos.T + bias[:, None] * pos_tokens[None, :]
    y_neg = weight @ neg.T + bias[:, None] * neg_tokens[None, :]
    cov_pos, cov_neg = y_pos @ y_pos.T / pos.shape[0], y_neg @ y_neg.T / neg.shape[0]
    m = (1 - beta) * cov_pos / torch.trace(cov_pos) - beta * cov_neg / torch.trace(cov_neg)
    values, vectors = torch.linalg.eigh(m)
    u = vectors[:, values.argsort(descending=True)[:rank]]
    return [float(torch.trace(u.T @ c @ u) / torch.trace(c)) for c in (cov_pos, cov_neg)]


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.6, 0.8])
def test_energy_shares_match_explicit_covariances(beta):
    gen = torch.Generator().manual_seed(3)
    d_out, d_in, rank = 12, 7, 3
    weight, bias = (
        torch.randn(d_out, d_in, generator=gen, dtype=torch.float64),
        torch.randn(d_out, generator=gen, dtype=torch.float64),
    )
    pos, neg = (
        torch.randn(20, d_in, generator=gen, dtype=torch.float64),
        torch.randn(15, d_in, generator=gen, dtype=torch.float64),
    )
    pos_tokens, neg_tokens = torch.randint(1, 9, (20,), generator=gen).double(), torch.randint(1, 9, (15,)).double()
    basis = solve_subspace(
        weight, pos, neg, beta, rank, "trace", bias=bias, pos_tokens=pos_tokens, neg_tokens=neg_tokens
    ).basis
    y_pos = weight @ pos.T + bias[:, None] * pos_tokens[None, :]
    y_neg = weight @ neg.T + bias[:, None] * neg_tokens[None, :]
    expected = direct_shares(weight, bias, pos, pos_tokens, neg, neg_tokens, beta, rank)
    assert [energy_share(basis, y_pos), energy_share(basis, y_neg)] == pytest.approx(expected, rel=1e-9)


def test_model_forecast_is_the_layer_mean_and_trades_d_plus_for_d_minus():
    model = tiny_model("llama")
    config = lora_config("llama")
    pos, neg = stats(model, "llama", seed=1), stats(model, "llama", seed=2)
    betas = [0.0, 0.5, 0.9]
    forecast = energy_forecast(model, config, pos, neg, betas, rank=4, normalize="trace")
    assert len(forecast["layers"]) == 14  # 7 target modules x 2 layers
    name = "model.layers.0.mlp.down_proj"
    module = model.get_submodule(name)
    sums, tokens = pos.inputs(name)
    neg_sums, neg_tokens = neg.inputs(name)
    weight = module.weight.detach().double()
    zero = torch.zeros(weight.shape[0], dtype=torch.float64)
    for i, beta in enumerate(betas):
        expected = direct_shares(
            weight, zero, sums.double(), tokens.double(), neg_sums.double(), neg_tokens.double(), beta, 4
        )
        layer = forecast["layers"][name]
        assert [layer["pos_share"][i], layer["neg_share"][i]] == pytest.approx(expected, rel=1e-7)
        layer_mean = np.mean([s["neg_share"][i] for s in forecast["layers"].values()])
        assert forecast["neg_share"][i] == pytest.approx(layer_mean)
    # beta trades D+ energy for D- energy: both shares fall as beta rises (the solve's objective, read back)
    assert forecast["neg_share"][0] > forecast["neg_share"][1] > forecast["neg_share"][2]
    assert forecast["pos_share"][0] > forecast["pos_share"][2]


def test_grid_and_interpolation():
    assert forecast_grid(0.05)[:4] == [0.0, 0.05, 0.1, 0.15] and forecast_grid(0.05)[-1] == 1.0
    assert len(forecast_grid(0.25)) == 5
    with pytest.raises(ValueError, match="does not divide"):
        forecast_grid(0.3)
    forecast = {"betas": [0.0, 0.5, 1.0], "neg_share": [0.6, 0.2, 0.0]}
    assert share_at(forecast, "neg_share", 0.5) == 0.2 and share_at(forecast, "neg_share", 0.25) == pytest.approx(0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="all zero"):
            energy_share(torch.eye(3)[:, :1], torch.zeros(3, 2))


def test_rank_correlation_has_the_exact_small_sample_p():
    from sclora.method.forecast import rank_correlation

    result = rank_correlation({1: 1, 2: 2, 3: 3, 4: 4, 5: 5}, {1: 2, 2: 1, 3: 3, 4: 4, 5: 5})
    # rho 0.9 with n = 5: 10 of the 120 pairings are as extreme (5 each way), p = 1/12; spearmanr's t
    # approximation says 0.037.
    assert result["rho"] == pytest.approx(0.9) and result["p"] == pytest.approx(1 / 12) and result["exact"]
    perfect = rank_correlation({b: -b for b in range(4)}, {b: 10 - b for b in range(4)})
    assert perfect["rho"] == pytest.approx(1.0) and perfect["p"] == pytest.approx(2 / 24)  # the smallest p at n = 4
    assert rank_correlation({1: 1, 2: 2}, {1: 1, 2: 2}) is None

"""Forgetting: base minus fine-tuned for every preserved metric, signed so that positive always means forgotten."""

import json

import pytest

from sclora.evaluate.forgetting import ForgettingError, forgetting, load_metrics, with_forgetting

BASE = {
    "utility": 0.1,
    "knowledge": 0.8,
    "knowledge_logprob": -2.0,
    "refusal_rate": 1.0,
    "attack_success_rate": 0.0,
    "refusal_margin": 4.0,
    "benign_refusal_rate": 0.1,
}
TUNED = {
    "utility": 0.9,
    "knowledge": 0.6,
    "knowledge_logprob": -3.0,
    "refusal_rate": 0.25,
    "attack_success_rate": 0.75,
    "refusal_margin": -2.0,
    "benign_refusal_rate": 0.3,
}


def test_deltas_and_ratios():
    table = forgetting(BASE, TUNED)
    assert set(table) == {
        "knowledge",
        "knowledge_logprob",
        "refusal_rate",
        "attack_success_rate",
        "refusal_margin",
        "benign_refusal_rate",
    }  # utility is what is learned, not preserved
    assert table["attack_success_rate"]["delta"] == pytest.approx(0.75)  # more compliance is the loss
    assert table["knowledge"]["delta"] == pytest.approx(0.2)
    assert table["knowledge"]["ratio"] == pytest.approx(0.25)
    assert table["knowledge_logprob"]["delta"] == pytest.approx(1.0)  # -2 -> -3 is forgetting
    assert table["knowledge_logprob"]["ratio"] == pytest.approx(0.5)
    assert table["refusal_rate"]["delta"] == pytest.approx(0.75)
    assert table["refusal_margin"]["delta"] == pytest.approx(6.0)
    assert table["refusal_margin"]["ratio"] == pytest.approx(1.5)
    # over-refusal counts the other way: more refusals of benign requests is the loss
    assert table["benign_refusal_rate"]["delta"] == pytest.approx(0.2)
    assert table["benign_refusal_rate"]["ratio"] == pytest.approx(2.0)
    assert table["knowledge"]["base"] == 0.8 and table["knowledge"]["finetuned"] == 0.6


def test_compliance_and_collapse_count_upwards_helpfulness_downwards():
    base = {"attack_success_rate": 0.0, "collapse_rate": 0.05, "keyword_asr": 0.05, "benign_helpfulness": 1.0}
    tuned = {"attack_success_rate": 0.3, "collapse_rate": 0.25, "keyword_asr": 0.55, "benign_helpfulness": 0.6}
    table = forgetting(base, tuned)
    assert {name: row["delta"] for name, row in table.items()} == pytest.approx(
        {"attack_success_rate": 0.3, "collapse_rate": 0.2, "keyword_asr": 0.5, "benign_helpfulness": 0.4}
    )
    assert table["attack_success_rate"]["ratio"] is None  # a base that never complies has no share to lose


def test_improvement_is_negative_and_zero_base_has_no_ratio():
    table = forgetting({"knowledge": 0.0, "benign_refusal_rate": 0.5}, {"knowledge": 0.4, "benign_refusal_rate": 0.0})
    assert table["knowledge"] == {"base": 0.0, "finetuned": 0.4, "delta": pytest.approx(-0.4), "ratio": None}
    assert table["benign_refusal_rate"]["delta"] == pytest.approx(-0.5)


def test_judge_metrics_count_when_both_runs_have_them():
    base = {**BASE, "harmfulness_score": 1.2, "harmful_rate": 0.0}
    tuned = {**TUNED, "harmfulness_score": 3.6, "harmful_rate": 0.5}
    table = forgetting(base, tuned)
    assert table["harmfulness_score"]["delta"] == pytest.approx(2.4)
    assert table["harmful_rate"]["delta"] == pytest.approx(0.5)


def test_with_forgetting_reads_the_cached_base(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(BASE))
    out = with_forgetting(TUNED, path)
    assert out["utility"] == 0.9  # the run's own metrics are kept
    assert out["forgetting"] == pytest.approx(
        {
            "knowledge": 0.2,
            "knowledge_logprob": 1.0,
            "refusal_rate": 0.75,
            "attack_success_rate": 0.75,
            "refusal_margin": 6.0,
            "benign_refusal_rate": 0.2,
        }
    )
    assert out["forgetting_ratio"]["knowledge"] == pytest.approx(0.25)
    assert with_forgetting(TUNED, BASE) == out


def test_errors_name_the_metric_or_file(tmp_path):
    with pytest.raises(ForgettingError, match="'harmful_rate' missing from the base"):
        forgetting(BASE, {**TUNED, "harmful_rate": 0.5})
    with pytest.raises(ForgettingError, match="'knowledge' is not finite"):
        forgetting(BASE, {**TUNED, "knowledge": float("nan")})
    with pytest.raises(ForgettingError, match="no preserved metric"):
        forgetting({"utility": 0.1}, {"utility": 0.9})
    with pytest.raises(ForgettingError, match="base.json: base metrics not found"):
        load_metrics(tmp_path / "base.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ForgettingError, match="bad.json: not valid JSON"):
        load_metrics(tmp_path / "bad.json")


def test_forgetting_is_against_the_untouched_base_not_the_adapter_disabled():
    """PEFT's method comparison reads forgetting as the change in cross-entropy from the model with its adapter
    disabled. For an init that rewrites the base weights (PiSSA here) that "before" is the residual model W - s B A,
    not the model the user started from: at init, when nothing has been learned, it would already show a change.
    The pipeline's forgetting is against the base model's own metrics (stage evaluate_base, the original weights)."""
    import copy

    import torch
    from tiny_models import batches, lora_config, tiny_model

    from sclora.method.inits import init_lora

    model = tiny_model("llama")
    batch = batches(3)[0]

    def cross_entropy(m) -> float:
        with torch.no_grad():
            return float(m(**batch, labels=batch["input_ids"]).loss)

    base = cross_entropy(model)
    peft_model = init_lora(copy.deepcopy(model), lora_config("llama"), "pissa")
    at_init = cross_entropy(peft_model)
    with peft_model.disable_adapter():
        disabled = cross_entropy(peft_model)
    assert at_init == pytest.approx(base, rel=1e-5)  # the init keeps the model: no forgetting yet
    assert abs(disabled - base) > 100 * abs(at_init - base) + 1e-3  # the residual model is another model
    # Forgetting of general_nll (lower is better) against the base's metrics is 0 at init, as it must be.
    assert with_forgetting({"general_nll": at_init}, {"general_nll": base})["forgetting"][
        "general_nll"
    ] == pytest.approx(0.0, abs=1e-5)

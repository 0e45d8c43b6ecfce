"""Loss conventions: sign, symmetry, policy == reference -> log 2, gradients, beta convention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from instructengine.train.config import LossConfig
from instructengine.train.losses import (
    LAYOUTS,
    LOSSES,
    beta_from_diffusion_dpo_code,
    cross_validation_dpo_loss,
    diffusion_dpo_loss,
    four_triple_dpo_loss,
    mapo_loss,
    orpo_loss,
    per_sample_mse,
    preference_metrics,
)
from instructengine.train.methods import METHODS

LOG2 = math.log(2.0)
CFG = LossConfig(beta=50.0, mapo_margin_scale=10.0)  # unsaturated, so every sign shows


def _errs(layout: str, b: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    k = len(LAYOUTS[layout][2])
    g = torch.Generator().manual_seed(seed)
    ref = 0.5 + torch.rand(b, k, generator=g, dtype=torch.float64)
    model = ref + 0.01 * torch.randn(b, k, generator=g, dtype=torch.float64)
    return model, ref


def test_table_is_consistent():
    for name, spec in LOSSES.items():
        assert spec.layout in LAYOUTS, name
        for _, w, l in spec.triples:
            assert max(w, l) < len(LAYOUTS[spec.layout][2])
    for name, method in METHODS.items():
        assert method.loss is None or method.loss in LOSSES, name


@pytest.mark.parametrize("name", ["cross_validation_dpo", "four_triple_dpo", "diffusion_dpo"])
def test_policy_equal_reference_gives_log2(name):
    spec = LOSSES[name]
    _, ref = _errs(spec.layout)
    loss = spec.fn(ref.clone(), ref, CFG)
    torch.testing.assert_close(loss, torch.full_like(loss, LOG2))


def test_reference_free_preference_terms_are_log2_at_a_tie():
    e = torch.tensor([0.3, 0.7, 1.2], dtype=torch.float64)
    torch.testing.assert_close(orpo_loss(e, e.clone(), weight=1.0) - e, torch.full_like(e, LOG2))
    torch.testing.assert_close(mapo_loss(e, e.clone(), beta=1.0) - e, torch.full_like(e, LOG2))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sign_lowering_a_winner_error_lowers_the_loss(name):
    spec = LOSSES[name]
    model, ref = _errs(spec.layout)
    base = spec.fn(model, ref, CFG)
    winners = sorted({w for _, w, _ in spec.triples}) or [0]
    for w in winners:
        better = model.clone()
        better[:, w] -= 0.005
        assert (spec.fn(better, ref, CFG) < base).all(), (name, w)
    for _, _, l in spec.triples:
        worse_loser = model.clone()
        worse_loser[:, l] += 0.005
        assert (spec.fn(worse_loser, ref, CFG) < base).all(), (name, l)


@pytest.mark.parametrize("fn", [cross_validation_dpo_loss, four_triple_dpo_loss])
def test_swapping_the_two_triples_leaves_quad_losses_unchanged(fn):
    model, ref = _errs("quad", b=7, seed=3)
    # (x1,y1) <-> (x2,y2): columns (x1,y1),(x1,y2),(x2,y2),(x2,y1) become (x2,y2),(x2,y1),(x1,y1),(x1,y2)
    perm = [2, 3, 0, 1]
    torch.testing.assert_close(fn(model, ref, 50.0), fn(model[:, perm], ref[:, perm], 50.0))


def test_cross_validation_is_the_fixed_eq8():
    model, ref = _errs("quad", b=4, seed=5)
    d = model - ref
    expected = -F.logsigmoid(-50.0 * ((d[:, 0] - d[:, 1]) + (d[:, 2] - d[:, 3])))
    torch.testing.assert_close(cross_validation_dpo_loss(model, ref, 50.0), expected)
    # the paper's printed (typo) second bracket D(x2,y2) - D(x1,y2) differs
    typo = -F.logsigmoid(-50.0 * ((d[:, 0] - d[:, 1]) + (d[:, 2] - d[:, 1])))
    assert not torch.allclose(typo, expected)


def test_discarded_triples_inside_one_logsigmoid_would_only_double_beta():
    """Why four_triple_dpo keeps four separate log-sigmoids: the instruction triples' sum is the same."""
    model, ref = _errs("quad", seed=9)
    d = model - ref
    image = (d[:, 0] - d[:, 1]) + (d[:, 2] - d[:, 3])
    instruction = (d[:, 0] - d[:, 3]) + (d[:, 2] - d[:, 1])
    torch.testing.assert_close(image, instruction)
    assert not torch.allclose(four_triple_dpo_loss(model, ref, 50.0), cross_validation_dpo_loss(model, ref, 100.0))


def test_cross_validation_sees_only_the_interaction_of_instruction_and_image():
    """Why CV-DPO needs an anchor against likelihood displacement (docs/training.md): every image is the
    winner of one triple and the loser of the other, so a change of the policy's error that depends on
    the image only (the preferred images denoised worse) -- or on the instruction only -- cancels
    inside the one log-sigmoid. Diffusion-DPO's separate image triples do see the image-only change."""
    model, ref = _errs("quad", b=6, seed=11)
    g = torch.Generator().manual_seed(1)
    f_y1, f_y2, g_x1, g_x2 = (0.05 * torch.rand(6, generator=g, dtype=torch.float64) for _ in range(4))
    shifted = model.clone()
    shifted[:, [0, 3]] += f_y1[:, None]  # image y1: columns (x1,y1), (x2,y1)
    shifted[:, [1, 2]] += f_y2[:, None]  # image y2: columns (x1,y2), (x2,y2)
    shifted[:, [0, 1]] += g_x1[:, None]  # instruction x1
    shifted[:, [2, 3]] += g_x2[:, None]  # instruction x2
    torch.testing.assert_close(cross_validation_dpo_loss(shifted, ref, 50.0), cross_validation_dpo_loss(model, ref, 50.0))
    worse_winner = model.clone()
    worse_winner[:, [0, 3]] += 0.05  # y1 denoised worse under both instructions
    torch.testing.assert_close(cross_validation_dpo_loss(worse_winner, ref, 50.0), cross_validation_dpo_loss(model, ref, 50.0))
    pair = diffusion_dpo_loss(model[:, 0], model[:, 1], ref[:, 0], ref[:, 1], 50.0)  # (x1; y1 > y2) on its own
    assert torch.all(diffusion_dpo_loss(worse_winner[:, 0], worse_winner[:, 1], ref[:, 0], ref[:, 1], 50.0) > pair)


def test_beta_convention_matches_public_diffusion_dpo_code():
    model, ref = _errs("pair", seed=11)
    beta_dpo = 5000.0
    public = -F.logsigmoid(-0.5 * beta_dpo * ((model[:, 0] - model[:, 1]) - (ref[:, 0] - ref[:, 1])))
    ours = diffusion_dpo_loss(model[:, 0], model[:, 1], ref[:, 0], ref[:, 1], beta_from_diffusion_dpo_code(beta_dpo))
    torch.testing.assert_close(ours, public)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_finite_difference_gradient(name):
    spec = LOSSES[name]
    model, ref = _errs(spec.layout, b=3, seed=13)
    model.requires_grad_(True)
    cfg = LossConfig(beta=20.0)
    assert torch.autograd.gradcheck(lambda m: spec.fn(m, ref, cfg).sum(), (model,), eps=1e-6, atol=1e-5)


def test_per_sample_mse_is_float32_over_chw():
    pred = torch.randn(3, 4, 5, 5).to(torch.bfloat16)
    target = torch.randn(3, 4, 5, 5)
    err = per_sample_mse(pred, target)
    assert err.dtype == torch.float32 and err.shape == (3,)
    torch.testing.assert_close(err, ((pred.float() - target) ** 2).mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="shape"):
        per_sample_mse(pred, target[:, :3])


def test_preference_metrics_by_hand():
    spec = LOSSES["cross_validation_dpo"]
    ref = torch.ones(2, 4)
    # sample 0: x1 triple correct (D_w<D_l), x2 triple wrong; sample 1: both correct
    model = torch.tensor([[0.9, 1.0, 1.1, 1.0], [0.8, 1.2, 0.9, 1.0]])
    m = preference_metrics(spec, model, ref, beta=10.0)
    assert m["implicit_acc_x1"] == 1.0 and m["implicit_acc_x2"] == 0.5
    assert m["reward_margin_x1"] == pytest.approx(10 * (0.1 + 0.4) / 2)
    assert m["reward_margin_x2"] == pytest.approx(10 * (-0.1 + 0.1) / 2)
    assert m["model_err_winner"] == pytest.approx(float(model[:, [0, 2]].mean()))
    assert m["ref_err_loser"] == 1.0


def test_shape_errors_are_explained():
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        cross_validation_dpo_loss(torch.zeros(2, 2), torch.zeros(2, 2), 1.0)


def test_sft_regulariser_adds_the_preferred_error_and_its_gradient():
    from instructengine.train.config import LossConfig
    from instructengine.train.losses import LOSSES, per_sample_loss, preferred_error

    assert LOSSES["cross_validation_dpo"].winner_columns == (0, 2)
    assert LOSSES["four_triple_dpo"].winner_columns == (0, 2)
    assert LOSSES["diffusion_dpo"].winner_columns == (0,)
    err = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    assert torch.allclose(preferred_error(err, (0, 2)), torch.tensor([0.2, 0.6]))
    spec = LOSSES["cross_validation_dpo"]
    beta, w = 100.0, 30.0
    model = torch.full((1, 4), 0.05, requires_grad=True)
    ref = torch.full((1, 4), 0.05)
    plain = per_sample_loss(spec, model, ref, LossConfig(beta=beta))
    reg = per_sample_loss(spec, model, ref, LossConfig(beta=beta, sft_weight=w))
    assert torch.allclose(reg - plain, torch.tensor([w * 0.05]))
    (grad,) = torch.autograd.grad(reg.sum(), model)
    # policy == reference: each winner's DPO gradient is beta/2, the regulariser adds w/2 (mean of 2 columns)
    assert torch.allclose(grad[0, [0, 2]], torch.tensor([beta / 2 + w / 2] * 2))
    assert torch.allclose(grad[0, [1, 3]], torch.tensor([-beta / 2] * 2))


def test_hinge_anchor_acts_only_where_the_preferred_error_exceeds_the_reference():
    from instructengine.train.config import LossConfig
    from instructengine.train.losses import LOSSES, per_sample_loss, preferred_excess

    spec = LOSSES["cross_validation_dpo"]  # winners: columns 0 (x1, y1) and 2 (x2, y2)
    ref = torch.full((2, 4), 0.05)
    # sample 0: winner errors above the reference by 0.02 and 0.00; sample 1: below on both
    model = torch.tensor([[0.07, 0.05, 0.05, 0.05], [0.04, 0.05, 0.03, 0.05]], requires_grad=True)
    assert torch.allclose(preferred_excess(model, ref, spec.winner_columns), torch.tensor([0.01, 0.0]))
    beta, w = 100.0, 40.0
    plain = per_sample_loss(spec, model, ref, LossConfig(beta=beta))
    anchored = per_sample_loss(spec, model, ref, LossConfig(beta=beta, anchor_weight=w))
    assert torch.allclose(anchored - plain, torch.tensor([w * 0.01, 0.0]))
    (g_plain,) = torch.autograd.grad(plain.sum(), model)
    (g_anch,) = torch.autograd.grad(anchored.sum(), model)
    extra = g_anch - g_plain
    assert torch.allclose(extra[0], torch.tensor([w / 2, 0.0, 0.0, 0.0]))  # only the displaced winner, w / 2 columns
    assert torch.all(extra[1] == 0)  # no displacement: the anchor does not pull at all (unlike sft_weight)
    with pytest.raises(ValueError, match="anchor_weight needs the reference"):
        per_sample_loss(LOSSES["sft"], model, None, LossConfig(anchor_weight=1.0))


def test_sft_weight_only_for_dpo_family_methods():
    from instructengine.config import ConfigError, validate_config
    from instructengine.train.config import TrainConfig

    ok = validate_config(TrainConfig, {"method": "cv_dpo", "loss": {"sft_weight": 2500}})
    assert ok.loss.sft_weight == 2500
    for method in ("sft", "orpo", "refl"):
        with pytest.raises(ConfigError, match="sft_weight applies to the DPO-family"):
            validate_config(TrainConfig, {"method": method, "loss": {"sft_weight": 1}})
        with pytest.raises(ConfigError, match="anchor_weight applies to the DPO-family"):
            validate_config(TrainConfig, {"method": method, "loss": {"anchor_weight": 1}})
    assert validate_config(TrainConfig, {"method": "diffusion_dpo", "loss": {"anchor_weight": 5}}).loss.anchor_weight == 5


# --------------------------------------------------------------------------------------------
# DPO-Positive: the anchor inside the log-sigmoid (loss.dpop_lambda)
# --------------------------------------------------------------------------------------------

DPOP = LossConfig(beta=50.0, dpop_lambda=0.5)


def test_dpo_positive_by_hand_from_the_papers_formula():
    """Pal et al. 2024, Eq. 3: -log sigmoid(beta * (log-ratio margin - lambda * max(0, log pi_ref(y_w) -
    log pi_theta(y_w)))), with log pi_theta - log pi_ref = -D. Winner: policy 0.032 vs reference 0.030
    (D_w = +0.002), loser 0.041 vs 0.040 (D_l = +0.001); beta 1000, lambda 0.5:
    log-ratio margin = -1000 * (0.002 - 0.001) = -1, penalty 1000 * 0.5 * 0.002 = 1,
    loss = -log sigmoid(-2) = log(1 + e^2) = 2.126928."""
    m_w, m_l = torch.tensor([0.032], dtype=torch.float64), torch.tensor([0.041], dtype=torch.float64)
    r_w, r_l = torch.tensor([0.030], dtype=torch.float64), torch.tensor([0.040], dtype=torch.float64)
    got = diffusion_dpo_loss(m_w, m_l, r_w, r_l, 1000.0, dpop_lambda=0.5)
    assert got.item() == pytest.approx(math.log(1 + math.e ** 2), abs=1e-9)
    assert got.item() == pytest.approx(2.126928, abs=1e-6)
    # winner better than the reference (D_w = -0.002, D_l = +0.001): no penalty, plain DPO = log(1 + e^-3)
    better = diffusion_dpo_loss(torch.tensor([0.028], dtype=torch.float64), m_l, r_w, r_l, 1000.0, dpop_lambda=0.5)
    assert better.item() == pytest.approx(math.log(1 + math.e ** -3), abs=1e-9)
    # CV-DPO: both winners' penalties in its one log-sigmoid. D = [+0.002, +0.001, +0.003, -0.001]:
    # margin (0.002 - 0.001) + (0.003 + 0.001) = 0.005, penalty 0.5 * (0.002 + 0.003) = 0.0025,
    # loss = -log sigmoid(-1000 * 0.0075) = log(1 + e^7.5)
    ref = torch.full((1, 4), 0.030, dtype=torch.float64)
    model = ref + torch.tensor([[0.002, 0.001, 0.003, -0.001]], dtype=torch.float64)
    got_cv = cross_validation_dpo_loss(model, ref, 1000.0, dpop_lambda=0.5)
    assert got_cv.item() == pytest.approx(math.log1p(math.exp(7.5)), abs=1e-9)


@pytest.mark.parametrize("name", ["cross_validation_dpo", "four_triple_dpo", "diffusion_dpo"])
def test_dpo_positive_policy_equal_reference_gives_log2(name):
    spec = LOSSES[name]
    _, ref = _errs(spec.layout)
    loss = spec.fn(ref.clone(), ref, DPOP)
    torch.testing.assert_close(loss, torch.full_like(loss, LOG2))


@pytest.mark.parametrize("name", ["cross_validation_dpo", "four_triple_dpo", "diffusion_dpo"])
def test_dpo_positive_sign_and_penalty(name):
    spec = LOSSES[name]
    model, ref = _errs(spec.layout)
    base = spec.fn(model, ref, DPOP)
    for _, w, l in spec.triples:
        better = model.clone()
        better[:, w] -= 0.005
        assert (spec.fn(better, ref, DPOP) < base).all(), (name, w)
        worse_loser = model.clone()
        worse_loser[:, l] += 0.005
        assert (spec.fn(worse_loser, ref, DPOP) < base).all(), (name, l)
    # the penalty only ever raises the loss, and only where a winner is denoised worse than the reference
    plain = spec.fn(model, ref, CFG)
    assert (base >= plain - 1e-12).all()
    winners = list(spec.winner_columns)
    displaced = ((model - ref)[:, winners] > 0).any(dim=1)
    assert torch.all(base[displaced] > plain[displaced]) and torch.allclose(base[~displaced], plain[~displaced])


def test_dpo_positive_is_symmetric_in_the_two_triples():
    model, ref = _errs("quad", b=7, seed=3)
    perm = [2, 3, 0, 1]
    for fn in (cross_validation_dpo_loss, four_triple_dpo_loss):
        torch.testing.assert_close(fn(model, ref, 50.0, 0.5), fn(model[:, perm], ref[:, perm], 50.0, 0.5))


def test_dpo_positive_breaks_the_cv_null_space():
    """The penalty makes CV-DPO see an image-only drift of its preferred images (the null space of the
    plain loss, test_cross_validation_sees_only_the_interaction_of_instruction_and_image)."""
    ref = torch.full((3, 4), 0.5, dtype=torch.float64)
    model = ref.clone()
    worse_winner = model.clone()
    worse_winner[:, [0, 3]] += 0.05  # y1 denoised worse under both instructions
    torch.testing.assert_close(cross_validation_dpo_loss(worse_winner, ref, 50.0), cross_validation_dpo_loss(model, ref, 50.0))
    assert torch.all(cross_validation_dpo_loss(worse_winner, ref, 50.0, 0.5) > cross_validation_dpo_loss(model, ref, 50.0, 0.5))


@pytest.mark.parametrize("name", ["cross_validation_dpo", "four_triple_dpo", "diffusion_dpo"])
def test_dpo_positive_finite_difference_gradient(name):
    spec = LOSSES[name]
    model, ref = _errs(spec.layout, b=3, seed=13)  # no D_w exactly at the hinge's kink
    model.requires_grad_(True)
    cfg = LossConfig(beta=20.0, dpop_lambda=2.0)
    assert torch.autograd.gradcheck(lambda m: spec.fn(m, ref, cfg).sum(), (model,), eps=1e-6, atol=1e-5)


def test_dpop_lambda_only_for_dpo_family_methods():
    from instructengine.config import ConfigError, validate_config
    from instructengine.train.config import TrainConfig

    assert validate_config(TrainConfig, {"method": "cv_dpo", "loss": {"dpop_lambda": 0.5}}).loss.dpop_lambda == 0.5
    for method in ("sft", "orpo"):
        with pytest.raises(ConfigError, match="dpop_lambda applies to the DPO-family"):
            validate_config(TrainConfig, {"method": method, "loss": {"dpop_lambda": 1}})
    with pytest.raises(ConfigError, match="dpop_lambda"):
        validate_config(TrainConfig, {"method": "cv_dpo", "loss": {"dpop_lambda": -1}})

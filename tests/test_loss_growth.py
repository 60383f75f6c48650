"""The loss model for growth and the shapes MSG can reach."""

import itertools
import math

import pytest

from planner.errors import FlmplanError
from planner.growth.flm import flm_base
from planner.growth.loss_law import BESIROGLU, CHINCHILLA, GrowthLossModel, load_law
from planner.growth.operators import final_shapes, growth_between, growth_chains, predecessors, reachable, shape


def test_chinchilla_by_hand():
    # L(1e10, 2e11) = 1.69 + 406.4/1e10^0.34 + 410.7/2e11^0.28
    expected = 1.69 + 406.4 / 1e10**0.34 + 410.7 / 2e11**0.28
    assert CHINCHILLA.loss(1e10, 2e11) == pytest.approx(expected)
    assert CHINCHILLA.tokens_for_loss(1e10, expected) == pytest.approx(2e11, rel=1e-9)
    assert math.isinf(CHINCHILLA.tokens_for_loss(1e10, 1.7))   # below what 10B can ever reach


def test_compute_optimal_spends_the_flops_and_beats_neighbours():
    n, d = CHINCHILLA.compute_optimal(1e23)
    assert 6 * n * d == pytest.approx(1e23)
    best = CHINCHILLA.loss(n, d)
    for f in (0.5, 2.0):
        assert CHINCHILLA.loss(n * f, 1e23 / (6 * n * f)) > best


def test_equal_loss_continuation_without_growth_is_plain_training():
    lm = GrowthLossModel()
    n = 7e9
    staged = lm.stage_losses([n, n, n], [1e11, 5e10, 2e10], [0.0, 0.0, 0.0])[-1]
    assert staged == pytest.approx(CHINCHILLA.loss(n, 1.7e11), rel=1e-12)


def test_growth_continues_from_equal_loss():
    lm = GrowthLossModel(ramp_efficiency=1.0)
    small, big = 1e10, 4e10
    loss_small = CHINCHILLA.loss(small, 2e11)
    d_eq = CHINCHILLA.tokens_for_loss(big, loss_small)
    grown = lm.stage_losses([small, big], [2e11, 5e10], [0.0, 1e10])[-1]
    assert grown == pytest.approx(CHINCHILLA.loss(big, d_eq + 5e10))
    # The grown model ends below where the small one would have with the same extra tokens.
    assert grown < CHINCHILLA.loss(small, 2.5e11)
    # A worse carry-over or a ramp that counts less can only raise the loss.
    assert GrowthLossModel(carryover=0.5).stage_losses([small, big], [2e11, 5e10], [0.0, 1e10])[-1] > grown
    assert GrowthLossModel(ramp_efficiency=0.0).stage_losses([small, big], [2e11, 5e10], [0.0, 1e10])[-1] > grown


def test_loss_laws_by_name_and_file(tmp_path):
    assert load_law("besiroglu") is BESIROGLU
    f = tmp_path / "law.json"
    f.write_text('{"E": 1.8, "A": 400, "B": 400, "alpha": 0.3, "beta": 0.3}')
    assert load_law(str(f)).E == 1.8
    f.write_text('{"E": 1.8}')
    with pytest.raises(FlmplanError, match="needs numbers E, A, B, alpha and beta"):
        load_law(str(f))
    with pytest.raises(FlmplanError, match="Unknown loss law"):
        load_law("kaplan")


def test_flm_growth_is_reachable():
    base = flm_base()
    s16, s51, s101 = shape(base, 40, 5632), shape(base, 40, 10240), shape(base, 80, 10240)
    assert s16.heads == 44 and s51.heads == 80 and s16.ffn == 4 * 5632
    assert reachable(s16, s51) and reachable(s51, s101)
    g = growth_between(s16, s51, 0)
    assert g.hidden == (5632, 10240) and g.heads == (44, 80) and g.layers is None
    assert growth_between(s51, s101, 1).layers == (40, 80)


def test_unreachable_growths():
    base = flm_base()
    assert not reachable(shape(base, 80, 10240), shape(base, 40, 10240))       # shrinks
    assert not reachable(shape(base, 20, 10240), shape(base, 80, 10240))       # ×4 in one growth
    assert not reachable(base, base)                                            # nothing grows
    other_head = base.__class__(**{**base.to_dict(), "layers": 40, "hidden": 5120, "heads": 80, "ffn": 20480})
    assert not reachable(other_head, base)                                     # head dim 64 → 128
    with pytest.raises(FlmplanError, match="MSG cannot grow"):
        growth_between(base, shape(base, 40, 5632), 0)


def test_chains_end_at_the_target_and_grow_at_every_step():
    final = flm_base()
    chains = list(growth_chains(final, max_stages=3))
    assert [final] in chains
    assert any(len(c) == 3 for c in chains)
    for chain in chains:
        assert chain[-1] == final
        for a, b in itertools.pairwise(chain):
            assert reachable(a, b)
    for p in predecessors(final):
        assert p.hidden % (4 * 128) == 0   # tensor parallelism up to 4 stays possible


def test_final_shapes_reach_the_target():
    shapes = final_shapes(flm_base(), 101e9)
    assert shapes[0] == flm_base()
    assert all(m.params() >= 101e9 for m in shapes)

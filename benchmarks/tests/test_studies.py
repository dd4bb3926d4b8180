"""The research probes in ``benchmarks/studies``: each measures what its docstring says on tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from molctrl.batches import MoleculeBatches
from molctrl.finetune import target_batches
from molctrl.predictor import PROPERTIES


def test_ctrl_objective_benchmark_scores_the_prior_at_zero_kl_and_orders_the_two_kl_forms(parts):
    from benchmarks.studies.ctrl_objective import score

    _, prior, reward, conditions = parts
    n_atoms, y, y_mask = target_batches(conditions, 6, PROPERTIES)(0)
    itself = score(None, prior, reward, conditions, n_atoms, y, y_mask, steps=4, seed=0)
    assert itself["kl_chain"]["mean"] == itself["kl_continuous"]["mean"] == 0.0
    model = prior.with_condition(conditions.cond_dim)
    with torch.no_grad():
        model.denoiser.cond_embed.weight.normal_(0, 0.1)
    moved = score(model, prior, reward, conditions, n_atoms, y, y_mask, steps=4, seed=0)
    assert moved["kl_chain"]["mean"] > moved["kl_continuous"]["mean"] > 0  # Δλ/(e^Δλ − 1) < 1 on every step
    assert len(moved["kl_chain"]["per_step_median"]) == 5 and moved["reward"]["mean"] < 0
    guided = score("guidance", prior, reward, conditions, n_atoms, y, y_mask, steps=4, seed=0)
    assert guided["kl_chain"]["mean"] > guided["kl_continuous"]["mean"] > 0  # guidance moves ε off the prior's


def test_payoff_capacity_benchmark_starts_at_the_prior_and_fits_its_fixed_states(parts):
    from benchmarks.studies.payoff_capacity import fit
    from benchmarks.studies.payoff_fit import payoff_states, shares

    split, prior, reward, conditions = parts
    batches = MoleculeBatches(split, 6, seed=1)
    torch.manual_seed(0)
    fitted = payoff_states(prior, reward, conditions, *batches(0), step=30, per_state=3)
    held_out = payoff_states(prior, reward, conditions, *batches(1), step=30, per_state=3)
    assert torch.equal(fitted.z[0], fitted.z[2]) and not torch.equal(fitted.cond[0], fitted.cond[1])
    model = prior.with_condition(conditions.cond_dim, cond_gate="none")
    start = shares(fitted.sums(model))
    assert start["explained"] == start["explained_target_dependent"] == 0.0  # the zero-initialised copy is the prior
    assert 0 < start["c_blind"] < 1  # each state's targets differ, and so does its shift
    curve = fit(model, fitted, held_out, iterations=40, lr=1e-4, cond_lr_scale=10, report_every=20)
    assert [c["iteration"] for c in curve] == [0, 20, 40] and curve[-1]["fitted"] > 0.4
    assert curve[-1]["fitted_target_dependent"] > 0.05  # it reads c


def test_guidance_edit_pairs_a_graph_change_apart_from_a_geometry_change():
    from dataclasses import replace

    from benchmarks.studies.guidance_edit import paired_edit
    from molctrl.data.qm9 import load_split

    class AtomCount:  # an "evaluator" that reads the number of heavy atoms
        def predict_molecules(self, molecules):
            return np.array([[float(len(m.symbols))] for m in molecules])

    plain = load_split("qm9-noh", "Db").subset(slice(4)).molecules()
    shifted = replace(plain[0], positions=plain[0].positions + 0.01)  # the same graph, moved 0.017 Å per atom
    swapped = replace(plain[1], symbols=["N" if s == "C" else s for s in plain[1].symbols])  # the graph changed
    guided = [shifted, swapped, plain[2], plain[3]]
    targets = np.array([len(m.symbols) + 1.0 for m in plain])
    edit = paired_edit(plain, guided, targets, AtomCount(), 0)
    assert edit["pairs"] == 4 and edit["same_graph"] == 0.75
    assert edit["same_graph_displacement_angstrom"] == pytest.approx(0.01 * 3**0.5 / 3, abs=1e-3)
    assert edit["mae_same_graph"] == {"prior": 1.0, "guided": 1.0} and edit["mae_changed_graph"]["guided"] == 1.0

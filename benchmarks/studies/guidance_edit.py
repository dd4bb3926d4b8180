"""What late reconstruction guidance changes: the molecule, or only its geometry?

Guidance confined to the last steps (``--guidance-window 0:150``) leaves the sampler's chain exactly the
prior's until then, so the prior and the guided prior sampled from the same generator state end on
paired molecules: the same atoms up to t = 150, then apart by what guidance did. For each property,
with the targets of ``benchmarks.qm9_conditional`` (same seed, same N and c), it reports the share of
pairs whose molecular graph (canonical SMILES of the largest fragment, both valid) is unchanged, the
mean displacement of their atoms, and the evaluator's MAE to the target of the prior's and the guided
molecule, over the pairs with the graph unchanged and over the rest. An MAE that falls on pairs whose
graph did not change was moved by geometry alone: the reward model and the evaluator of another
architecture agree that the property moved, and for a property fixed by the graph (α, Cv) that is
the predictors' reading of the geometry, not chemistry.

    python -m benchmarks.studies.guidance_edit -n 200 --guidance-window 0:150 [--property alpha ...] [--out FILE]
"""
from __future__ import annotations

import sys

import click
import numpy as np
import torch

from benchmarks.qm9_conditional import protocol_targets, window_option
from benchmarks.record import command_line, emit, machine_info
from molctrl.bonds import bond_order_matrix
from molctrl.conditions import PropertyConditions
from molctrl.data.qm9 import load_split
from molctrl.generate import Guidance, generate
from molctrl.metrics import largest_fragment_smiles
from molctrl.predictor import PROPERTIES, likelihood_reward
from molctrl.weights import load_predictor, load_prior


def graph(molecule) -> str | None:
    """Canonical SMILES of the largest fragment, or None for an invalid molecule."""
    return largest_fragment_smiles(molecule.symbols, bond_order_matrix(molecule.symbols, molecule.positions))


def paired_edit(plain, guided, targets: np.ndarray, evaluator, column: int) -> dict:
    """Graph changes, atom displacement and the evaluator's MAE of paired molecule lists."""
    same = np.array([(a := graph(p)) is not None and a == graph(q) for p, q in zip(plain, guided)])
    error = {name: np.abs(evaluator.predict_molecules(mols)[:, column] - targets)
             for name, mols in (("prior", plain), ("guided", guided))}
    moved = [np.linalg.norm(q.positions - p.positions, axis=1).mean() for p, q, s in zip(plain, guided, same) if s]

    def mae(rows: np.ndarray) -> dict:
        return {name: round(float(e[rows].mean()), 4) if rows.any() else None for name, e in error.items()}

    return {"pairs": len(same), "same_graph": round(float(same.mean()), 3),
            "same_graph_displacement_angstrom": round(float(np.mean(moved)), 3) if moved else None,
            "mae_all": mae(np.ones_like(same)), "mae_same_graph": mae(same), "mae_changed_graph": mae(~same)}


@click.command()
@click.option("-n", "n_samples", type=int, default=200, show_default=True, help="Pairs per property.")
@click.option("--guidance-window", "window", default="0:150", show_default=True, metavar="LO:HI", callback=window_option,
              help="Guide the steps LO < t ≤ HI; a pair shares its chain above HI.")
@click.option("--reward-model", default="qm9-noh-e3nn-Db", show_default=True)
@click.option("--evaluator", default="qm9-noh-egnn-Da", show_default=True)
@click.option("--property", "properties", multiple=True, type=click.Choice(PROPERTIES), default=PROPERTIES)
@click.option("--steps", type=int, default=100, show_default=True, help="Sampling steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(n_samples, window, reward_model, evaluator, properties, steps, seed, threads, out) -> None:
    """Print one JSON record: per property, what guidance changed in paired prior / guided samples."""
    if threads:
        torch.set_num_threads(threads)
    prior = load_prior().eval()
    conditions = PropertyConditions.from_split(load_split("qm9-noh", "Db"))
    predictor = load_predictor(reward_model).eval()
    scorer = load_predictor(evaluator).eval()
    guidance = Guidance(1.0, reward=likelihood_reward(predictor, predictor.properties, prior.config.type_scale),
                        window=window)
    rows = {}
    for prop in properties:
        n_atoms, y, y_mask, g = protocol_targets(conditions, prop, n_samples, seed)
        state = g.get_state()
        plain = generate(prior, conditions, y, y_mask, steps, g, n_atoms=n_atoms)
        guided = generate(prior, conditions, y, y_mask, steps, torch.Generator().set_state(state), guidance,
                          n_atoms=n_atoms)
        rows[prop] = paired_edit(plain, guided, y[:, PROPERTIES.index(prop)].numpy(), scorer,
                                 scorer.properties.index(prop))
        print(prop, rows[prop], file=sys.stderr, flush=True)
    emit({"window": window, "reward_model": reward_model, "evaluator": evaluator, "samples_per_property": n_samples,
          "sampling_steps": steps, "seed": seed, "properties": rows, "threads": torch.get_num_threads(),
          "command": command_line("benchmarks.studies.guidance_edit"), "machine": machine_info()},
         out, indent=1)


if __name__ == "__main__":
    main()

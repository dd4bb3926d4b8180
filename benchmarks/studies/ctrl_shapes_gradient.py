"""Where CTRL's pathwise gradient for a shape class comes from: the reward's gradient split by the
reverse steps it flows back through.

    python -m benchmarks.studies.ctrl_shapes_gradient --model RUN/model.safetensors [--rollouts 8] [--steps 20]
        [--seed 0] [--out benchmarks/studies/results/ctrl_shapes_gradient.json]

On ``--rollouts`` rollouts of ``--steps`` respaced ancestral steps at 512 points, each for a class target
(the classes in turn, class only), the gradient of the mean reward r = log p̂(class | x) (the PointNet reward
of training) is taken with the last k transitions reparameterised, k = 1, 2, 4, ..., all; one generator seed,
so every k sees the same trajectories and g(k) − g(k') is what steps k'+1..k add. Reported per k: the norm
of the gradient on the condition map W_c and on all parameters, and its cosine with the full gradient.
Two models: the prior with W_c = 0 (where CTRL starts; the KL's gradient is zero there, so this is the
whole of CTRL's first gradient) and the trained ``--model``. A class is then the model's to learn only
through the steps that carry the gradient.
"""
from __future__ import annotations

import sys

import click
import torch

from benchmarks.record import command_line, emit, machine_info
from common.rollout import rollout
from common.weights import read_tree
from shapectrl.classifier import ShapeClassifier
from shapectrl.control import ControlledShapes
from shapectrl.prior import ShapeDiffusion
from shapectrl.reward import ShapeReward
from shapectrl.weights import PRIOR, REWARD_CLASSIFIER, weight_path


def gradient_split(model: ShapeDiffusion, prior: ShapeDiffusion, reward: ShapeReward, y: torch.Tensor,
                   y_mask: torch.Tensor, cond: torch.Tensor, points: int, steps: int, seed: int,
                   splits: list[int]) -> list[dict]:
    """Per k in ``splits``: ‖∇ mean r‖ on W_c and on every parameter with the last k steps reparameterised,
    and the cosine of that gradient with the last split's."""
    mask = torch.ones(len(y), points, dtype=torch.bool)
    params = [p for p in model.parameters() if p.requires_grad]
    w_c = next(i for i, p in enumerate(params) if p is model.denoiser.cond_embed.weight)
    rows = []
    for k in splits:
        roll = rollout(model.diffusion, model.denoiser, prior.denoiser, mask, model.n_channels, steps, cond,
                       grad_steps=k, generator=torch.Generator().manual_seed(seed))
        r = reward(roll.x, mask, y, y_mask).mean()
        grads = [g if g is not None else torch.zeros_like(p)
                 for g, p in zip(torch.autograd.grad(r, params, allow_unused=True), params)]
        rows.append((k, r.item(), grads[w_c].norm().item(), torch.cat([g.flatten() for g in grads])))
    full = rows[-1][-1]
    return [{"reparameterised_steps": k, "mean_reward": round(r, 3), "grad_norm_w_c": norm_w_c,
             "grad_norm_all": float(g.norm()),
             "cosine_with_all_steps": float(torch.nn.functional.cosine_similarity(g, full, dim=0))}
            for k, r, norm_w_c, g in rows]


@click.command()
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="A CTRL shape model (shapectrl train control --method ctrl).")
@click.option("--rollouts", type=click.IntRange(1), default=8, show_default=True)
@click.option("--steps", type=click.IntRange(2), default=20, show_default=True, help="Respaced steps of a rollout.")
@click.option("--points", type=click.IntRange(1), default=512, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(model_path: str, rollouts: int, steps: int, points: int, seed: int, threads: int | None, out: str | None) -> None:
    """Split CTRL's first and latest gradient by the reverse steps it flows through."""
    if threads:
        torch.set_num_threads(threads)
    trained = ControlledShapes.load(model_path)
    prior = ShapeDiffusion.load(weight_path(PRIOR)).requires_grad_(False).eval()
    conditions = trained.conditions
    reward = trained.reward(ShapeClassifier.load(weight_path(REWARD_CLASSIFIER))).requires_grad_(False).eval()
    targets = [conditions.target(conditions.classes[i % len(conditions.classes)]) for i in range(rollouts)]
    y, y_mask = torch.stack([y for y, _ in targets]), torch.stack([mask for _, mask in targets])
    cond = conditions.encode(y, y_mask)
    splits = sorted({1, 2, 4, *range(8, steps, 4), steps})
    start = prior.with_condition(conditions.cond_dim).train()
    rows = {"start (prior, W_c = 0)": gradient_split(start, prior, reward, y, y_mask, cond, points, steps, seed, splits),
            f"trained (step {read_tree(model_path)['step']})": gradient_split(trained.model.train(), prior, reward, y,
                                                                              y_mask, cond, points, steps, seed, splits)}
    for name, split in rows.items():
        for row in split:
            print(name, row, file=sys.stderr)
    emit({"model": model_path, "rollouts": rollouts, "steps": steps, "points": points, "seed": seed,
          "classes": list(conditions.classes), "rows": rows, "threads": torch.get_num_threads(),
          "command": command_line("benchmarks.studies.ctrl_shapes_gradient"),
          "machine": machine_info()}, out, indent=1)


if __name__ == "__main__":
    main()

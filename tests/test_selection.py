"""Redrawing refused samples: an exact draw of the sampler restricted to the accepted set."""
import math

import pytest
import torch

from common.selection import redraw_refused


def _gaussian(generator: torch.Generator):
    return lambda rows: torch.randn(len(rows), 1, generator=generator)


def _positive(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return x[:, 0] > 0


def test_accepted_draws_follow_the_truncated_distribution():
    """N(0, 1) restricted to x > 0 is the half-normal: mean √(2/π), variance 1 − 2/π; a draw is accepted with
    probability 1/2, so the number of draws is geometric (mean 2, truncated at rounds + 1)."""
    n = 20_000
    x, draws, accepted = redraw_refused(_gaussian(torch.Generator().manual_seed(0)), _positive, n, rounds=30)
    assert accepted.all() and (x > 0).all()
    se = math.sqrt((1 - 2 / math.pi) / n)
    assert abs(x.mean().item() - math.sqrt(2 / math.pi)) < 4 * se
    assert abs(x.var().item() - (1 - 2 / math.pi)) < 0.02
    assert abs(draws.double().mean().item() - 2.0) < 4 * math.sqrt(2 / n)


def test_rows_refused_every_time_keep_their_last_draw_and_say_so():
    generator = torch.Generator().manual_seed(1)
    x, draws, accepted = redraw_refused(_gaussian(generator), _positive, 4000, rounds=2)
    assert torch.equal(accepted, x[:, 0] > 0)
    assert set(draws[~accepted].tolist()) == {3}
    assert abs((~accepted).double().mean().item() - 0.125) < 0.02  # refused three times in a row: 1/8
    _, once, _ = redraw_refused(_gaussian(torch.Generator().manual_seed(1)), _positive, 10, rounds=0)
    assert torch.equal(once, torch.ones(10, dtype=torch.long))


def test_each_redraw_is_asked_for_the_refused_rows_only():
    asked = []

    def draw(rows: torch.Tensor) -> torch.Tensor:
        asked.append(rows.tolist())
        return rows.view(-1, 1).float() + 10 * len(asked)  # row k's draw j: k + 10 j

    x, draws, accepted = redraw_refused(draw, lambda x, rows: (x[:, 0] >= 20) | (rows % 2 == 0), 5, rounds=3)
    assert asked == [[0, 1, 2, 3, 4], [1, 3]]
    assert x[:, 0].tolist() == [10, 21, 12, 23, 14] and draws.tolist() == [1, 2, 1, 2, 1] and accepted.all()


def test_negative_rounds_are_refused():
    with pytest.raises(ValueError, match="rounds"):
        redraw_refused(_gaussian(torch.Generator()), _positive, 3, rounds=-1)

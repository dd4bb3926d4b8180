"""Small pieces shared by the ``shapectrl`` commands."""
from __future__ import annotations

import click
import torch

from common.runtime import resolve_device


def device_option(name: str) -> torch.device:
    """The torch device of a ``--device`` value (auto, cpu, cuda, cuda:K), or a usage error naming it."""
    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as err:
        raise click.BadParameter(str(err), param_hint="--device") from None

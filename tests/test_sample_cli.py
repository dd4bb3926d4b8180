"""``molctrl sample``: files a person can open, metrics printed, clear errors; the shipped prior."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.weights import save_tree
from molctrl.cli import main
from molctrl.io import read_molecules
from molctrl.prior import MoleculeDiffusion, PriorConfig
from molctrl.weights import DEFAULT_PRIOR, load_prior


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    torch.manual_seed(0)
    hist = np.zeros(10)
    hist[[5, 7]] = 1
    save_tree(MoleculeDiffusion(PriorConfig(hidden=8, n_layers=1, n_steps=30), hist).export(), path)
    return path


@pytest.mark.parametrize("suffix", [".sdf", ".xyz"])
def test_sample_writes_molecules_and_metrics(tmp_path, tiny_model, suffix):
    out = tmp_path / f"mols{suffix}"
    result = CliRunner().invoke(main, ["sample", "-n", "6", "--steps", "4", "--model", str(tiny_model),
                                       "--out", str(out), "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["n"] == 6 and summary["sampling_steps"] == 4 and 0 <= summary["validity"] <= 1
    mols = read_molecules(out)
    assert len(mols) == 6 and {m.n_atoms for m in mols} <= {5, 7}


def test_sample_in_bfloat16_reports_it_and_rejects_unknown_precisions(tmp_path, tiny_model):
    out = tmp_path / "mols.sdf"
    args = ["sample", "-n", "4", "--steps", "3", "--model", str(tiny_model), "--out", str(out), "--json"]
    result = CliRunner().invoke(main, [*args, "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["precision"] == "bf16" and len(read_molecules(out)) == 4
    bad = CliRunner().invoke(main, [*args, "--precision", "fp8"])
    assert bad.exit_code == 2 and "'fp8' is not one of 'fp32', 'bf16', 'auto'" in bad.output


def test_auto_precision_is_bfloat16_only_where_the_cpu_has_bfloat16_units(tmp_path, tiny_model):
    from common.runtime import native_bfloat16, resolve_precision

    cpu = torch.device("cpu")
    with_units, without = tmp_path / "zen4", tmp_path / "older"
    with_units.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert native_bfloat16(cpu, with_units) and not native_bfloat16(cpu, without)
    assert not native_bfloat16(cpu, tmp_path / "missing")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    expected = "bf16" if native_bfloat16(cpu) else "fp32"
    assert resolve_precision("auto", cpu) == expected
    out = tmp_path / "mols.sdf"
    result = CliRunner().invoke(main, ["sample", "-n", "2", "--steps", "3", "--model", str(tiny_model), "--out", str(out),
                                       "--json", "--device", "cpu"])  # the default is auto
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["precision"] == expected


def test_sample_is_reproducible_with_a_seed(tmp_path, tiny_model):
    paths = [tmp_path / "a.xyz", tmp_path / "b.xyz"]
    for p in paths:
        CliRunner().invoke(main, ["sample", "-n", "3", "--steps", "3", "--model", str(tiny_model), "--out", str(p)])
    a, b = (read_molecules(p) for p in paths)
    assert all(np.array_equal(x.positions, y.positions) for x, y in zip(a, b))


def test_sample_rejects_bad_arguments(tmp_path, tiny_model):
    bad_suffix = CliRunner().invoke(main, ["sample", "--model", str(tiny_model), "--out", str(tmp_path / "x.txt")])
    assert bad_suffix.exit_code != 0 and "expected a .sdf or .xyz" in bad_suffix.output
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    bad_model = CliRunner().invoke(main, ["sample", "--model", str(junk), "--out", str(tmp_path / "x.sdf")])
    assert bad_model.exit_code == 2 and "junk.pt: not a weights file" in bad_model.output
    assert not (tmp_path / "x.sdf").exists()


@pytest.mark.skipif(not DEFAULT_PRIOR.exists(), reason="no shipped prior yet")
@pytest.mark.parametrize("steps, solver, precision", [(100, "ancestral", "fp32"), (25, "dpm2", "fp32"),
                                                      (25, "dpm2", "bf16")])
def test_shipped_prior_samples_mostly_valid_molecules(steps, solver, precision):
    """The 1,000-step prior walked by 100 ancestral steps or 25 second-order ones, also with bfloat16
    products (benchmarks: 87.7, 89.9 and 89.8 % valid of 1,000; here 64 molecules, so a loose floor)."""
    from common.diffusion import SOLVERS
    from common.runtime import set_precision
    from molctrl.metrics import evaluate_molecules

    model = set_precision(load_prior().eval(), precision)
    mols = model.sample(64, n_sampling_steps=steps, generator=torch.Generator().manual_seed(0), solver=SOLVERS[solver])
    summary = evaluate_molecules(mols).summary
    assert summary["validity"] >= 0.75 and summary["uniqueness"] >= 0.95, summary

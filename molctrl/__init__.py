"""molctrl: new controls for a pre-trained 3D molecule diffusion model.

    import molctrl

    generator = molctrl.load()                                  # SMC over the shipped prior
    result = generator.sample({"alpha": 70}, n=16, seed=0)
    report = molctrl.evaluate(result.molecules, {"alpha": 70})
    molctrl.write_molecules("alpha70.sdf", result.molecules)

The names below load on first use, so that importing one submodule (``molctrl.physics`` in a worker
process, say) does not import the whole package.
"""
from importlib import import_module

_EXPORTS = {"load": "molctrl.pipeline", "evaluate": "molctrl.pipeline", "MoleculeGenerator": "molctrl.pipeline",
            "GenerationConfig": "molctrl.pipeline", "Generated": "molctrl.pipeline",
            "read_molecules": "molctrl.io", "write_molecules": "molctrl.io", "Molecule": "molctrl.molecule"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'molctrl' has no attribute {name!r}")

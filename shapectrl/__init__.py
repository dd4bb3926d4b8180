"""shapectrl: new controls for a pre-trained 3D point-cloud diffusion model.

    import shapectrl

    generator = shapectrl.load()                                    # the shipped RGDM model
    result = generator.sample("chair", {"chair_back_height": 0.6}, n=4, seed=0)
    print(shapectrl.evaluate(result))                               # class accuracy, attribute MAE
    shapectrl.write_clouds("chairs", result.clouds)

The names below load on first use (importing one submodule does not import the whole package).
"""
from importlib import import_module

_EXPORTS = {"load": "shapectrl.pipeline", "evaluate": "shapectrl.pipeline", "score": "shapectrl.pipeline",
            "ShapeGenerator": "shapectrl.pipeline", "ShapeGenerationConfig": "shapectrl.pipeline",
            "GeneratedShapes": "shapectrl.pipeline", "write_clouds": "shapectrl.pipeline",
            "read_ply": "shapectrl.io", "write_ply": "shapectrl.io"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shapectrl' has no attribute {name!r}")

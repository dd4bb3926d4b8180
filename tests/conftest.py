"""Fixtures shared by test modules (built once per session, see :mod:`tests.support`)."""
import pytest

from tests.support import finetune_tiny, tiny_molecule_parts, write_weight_files


@pytest.fixture(scope="session")
def parts():
    return tiny_molecule_parts()


@pytest.fixture(scope="session")
def weight_files(parts, tmp_path_factory):
    return write_weight_files(parts, tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def conditioned_model(weight_files, tmp_path_factory):
    return finetune_tiny(weight_files, tmp_path_factory.mktemp("ctrl") / "run")

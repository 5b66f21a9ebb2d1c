"""Shared fixtures of the deployment tests."""

import pytest

from tests.deploy.schemas import ISTIO_CRDS_DEFAULT, ISTIO_CRDS_ENV, IstioSchemas, istio_crds_path


@pytest.fixture(scope="session")
def istio() -> IstioSchemas:
    """Istio's CRD schemas; the tests that need them skip, saying where to put them, when absent."""
    path = istio_crds_path()
    if path is None:
        pytest.skip(
            f"Istio's CRDs not found: set {ISTIO_CRDS_ENV} to istio/api's customresourcedefinitions.gen.yaml"
            f" or put it at {ISTIO_CRDS_DEFAULT}"
        )
    return IstioSchemas.load(path)

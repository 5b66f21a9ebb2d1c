"""Shared fixtures of the deployment tests."""

import os

import pytest

from tests.deploy.schemas import ISTIO_CRDS_DEFAULT, ISTIO_CRDS_ENV, IstioSchemas, istio_crds_path


@pytest.fixture(scope="session")
def istio() -> IstioSchemas:
    """Istio's CRD schemas; the tests that need them skip, saying where to put them, when absent."""
    path = istio_crds_path()
    if path is None:
        looked = os.environ.get(ISTIO_CRDS_ENV) or ISTIO_CRDS_DEFAULT
        pytest.skip(
            f"Istio's CRDs not found at {looked}: point {ISTIO_CRDS_ENV} at istio/api's"
            " customresourcedefinitions.gen.yaml (or put it there)"
        )
    return IstioSchemas.load(path)

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Deterministic by default so that CI results are reproducible; `--hypothesis-profile=explore`
# draws fresh examples (used once while writing the tests to look for flakiness and edge cases).
settings.register_profile("default", derandomize=True, deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("explore", derandomize=False, deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)

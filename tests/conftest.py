"""Fixtures shared by all tests: one thread for torch, tiny seeded models and images, an S3 endpoint."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--schemathesis-scale", type=int, default=1,
                     help="multiplies the schemathesis cases of tests/security/test_schemathesis.py (8: >= 20,000)")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Tiny models run faster on one thread, and CI's two cores are shared with the service tests.
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    from taming.glow import GlowConfig

    return GlowConfig(in_channel=1, img_size=8, n_flow=2, n_block=2, hidden=8, n_bits=5)


@pytest.fixture
def tiny_glow(tiny_config):
    """A seeded tiny Glow whose ActNorm layers were initialised on random images."""
    import torch

    from taming.glow import Glow

    torch.manual_seed(0)
    model = Glow(tiny_config)
    with torch.no_grad():
        model(torch.rand(16, 1, 8, 8) - 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def two_people():
    """Two synthetic "identities" of 16x16 grey images: a pattern and its negative, plus noise."""
    import numpy as np
    import torch

    from taming.data import FaceSet

    gen = torch.Generator().manual_seed(0)
    pattern = torch.rand(1, 1, 16, 16, generator=gen) * 200 + 30
    a = pattern + 15 * torch.randn(20, 1, 16, 16, generator=gen)
    b = 255 - pattern + 15 * torch.randn(20, 1, 16, 16, generator=gen)
    images = torch.cat([a, b]).clamp(0, 255).to(torch.uint8)
    identity = np.repeat([0, 1], 20)
    names = [f"img{i}" for i in range(40)]
    return FaceSet(images, identity, names, [f"{i:064x}" for i in range(40)])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The S3 endpoint of CI (.ci/run starts moto's server), else moto's server on a free loopback port."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    given = os.environ.get("TAMING_TEST_S3_ENDPOINT_URL")
    if given:
        yield given
        return
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()

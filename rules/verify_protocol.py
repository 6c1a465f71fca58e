"""The messages between the API and its warm verify process (app/verify.py, worker/verify_server.py).

One JSON object per line each way. Both sides validate what they read against these models, so a change of a
field is made here once and neither side parses untyped dictionaries. Torch-free: the API imports it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Message(BaseModel):
    # a broken model's bpd can be infinite: written as the JSON constants json.loads reads, not as null
    model_config = ConfigDict(ser_json_inf_nan="constants")


class ImageRef(_Message):
    """One uploaded image, written by the API to a temporary file the child reads."""

    path: str
    name: str
    counted: bool = True  # part of the verdict (images that carry no identity are not)


class VerifyAsk(_Message):
    """A request: these images against one model version's threshold."""

    id: int | None = None  # the API's request number, echoed in the answer
    model_id: str
    version: int
    sha256: str  # of the version's checkpoint: the child's cache key
    checkpoint_key: str
    remember_keys: list[str]  # the live remember-set revision's objects, for statistics not stored yet
    image_size: int
    channels: int
    images: list[ImageRef]
    delta: float
    epsilon: float | None


class StatsOut(_Message):
    """μ_R and σ_R (bpd) of the version's remember images, and how they were measured (taming.verify)."""

    mu: float
    sigma: float
    n: int
    draws: int
    seed: int


class ImageOut(_Message):
    name: str
    bpd: float
    quantile: float
    d: float
    reached: bool  # at or past the threshold
    counted: bool


class VerdictOut(_Message):
    """taming.verify.Verdict as it crosses the pipe."""

    delta: float
    epsilon: float
    threshold: float  # t = μ_R + δ·σ_R, in bpd
    remember: StatsOut
    images: list[ImageOut]
    reached: bool  # every counted image at or past the threshold
    counted: int
    summary: str


class VerifyAnswer(_Message):
    """The child's answer: a verdict, or a code and message for a request it could not answer."""

    id: int | None = None
    ok: bool
    verdict: VerdictOut | None = None
    stats_source: str | None = None  # "run" (the job measured them) or "reference_set" (computed here)
    seconds: float | None = None
    code: str | None = None
    message: str | None = None

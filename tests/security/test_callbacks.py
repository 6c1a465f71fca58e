"""callback_url: the issue's internal addresses are refused at submission and again at delivery, where the
worker connects to the address it checked (DNS that changes between check and POST cannot lead it inside) and
never follows a redirect. (tests/service/test_svc_webhooks.py covers the delivery loop end to end.)"""

from __future__ import annotations

import httpx
import pytest

from app import ssrf
from app.models import WebhookEvent
from app.settings import Settings
from app.webhook_delivery import send

ISSUE_LIST = ["http://127.0.0.1:6379/", "http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/",
              "http://10.0.0.1/", "http://[::1]/", "http://2130706433/", "http:///etc/passwd"]
PUBLIC = "93.184.216.34"


@pytest.mark.parametrize("url", ISSUE_LIST)
def test_the_issues_addresses_are_refused(url: str) -> None:
    with pytest.raises(ssrf.UnsafeUrl):
        ssrf.check(url, resolve=lambda host, port: [PUBLIC])  # even were names to resolve outside


@pytest.mark.parametrize("inside", ["127.0.0.1", "10.0.0.7", "169.254.169.254", "::1", "fd00:ec2::254"])
def test_a_name_resolving_inside_is_refused(inside: str) -> None:
    with pytest.raises(ssrf.UnsafeUrl, match="resolves to"):
        ssrf.check("https://hooks.example/x", resolve=lambda host, port: [PUBLIC, inside])


def _event(url: str) -> WebhookEvent:
    return WebhookEvent(id="msg_1", job_id="j", key_id="k", event_type="job.completed", url=url, body="{}",
                        state="pending", attempts=0)


def test_delivery_rechecks_and_connects_to_the_checked_address(tmp_path: object) -> None:
    settings = Settings(var_dir=tmp_path)  # type: ignore[arg-type]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "http://127.0.0.1:6379/"})

    secret = "whsec_" + "A" * 32
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        # the name resolved outside at submission, and resolves inside now: nothing is sent
        refused = send(_event("http://rebind.example/h"), secret, settings, http, lambda host, port: ["10.0.0.7"])
        assert refused.error is not None and refused.error.startswith("refused") and not seen
        # outside now: the POST goes to that very address, and its redirect is not followed
        out = send(_event("http://rebind.example/h"), secret, settings, http, lambda host, port: [PUBLIC])
    assert [str(r.url) for r in seen] == [f"http://{PUBLIC}/h"] and seen[0].headers["host"] == "rebind.example"
    assert out.status_code == 302 and "redirects are not followed" in (out.error or "")

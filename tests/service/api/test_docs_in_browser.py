"""In a real headless browser (Playwright driving Debian's /usr/bin/chromium), with every
request to a host other than the server aborted: `/docs` and `/redoc` render from the server's
own assets, the Pareto picture of a finished job loads, and the report page draws its
interactive front (screenshot: docs/img/report.png). The server is the real embedded
`autocompress serve` with JSON logs, running a small digits job."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.test_jobs_end_to_end import DIGITS_CONFIG, digits_job, register, wait_for

CHROMIUM = Path("/usr/bin/chromium")
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "img" / "report.png"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no browser: /usr/bin/chromium is not installed"),
]


@pytest.fixture
def finished_job(make_stack, digits_model):  # noqa: ANN001, ANN201
    """(stack, job JSON): the embedded server with JSON logs and a finished 2-trial job."""
    stack = make_stack()
    stack.env["AUTOCOMPRESS_LOG_FORMAT"] = "json"
    stack.env["AUTOCOMPRESS_EMBEDDED_WORKERS"] = "2"  # the two trials side by side
    stack.serve()
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        spec = digits_job(register(client, digits_model, "mlp", DIGITS_CONFIG), trials=2, parallel=2)
        spec["finetune"]["epochs"] = 1
        reply = client.post("/v1/jobs", json=spec)
        assert reply.status_code == 202, reply.text
        job = wait_for(client, reply.json()["id"], timeout=180, procs=stack.procs)
    assert job["state"] == "succeeded", job
    return stack, job


def test_docs_pictures_and_report_work_offline_in_a_browser(finished_job) -> None:  # noqa: ANN001
    from playwright.sync_api import sync_playwright

    stack, job = finished_job
    server = urlsplit(stack.url).netloc
    blocked: list[str] = []

    def only_the_server(route) -> None:  # noqa: ANN001
        if urlsplit(route.request.url).netloc == server:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 800})
            context.route("**/*", only_the_server)
            page = context.new_page()

            page.goto(f"{stack.url}/docs")
            submit = page.locator(".opblock-post", has_text="/v1/jobs").first
            submit.wait_for(state="visible", timeout=30_000)
            assert "/v1/jobs" in submit.inner_text()
            assert page.locator(".opblock-get", has_text="/pareto.svg").first.is_visible()
            width = page.evaluate(
                """src => new Promise(done => { const img = new Image();
                   img.onload = () => done(img.naturalWidth); img.onerror = () => done(0);
                   img.src = src; document.body.appendChild(img); })""",
                job["links"]["pareto_svg"],
            )
            assert width > 0

            page.goto(f"{stack.url}/redoc")
            page.locator("h2", has_text="Submit Job").first.wait_for(state="visible", timeout=30_000)

            page.goto(f"{stack.url}{job['links']['report']}")
            page.locator("#front .main-svg").first.wait_for(state="visible", timeout=30_000)
            picture = page.locator("#pareto-picture")
            picture.scroll_into_view_if_needed()
            page.wait_for_function("document.getElementById('pareto-picture').complete")
            assert page.evaluate("document.getElementById('pareto-picture').naturalWidth") > 0
            assert page.locator("#trials tbody tr").count() == 2
            assert page.locator("#best-checkpoint").get_attribute("href") == job["best"]["checkpoint_url"]
            page.evaluate("window.scrollTo(0, 0)")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
    # ReDoc's bundle shows Redocly's logo from its CDN: cosmetic, aborted, the page works
    outside = [url for url in blocked if url != REDOC_LOGO]
    assert outside == [], f"the pages asked for outside resources: {outside}"

    lines = [json.loads(line) for line in stack.procs[0].output().splitlines() if line.startswith("{")]
    started = [r for r in lines if r.get("message", "").endswith("started") and "trial_id" in r]
    assert started and all(r["job_id"] == job["id"] for r in started), lines[-5:]

"""The web UI in a real browser: Debian's chromium, driven by Selenium through /usr/bin/chromedriver.

The services run with authentication on (both databases); the web UI is a real uvicorn in front of them. Nothing
here downloads a browser: `make install` installs the chromium and chromium-driver packages.

With MREG_UPDATE_SCREENSHOTS=1 the tests also save the screenshots the README shows (tests/e2e/screenshots/).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from mreg.client.web import RunningWeb
from tests.web import push_files, running_web, unique

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).parent / "screenshots"
WAIT_SECONDS = 15

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        # Never skipped quietly: CI must run these. `make install` installs the packages or fails saying why.
        pytest.fail(
            f"the browser tests need {CHROMIUM} and {CHROMEDRIVER}: run make install (apt packages "
            "chromium and chromium-driver)"
        )
    profile = tempfile.mkdtemp(prefix="mreg-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def web(secured) -> Iterator[RunningWeb]:
    with running_web(secured.metadata.address, secured.blob.address) as running:
        yield running


@pytest.fixture(scope="module")
def catalog(secured, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A project with an artifact of six versions and a registered model, and a maintainer token scoped to it."""
    root = tmp_path_factory.mktemp("web-ui")
    project = unique("vision")
    artifact = f"acme/{project}/resnet"
    model = f"acme/{project}/Image Classifier"
    maintainer = secured.create_token("web-maintainer", "maintainer", f"acme/{project}")
    with secured.registry(maintainer, project=project) as registry:
        for i in range(6):
            push_files(
                registry,
                root,
                artifact,
                {
                    "weights.bin": os.urandom(2048 + i),
                    "config.json": f'{{"layers": {50 + i}}}',
                    "tokenizer/vocab.txt": "a b c",
                },
                metadata={"val_loss": round(0.9 / (i + 1) + 0.05 * (i % 2), 4), "accuracy": 0.7 + 0.04 * i},
                tags=["fp16"] if i % 2 else ["fp32"],
                description=f"ResNet-50 **run {i}**: fine-tuned on the *vision* set.",
                run=f"train-{i}",
            )
        registry.set_alias(f"{artifact}:v3", "best")
        registry.link(
            f"{artifact}:v3",
            model,
            aliases=["production"],
            create=True,
            description="# Image Classifier\n\nTop-1 **0.86** on the validation set.\n\n- input: 224x224\n- team: cv",
        )
        registry.link(f"{artifact}:v5", model, aliases=["staging"])
        registry.record_run_inputs(f"acme/{project}/evaluate-3", [f"{artifact}:v3"])
    return {"project": project, "artifact": artifact, "model": model, "maintainer": maintainer}


def wait(driver: WebDriver) -> WebDriverWait:
    return WebDriverWait(driver, WAIT_SECONDS)


def shoot(driver: WebDriver, name: str) -> None:
    """Saves a screenshot for the README when MREG_UPDATE_SCREENSHOTS=1 (once, on the first database)."""
    if os.environ.get("MREG_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def sign_in(driver: WebDriver, web: RunningWeb, token: str) -> None:
    driver.get(web.url + "/")
    if driver.find_elements(By.ID, "signed-in-as"):
        return
    wait(driver).until(ec.presence_of_element_located((By.ID, "token"))).send_keys(token)
    driver.find_element(By.ID, "signin").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "signed-in-as")))


def test_a_user_signs_in_and_browses_from_entity_to_a_version(browser: WebDriver, web: RunningWeb, catalog) -> None:
    project = catalog["project"]
    browser.delete_all_cookies()
    browser.get(f"{web.url}/p/acme/{project}")
    assert "/signin" in browser.current_url  # nothing shows before sign-in
    browser.find_element(By.ID, "token").send_keys("mreg_wrong-token")
    browser.find_element(By.ID, "signin").click()
    assert "not valid" in wait(browser).until(ec.presence_of_element_located((By.ID, "signin-error"))).text

    browser.find_element(By.ID, "token").send_keys(catalog["maintainer"])
    browser.find_element(By.ID, "signin").click()
    wait(browser).until(ec.url_to_be(f"{web.url}/p/acme/{project}"))  # back where the user was going
    assert "maintainer" in browser.find_element(By.ID, "signed-in-as").text

    browser.find_element(By.CSS_SELECTOR, "a.brand").click()
    wait(browser).until(ec.element_to_be_clickable((By.ID, "suggested"))).click()  # the token's entity
    wait(browser).until(ec.element_to_be_clickable((By.LINK_TEXT, project))).click()
    shoot(browser, "project")
    wait(browser).until(ec.element_to_be_clickable((By.LINK_TEXT, "resnet"))).click()
    rows = wait(browser).until(ec.presence_of_all_elements_located((By.CSS_SELECTOR, "tr[data-version]")))
    assert [row.get_attribute("data-version") for row in rows] == ["v5", "v4", "v3", "v2", "v1", "v0"]
    browser.find_element(By.LINK_TEXT, "v3").click()
    heading = wait(browser).until(ec.presence_of_element_located((By.ID, "version-name")))
    assert heading.text.startswith(f"{catalog['artifact']}:v3")
    assert "run 3" in browser.find_element(By.CSS_SELECTOR, "#description strong").text  # Markdown rendered
    tree = browser.find_element(By.ID, "files").text
    assert "tokenizer/" in tree and "vocab.txt" in tree and "weights.bin" in tree
    assert "Image Classifier:v0" in browser.find_element(By.ID, "links").text
    assert f"mreg pull '{catalog['artifact']}:v3'" in browser.find_element(By.ID, "pull-snippet").text
    shoot(browser, "version")


def test_a_filter_narrows_the_table_and_a_wrong_one_points_at_its_position(
    browser: WebDriver, web: RunningWeb, catalog
) -> None:
    sign_in(browser, web, catalog["maintainer"])
    browser.get(f"{web.url}/a/acme/{catalog['project']}/resnet")
    box = wait(browser).until(ec.presence_of_element_located((By.ID, "filter")))
    box.clear()
    box.send_keys('tag = "fp16" AND metadata.accuracy > 0.75')
    browser.find_element(By.ID, "cols").send_keys("val_loss,accuracy")
    browser.find_element(By.ID, "apply").click()
    wait(browser).until(ec.url_contains("filter="))
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-version]")
    assert [row.get_attribute("data-version") for row in rows] == ["v5", "v3"]
    assert "accuracy" in browser.find_element(By.CSS_SELECTOR, "table.versions thead").text
    shoot(browser, "artifact-filtered")

    box = browser.find_element(By.ID, "filter")
    box.clear()
    box.send_keys("metadata.accuracy >> 0.5")
    browser.find_element(By.ID, "apply").click()
    error = wait(browser).until(ec.presence_of_element_located((By.ID, "filter-error"))).text
    assert "expected a value at position 20" in error  # the second ">"
    caret = browser.find_element(By.CSS_SELECTOR, "#filter-error pre.caret").text.splitlines()
    assert caret[0] == "metadata.accuracy >> 0.5" and caret[1].index("^") == 19
    assert not browser.find_elements(By.CSS_SELECTOR, "tr[data-version]")


def test_the_chart_opens_from_the_artifact_page_and_marks_aliased_versions(
    browser: WebDriver, web: RunningWeb, catalog
) -> None:
    sign_in(browser, web, catalog["maintainer"])
    browser.get(f"{web.url}/a/acme/{catalog['project']}/resnet")
    wait(browser).until(ec.element_to_be_clickable((By.ID, "chart-link"))).click()
    key = wait(browser).until(ec.presence_of_element_located((By.ID, "key")))
    key.find_element(By.CSS_SELECTOR, 'option[value="val_loss"]').click()
    browser.find_element(By.CSS_SELECTOR, "#chart-form button").click()
    wait(browser).until(ec.url_contains("key=val_loss"))
    chart = browser.find_element(By.CSS_SELECTOR, "#chart svg")
    assert chart.size["width"] > 300
    points = chart.find_elements(By.CSS_SELECTOR, "[data-version]")
    assert len(points) == 6
    marked = {g.get_attribute("data-version"): g.text for g in chart.find_elements(By.CSS_SELECTOR, "g.aliased")}
    assert "best" in marked["v3"] and "v5" in marked  # best, and latest
    shoot(browser, "chart")


def test_promote_uses_compare_and_set_and_reports_a_move_made_meanwhile(
    browser: WebDriver, web: RunningWeb, catalog, secured
) -> None:
    sign_in(browser, web, catalog["maintainer"])
    page = f"{web.url}/m/acme/{catalog['project']}/Image%20Classifier"
    browser.get(page)
    shoot(browser, "registered-model")
    row = wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-alias="production"]')))
    assert row.find_element(By.CSS_SELECTOR, "td.current").text == "v0"
    row.find_element(By.NAME, "target").send_keys("1")
    row.find_element(By.CSS_SELECTOR, "button").click()
    flash = wait(browser).until(ec.presence_of_element_located((By.ID, "flash")))
    assert flash.text == "production moved from v0 to v1."
    assert "v1" in browser.find_element(By.CSS_SELECTOR, '#alias-history table[data-alias="production"]').text

    # The page shows production at v1; another client moves it to v0 before the user clicks.
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-alias="production"]')
    row.find_element(By.NAME, "target").send_keys("1")
    with secured.registry(catalog["maintainer"], project=catalog["project"]) as registry:
        registry.set_alias(f"{catalog['model']}:v0", "production", expected_index=1)
    browser.find_element(By.CSS_SELECTOR, 'tr[data-alias="production"] button').click()
    flash = wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#flash.conflict")))
    assert "production was changed by" in flash.text and "now names v0, not v1 as this page showed" in flash.text
    assert browser.find_element(By.CSS_SELECTOR, 'tr[data-alias="production"] td.current').text == "v0"
    with secured.registry(catalog["maintainer"], project=catalog["project"]) as registry:
        assert registry.get_registered_model(catalog["model"]).aliases["production"] == 0


def test_a_version_committed_elsewhere_appears_without_a_reload(
    browser: WebDriver, web: RunningWeb, catalog, secured, tmp_path: Path
) -> None:
    sign_in(browser, web, catalog["maintainer"])
    browser.get(f"{web.url}/a/acme/{catalog['project']}/resnet")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-version="v5"]')))
    browser.execute_script("window.__samePage = true;")
    time.sleep(1)  # the EventSource connects and the web UI opens its Watch stream
    with secured.registry(catalog["maintainer"], project=catalog["project"]) as registry:
        index = push_files(registry, tmp_path, catalog["artifact"], {"weights.bin": os.urandom(99)}).index
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-version="v{index}"]')))
    assert browser.execute_script("return window.__samePage === true;"), "the page was reloaded"
    assert "updated" in browser.find_element(By.ID, "live-status").text
    # The aliases panel stays as loaded (its forms send what it shows) and says it may be out of date.
    assert browser.find_element(By.ID, "aliases-stale").is_displayed()
    shoot(browser, "artifact")


def test_hostile_names_metadata_and_markdown_are_shown_as_text_and_never_run(
    browser: WebDriver, web: RunningWeb, catalog, secured, tmp_path: Path
) -> None:
    sign_in(browser, web, catalog["maintainer"])
    artifact = f"acme/{catalog['project']}/evil"
    script = "<script>window.__pwned = 1</script>"
    with secured.registry(catalog["maintainer"], project=catalog["project"]) as registry:
        push_files(
            registry,
            tmp_path,
            artifact,
            {"<img src=x onerror=window.__pwned=2>.bin": b"x"},
            metadata={"note": f"{script}<img src=x onerror=window.__pwned=3>", "loss": 1},
            tags=["fp16"],
            description=f"# Title {script}\n\n<img src=x onerror=window.__pwned=4>\n\n"
            "[click](javascript:window.__pwned=5)",
        )
        push_files(registry, tmp_path, artifact, {"b.bin": b"y"}, metadata={"loss": 2})
    base = f"{web.url}/a/acme/{catalog['project']}/evil"
    for url in (f"{base}/v/0", f"{base}?cols=note", f"{base}/compare?a=0&b=1", f"{base}/chart"):
        browser.get(url)
        wait(browser).until(ec.presence_of_element_located((By.TAG_NAME, "main")))
        assert browser.execute_script("return window.__pwned === undefined;"), url
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert opened
        if url.endswith("/v/0"):
            text = browser.find_element(By.TAG_NAME, "main").text
            assert f"Title {script}" in text  # shown as text, not run
            assert "<img src=x onerror=window.__pwned=4>" in text
            link = browser.find_elements(By.LINK_TEXT, "click")
            assert not link or not (link[0].get_attribute("href") or "").startswith("javascript:")
            assert "<img src=x onerror=window.__pwned=2>.bin" in browser.find_element(By.ID, "files").text
    browser.get(f"{base}/v/0")
    # Clicking what looks like a link runs nothing either.
    for anchor in browser.find_elements(By.CSS_SELECTOR, "#description a"):
        anchor.click()
    assert browser.execute_script("return window.__pwned === undefined;")

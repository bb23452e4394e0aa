"""The browser front end in a real browser: Debian's chromium, headless, driven through its own
chromedriver by selenium, on the page served against the tiny service. Protect a photo, see the
new face and its score, see another key give another face, and see the service's own message for
a file that is not an image. The page's screenshot is kept in out/test-artifacts/."""

from __future__ import annotations

import io
import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.test_protect import faces

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the test extra)")
from selenium.webdriver.common.by import By  # noqa: E402 - after the skip above
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = REPO / "out" / "test-artifacts"
WAIT_S = 90  # a tiny refinement takes a few seconds; the page must show it well within this


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/install.sh installs them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # the system's browser: nothing is downloaded
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def open_page(driver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#key input"))


def type_key(driver, key: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, "#key input")
    field.clear()
    field.send_keys(key)
    assert field.get_attribute("type") == "password"  # never shown


def upload(driver, elem_id: str, path: Path) -> None:
    """Upload ``path`` and wait until the server has it: the component then links the stored copy."""
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(str(path))

    def stored(d) -> bool:
        links = d.find_elements(By.CSS_SELECTOR, f"#{elem_id} a[href]")
        return any("file=" in (link.get_attribute("href") or "") for link in links)

    WebDriverWait(driver, WAIT_S).until(stored)


def protected_image(driver, url: str, previous: str | None = None) -> tuple[str, np.ndarray]:
    """The src of the gallery's second picture (the protected face), once it is there and is not
    ``previous``, and its pixels as the page serves them."""

    def ready(d) -> str | bool:
        images = d.find_elements(By.CSS_SELECTOR, "#faces img")
        src = images[1].get_attribute("src") if len(images) >= 2 else None
        return src if src and src != previous else False

    src = WebDriverWait(driver, WAIT_S).until(ready)
    with urllib.request.urlopen(src, timeout=30) as response:
        return src, np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=np.int16)


BROWSER_STORAGE = """
const done = arguments[arguments.length - 1];
const request = (r) => new Promise((ok, no) => { r.onsuccess = () => ok(r.result); r.onerror = () => no(r.error); });
(async () => {
    let text = JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage});
    for (const info of await indexedDB.databases()) {
        const db = await request(indexedDB.open(info.name));
        for (const store of db.objectStoreNames) {
            text += JSON.stringify(await request(db.transaction(store).objectStore(store).getAll()));
        }
        db.close();
    }
    done(text);
})().catch((error) => done("could not read the storage: " + error));
"""


def browser_storage(driver) -> str:
    """What the page left in the browser: local and session storage and every IndexedDB record."""
    text = driver.execute_async_script(BROWSER_STORAGE)
    assert not text.startswith("could not read"), text
    return text


def test_protect_in_a_browser(browser, ui_page: str, tmp_path: Path) -> None:
    photo = tmp_path / "face.png"
    Image.fromarray(faces(1, seed=41)[0]).save(photo)
    open_page(browser, ui_page)
    type_key(browser, "browser-test-key-1")
    upload(browser, "photos", photo)
    browser.find_element(By.ID, "protect").click()
    src, first = protected_image(browser, ui_page)
    original = np.asarray(Image.open(photo).resize(first.shape[1::-1]), dtype=np.int16)
    assert np.abs(first - original).mean() > 10  # a new face, not the photo
    WebDriverWait(browser, WAIT_S).until(lambda d: "Enrolled" in d.find_element(By.ID, "enrolled").text)
    scores = browser.find_element(By.ID, "scores").text
    assert "cos(protected, original)" in scores and re.search(r"\b1\s+[+-]\d\.\d{3}\b", scores)
    browser.save_screenshot(str(ARTIFACTS / "ui_protect.png"))

    type_key(browser, "browser-test-key-2")
    browser.find_element(By.ID, "protect").click()
    _, second = protected_image(browser, ui_page, previous=src)
    assert np.abs(second - first).mean() > 5  # another key, another face
    assert "browser-test-key" not in browser.page_source  # the key is never echoed
    assert "browser-test-key" not in browser_storage(browser)  # nor kept in the browser (Gradio's run history)


def test_a_non_image_shows_the_services_message(browser, ui_page: str, tmp_path: Path) -> None:
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not a picture")
    open_page(browser, ui_page)  # a new session
    type_key(browser, "browser-test-key-1")
    upload(browser, "photos", junk)
    browser.find_element(By.ID, "protect").click()
    message = "IMAGE item 0: cannot be decoded as an image"
    WebDriverWait(browser, WAIT_S).until(lambda d: message in d.find_element(By.TAG_NAME, "body").text)
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(ARTIFACTS / "ui_error.png"))


def test_a_key_file_enrolls_and_the_typed_key_verifies(browser, ui_page: str, tmp_path: Path) -> None:
    photo, key_file = tmp_path / "face.png", tmp_path / "mine.key"
    Image.fromarray(faces(1, seed=42)[0]).save(photo)
    key_file.write_bytes(b"browser-test-key-3\n")
    open_page(browser, ui_page)
    browser.find_element(By.CSS_SELECTOR, "#key-file input[type=file]").send_keys(str(key_file))
    note = "Key file loaded (18 bytes), kept for this browser session only."
    WebDriverWait(browser, WAIT_S).until(lambda d: note in d.find_element(By.ID, "key-note").text)
    upload(browser, "photos", photo)
    browser.find_element(By.ID, "protect").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "Enrolled" in d.find_element(By.ID, "enrolled").text)
    type_key(browser, "browser-test-key-3")  # the file's key, typed: the same new face
    upload(browser, "probe", photo)
    browser.find_element(By.ID, "verify").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "score" in d.find_element(By.ID, "verdict").text)
    verdict = browser.find_element(By.ID, "verdict").text
    assert re.match(r"score \+(0\.99\d|1\.000) — match \(threshold 0\.50\)", verdict), verdict
    assert "browser-test-key-3" not in browser.page_source + browser_storage(browser)

"""The MLflow UI over the pipeline's store: a real `mlflow server` on 127.0.0.1, headless Debian Chromium driven
by selenium. The experiment's runs (seeds grouped under their parent) and the report run's tables and figures
must be listed. The runs page's screenshot goes to the test's temp dir; with FGA_UPDATE_SCREENSHOTS=1
(`make screenshots`) it replaces the README's reports/mlflow_ui.png, so plain test runs leave the git tree clean."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import mlflow_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
README_SCREENSHOT = ROOT / "reports" / "mlflow_ui.png"


def screenshot_path(tmp: Path) -> Path:
    """Where the runs-page screenshot goes: the tracked README copy only when asked to refresh it."""
    return README_SCREENSHOT if os.environ.get("FGA_UPDATE_SCREENSHOTS") == "1" else tmp / "mlflow_ui.png"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1500,760"]
RECALLS = ["i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10"]


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists() and not shutil.which(Path(path).name):
            return f"{path} not found (Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    return None


def populate(tmp: Path, uri: str) -> dict:
    """Evaluate runs of two methods x two seeds, then `fga report` (tables, figures, report run)."""
    from fga.report import write_report
    from fga.tracking import log_run

    cfg = {"grid": {"datasets": ["synthetic"], "backbones": ["lite0_roi"], "methods": ["grm", "vse_mean"], "seeds": [0, 1]},
           "methods": {"grm": {}, "vse_mean": {}},
           "tracking": {"uri": uri, "artifact_root": str(tmp / "mlartifacts")},
           "report": {"tables_dir": str(tmp / "reports/tables"), "figures_dir": str(tmp / "reports/figures")}}
    for method, base in (("grm", 40.0), ("vse_mean", 30.0)):
        for seed in (0, 1):
            metrics = {f"full/{k}": base + seed + 5 * i for i, k in enumerate(RECALLS)}
            metrics["full/rsum"] = sum(metrics.values())
            log_run(cfg, {"dataset": "synthetic", "backbone": "lite0_roi", "method": method, "seed": seed,
                          "stage": "evaluate"}, metrics=metrics, params={"evaluate": {"split": "test"}},
                    tags={"protocol": "full", "split": "test", "weights_source": "packaged"})
    write_report(cfg, quiet=True)
    return cfg


def small_png(src: bytes, dst: Path) -> None:
    """Save a screenshot as a 128-colour PNG (a fraction of the size; the UI has few colours)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(src)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, optimize=True)


def test_mlflow_ui_lists_runs_and_report_artifacts(tmp_path):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    populate(tmp_path, uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp_id = mlflow.MlflowClient().get_experiment_by_name("fga-synthetic").experiment_id
    report_id = mlflow.search_runs(experiment_ids=[exp_id], filter_string="tags.stage = 'report'")["run_id"][0]

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        opts.add_argument(flag)
    with mlflow_server(tmp_path, uri) as url:
        try:
            driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or CHROMEDRIVER), options=opts)
        except WebDriverException as exc:
            pytest.skip(f"headless Chromium did not start: {exc.msg}")
        try:
            def shows(*texts, timeout=120):
                try:
                    WebDriverWait(driver, timeout, poll_frequency=0.5).until(
                        lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts))
                except TimeoutException:
                    body = driver.find_element(By.TAG_NAME, "body").text
                    driver.save_screenshot(str(tmp_path / "failure.png"))
                    pytest.fail(f"the UI did not show {texts} within {timeout} s; it shows:\n{body[:3000]}")

            # the runs table: one parent row per (backbone, method), the report run, 2 x 2 seeds inside the parents
            driver.get(f"{url}/#/experiments/{exp_id}/runs")
            shows("Training runs", "lite0_roi/grm", "lite0_roi/vse_mean", "report", "7 matching runs")
            for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
                if button.is_displayed():  # the assistant side panel
                    button.click()
            for row in driver.find_elements(By.CSS_SELECTOR, "[role='row']"):
                for button in row.find_elements(By.TAG_NAME, "button"):
                    if button.is_displayed() and not button.text.strip():  # the parent rows' expanders
                        button.click()
            shows("lite0_roi/grm/seed0/evaluate", "lite0_roi/grm/seed1/evaluate", "lite0_roi/vse_mean/seed1/evaluate")
            small_png(driver.get_screenshot_as_png(), screenshot_path(tmp_path))

            # the report run's artifacts: tables and figures, and a table rendered in the preview
            driver.get(f"{url}/#/experiments/{exp_id}/runs/{report_id}/artifacts/tables/main.md")
            shows("Artifacts", "figures", "tables", "main.md", "main.tex", "main_provenance.csv",
                  "paper_reference.md", "Image-text retrieval (test split)")
            driver.get(f"{url}/#/experiments/{exp_id}/runs/{report_id}/artifacts/figures/seed_spread.png")
            driver.refresh()  # a hash change alone keeps the previous preview
            shows("seed_spread.png", "seed_spread.pdf", "figures")
            # the figure itself is fetched from the server and rendered (a blob image with real pixels)
            WebDriverWait(driver, 60).until(lambda d: any(
                (img.get_attribute("src") or "").startswith("blob:") and int(img.get_attribute("naturalWidth") or 0) > 200
                for img in d.find_elements(By.TAG_NAME, "img")))
            driver.save_screenshot(str(tmp_path / "report_artifacts.png"))
        finally:
            driver.quit()
    assert screenshot_path(tmp_path).stat().st_size > 10_000

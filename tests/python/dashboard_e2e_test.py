"""The coordinator's web dashboard in a real browser (headless Chromium driven by Selenium with
Debian's chromedriver): a coordinator with --http-listen and a worker run a job whose stages
leave figures; the test checks that
  - the page and its API refuse a missing or wrong token (401, the login form);
  - the login form takes the client token, and the page then lists the job, its state and
    progress, and the worker;
  - the job's page draws its stage DAG with one cell per task, a task's attempts and worker,
    the report's perplexities and its figures (images that loaded);
  - a job submitted while the page is open appears without a reload (live refresh);
and takes a screenshot (dashboard.png in the working directory; MOEC_UPDATE_SCREENSHOT=1 also
writes docs/images/dashboard.png, the README's).
Usage: dashboard_e2e_test.py BIN_DIR
"""
import json
import os
import shutil
import sys
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moec_cluster import Cluster  # noqa: E402

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BIN_DIR = None
SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def status_of(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1500", "--hide-scrollbars"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                            options=opts)


class DashboardTest(unittest.TestCase):
    def test_dashboard(self):
        with Cluster(BIN_DIR, workers=1, dashboard=True) as c:
            job_id = json.loads(c.cli("submit", c.recipe("dash"), "--json"))["job"]["job_id"]
            c.cli("watch", job_id)
            self.check_refusals(c)
            driver = browser()
            try:
                self.log_in(driver, c)
                self.check_overview(driver, job_id)
                self.check_job(driver, c, job_id)
                self.check_live_refresh(driver, c)
                driver.get(c.dashboard_url + "/#job=" + job_id)
                self.wait_for_figures(driver)
                self.screenshot(driver)
            finally:
                driver.quit()

    def check_refusals(self, c):
        code, body = status_of(c.dashboard_url + "/")
        self.assertEqual(code, 401)
        self.assertIn('action="/login"', body)
        self.assertEqual(status_of(c.dashboard_url + "/api/overview")[0], 401)
        with open(c.worker_token_file) as f:
            worker = f.read()
        self.assertEqual(status_of(c.dashboard_url + "/api/overview",
                                   {"Authorization": "Bearer " + worker})[0], 401)
        self.assertEqual(status_of(c.dashboard_url + "/api/overview",
                                   {"Authorization": "Bearer " + c.client_token})[0], 200)

    def log_in(self, driver, c):
        driver.get(c.dashboard_url + "/")
        driver.find_element(By.ID, "token").send_keys("wrong")
        driver.find_element(By.ID, "login-submit").click()
        self.assertIn("not the coordinator", driver.find_element(By.ID, "login-error").text)
        driver.find_element(By.ID, "token").send_keys(c.client_token)
        driver.find_element(By.ID, "login-submit").click()
        WebDriverWait(driver, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#jobs tr.job")))
        cookie = driver.get_cookie("moec_token")
        self.assertTrue(cookie["httpOnly"])
        self.assertEqual(cookie["sameSite"], "Strict")

    def check_overview(self, driver, job_id):
        row = driver.find_element(By.CSS_SELECTOR, '#jobs tr[data-job-id="%s"]' % job_id)
        self.assertIn("succeeded", row.text)
        self.assertIn("9/9", row.text)
        workers = driver.find_element(By.ID, "workers").text
        self.assertIn("py0", workers)
        self.assertIn("CPU", workers)
        self.assertIn("workers", driver.find_element(By.ID, "health").text)

    def check_job(self, driver, c, job_id):
        driver.find_element(By.CSS_SELECTOR, '#jobs tr[data-job-id="%s"]' % job_id).click()
        WebDriverWait(driver, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#dag td.cell")))
        self.assertIn(job_id, driver.find_element(By.ID, "job-title").text)
        stages = [r.get_attribute("data-stage") for r in driver.find_elements(By.CSS_SELECTOR, "#dag tr")]
        self.assertEqual(stages, ["stats", "loss", "bits", "quant", "out", "eval"])
        cells = driver.find_elements(By.CSS_SELECTOR, "#dag td.cell")
        self.assertEqual(len(cells), 9)  # calibrate, quant_loss and gptq per layer (2 layers)
        self.assertTrue(all("TASK_DONE" in cell.get_attribute("class") for cell in cells))
        self.assertIn("← stats, loss", driver.find_element(By.CSS_SELECTOR, '#dag tr[data-stage="bits"]').text)
        driver.find_element(By.CSS_SELECTOR, '#dag td[data-task-id="%s/quant/L1"]' % job_id).click()
        WebDriverWait(driver, 10).until(EC.visibility_of_element_located((By.ID, "task")))
        task = driver.find_element(By.ID, "task").text
        self.assertIn("1 attempt(s)", task)
        self.assertIn("task_leased: attempt 1 on", task)
        evaluations = driver.find_element(By.ID, "evaluations").text
        self.assertIn("original:", evaluations)
        self.assertIn("eval", driver.find_element(By.ID, "time").text)
        self.assertIn("quant (gptq, min_tokens 1): 16 routed experts",
                      driver.find_element(By.ID, "coverage").text)
        self.wait_for_figures(driver)

    def wait_for_figures(self, driver):
        def loaded(d):
            imgs = d.find_elements(By.CSS_SELECTOR, "#figures img")
            return len(imgs) >= 4 and all(d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs)
        WebDriverWait(driver, 20).until(loaded)
        names = [i.get_attribute("alt") for i in driver.find_elements(By.CSS_SELECTOR, "#figures img")]
        for want in ("expert_usage.svg", "bit_allocation.svg", "gptq_error.svg", "ppl_vs_size.svg",
                     "expert_tokens.svg"):
            self.assertIn(want, names)

    def check_live_refresh(self, driver, c):
        before = len(driver.find_elements(By.CSS_SELECTOR, "#jobs tr.job"))
        c.cli("submit", c.recipe("later", "  - {id: wait, kind: noop, with: {sleep_ms: 300}}\n"))
        WebDriverWait(driver, 10).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#jobs tr.job")) == before + 1)
        self.assertIn("later", driver.find_element(By.ID, "jobs").text)

    def screenshot(self, driver):
        time.sleep(0.5)
        driver.save_screenshot("dashboard.png")
        self.assertGreater(os.path.getsize("dashboard.png"), 10000)
        if os.environ.get("MOEC_UPDATE_SCREENSHOT"):
            shutil.copy("dashboard.png", os.path.join(SOURCE_DIR, "docs", "images", "dashboard.png"))


if __name__ == "__main__":
    BIN_DIR = sys.argv.pop(1)
    unittest.main()

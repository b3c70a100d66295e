#!/usr/bin/python3
"""The web monitor in a real browser: a loopback cluster with [web] listen on, its page
opened in headless Chromium (driven by Selenium). The totals match `mosmon --json`;
zooming into the cluster shows each node's figures as mosmon has them; zooming into a node
shows the jobs there, and an ordinary user's job started with mosrun appears there within
3 s of the daemon listing it; the page fits a phone's width; /metrics and the JSON API
answer; a screenshot is saved into the build directory."""

import json
import os
import shutil
import time
import unittest
import urllib.request

import harness

WEB_PORT = 4780
SCREENSHOT = os.path.join(harness.BUILD, "web-monitor.png")


def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise unittest.SkipTest("python3-selenium is not installed (scripts/setup installs it)")
    driver_path = shutil.which("chromedriver")
    if not driver_path:
        raise unittest.SkipTest("chromium-driver is not installed (scripts/setup installs it)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", f"--user-data-dir={harness.private_dir()}/chromium"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    return webdriver.Chrome(service=Service(driver_path), options=options)


class WebMonitorTest(unittest.TestCase):
    def test_the_page_shows_what_mosmon_shows_and_follows_jobs(self):
        from selenium.webdriver.support.ui import WebDriverWait

        user = harness.user_for(self, "hwweb").pw_name
        with harness.LoopCluster(2, settings=[f'web.listen="{{address}}:{WEB_PORT}"']) as c:
            harness.wait_until_meshed(c)
            base = f"http://{c.node('node1')['address']}:{WEB_PORT}"
            self.assertIn(f"web monitor at {base}/", c.log("node1"))
            driver = browser()
            self.addCleanup(driver.quit)
            wait = WebDriverWait(driver, 20, poll_frequency=0.1)

            # The page redraws its view every second: read and click in one script each,
            # so that no element goes stale between finding and using it.
            def text(selector):
                return driver.execute_script(
                    "const e = document.querySelector(arguments[0]);"
                    "return e ? e.textContent : null;", selector)

            def click(selector):
                return driver.execute_script(
                    "const e = document.querySelector(arguments[0]);"
                    "if (e) e.click(); return !!e;", selector)

            def count(selector):
                return driver.execute_script(
                    "return document.querySelectorAll(arguments[0]).length;", selector)

            driver.get(base + "/")
            wait.until(lambda d: text("#total-nodes") == "2 / 2")
            picture = json.loads(c.run("node1", "mosmon", "--json").stdout)
            cpus = sum(n["cpus"] for n in picture["nodes"] if n["alive"])
            self.assertEqual(text("#total-cpus"), str(cpus))
            cluster = picture["nodes"][0]["cluster"]
            row = f'tr[data-cluster="{cluster}"]'
            self.assertEqual(text(f"{row} .nodes"), "2 / 2")
            self.assertEqual(text(f"{row} .cpus"), str(cpus))

            # Zoom into the cluster: a row per node, with mosmon's figures.
            self.assertTrue(click(f"{row} a"))
            wait.until(lambda d: count("tr[data-node]") == 2)
            self.assertEqual(driver.current_url, f"{base}/#/cluster/{cluster}")
            for node in picture["nodes"]:
                cells = f'tr[data-node="{node["name"]}"]'
                self.assertEqual(text(f"{cells} .cpus"), str(node["cpus"]))
                self.assertEqual(text(f"{cells} .state"), "alive")
                self.assertEqual(text(f"{cells} .users"), str(node["users"]))
                self.assertRegex(text(f"{cells} .uptime"), r"^\d+ (d|h|min)")
                self.assertEqual(text(f"{cells} .mem-free").split()[1], "MiB" if
                                 node["mem_free_mb"] < 10240 else "GiB")

            # Zoom into node2, then start a job there: it shows within 3 s of the daemon
            # listing it.
            self.assertTrue(click('tr[data-node="node2"] a'))
            wait.until(lambda d: text("#no-jobs"))
            work, writer, pid = harness.start_fed_job(self, c, user, "web", harness.LINE_LOGGER,
                                                      "-r node2")
            c.wait_for(lambda: any(j["pid"] == pid and j["where"] == "node2"
                                   for j in harness.jobs(c)), 60, "the job to run on node2")
            listed = time.monotonic()
            job = f'tr[data-job="{pid}"]'
            # Shown, as running on node2, within 3 s of the daemon's listing it so.
            WebDriverWait(driver, 3, poll_frequency=0.05).until(
                lambda d: text(f"{job} .state") == "running")
            shown = time.monotonic() - listed
            self.assertEqual(text(f"{job} .user"), user)
            self.assertEqual(text(f"{job} .where"), "node2")
            self.assertEqual(text(f"{job} .state"), "running")
            print(f"the job showed {shown:.2f} s after mosps listed it")
            driver.save_screenshot(SCREENSHOT)

            # On a phone's width the page fits: tables scroll inside their box.
            driver.set_window_size(390, 844)
            driver.get(base + "/#/cluster/" + cluster)
            wait.until(lambda d: count("tr[data-node]") == 2)
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            self.assertLessEqual(overflow, 0)

            # The API and /metrics, as a scraper sees them.
            with urllib.request.urlopen(base + "/api/jobs", timeout=10) as reply:
                self.assertIn(pid, [j["pid"] for j in json.load(reply)["jobs"]])
            def metrics():
                with urllib.request.urlopen(base + "/metrics", timeout=10) as reply:
                    return reply.read().decode()
            self.assertIn(f'homeward_cores{{node="node1",cluster="{cluster}"}}', metrics())
            # Published with the node's next gossip record.
            c.wait_for(lambda: f'homeward_jobs_away{{node="node1",cluster="{cluster}"}} 1\n'
                       in metrics(), 10, "/metrics to count the job away")
            writer.close()
            c.wait_for(lambda: harness.read_text(os.path.join(work, "status")) == "0\n", 60,
                       "the job to end")


if __name__ == "__main__":
    harness.main()

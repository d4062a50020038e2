#!/usr/bin/python3
"""Drive ferry's Cockpit page in headless Chromium (Selenium + chromedriver).

Runs inside a lab node (the page is served on the node's own 127.0.0.1).
Usage: cockpit-browser.py SCENARIO URL SCREENSHOT_DIR
  op-up        busybox shows up on this node; screenshot
  shell-change `ferry stop` / `ferry start` from a shell (as op) show on the
               page; prints measured: lines (ms after the command returned)
  guest        the page refuses as ferry does; nothing is stopped
  relocate     relocate to node2 from the page: steps as they happen, the
               downtime, then busybox up on node2
Prints what it saw; exits non-zero on the first thing that is not right.
"""
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

SVC = "busybox"
scenario, url, shots = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(shots, exist_ok=True)


def fail(msg):
    print("FAILED:", msg)
    sys.exit(1)


def wait_http(url, timeout=20):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    fail(f"cockpit-ws did not serve {url} in {timeout} s")


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
              "--window-size=1000,1300",
              "--user-data-dir=" + tempfile.mkdtemp(prefix="ferry-chromium-")]:
        opts.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def js(d, expr):
    return d.execute_script("return " + expr)


SEL = f'section[data-service="{SVC}"]'


def part(d, cls):
    return js(d, f'(document.querySelector(\'{SEL} .{cls}\') || {{}}).textContent || ""')


def wait(d, what, cond, timeout=20.0, step=0.02):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return time.time() - t0
        time.sleep(step)
    print(d.find_element(By.TAG_NAME, "body").text)
    fail(f"timed out after {timeout} s waiting for: {what}")


def state(d):
    return js(d, f'(document.querySelector(\'{SEL}\') || {{dataset: {{}}}}).dataset.state || ""')


def shot(d, name):
    d.save_screenshot(os.path.join(shots, name))
    print("screenshot:", name)


def as_op(*cmd):
    """A shell command as op (this script runs as root inside the node)."""
    return subprocess.run(["runuser", "-u", "op", "--", "env", "HOME=/home/op", "USER=op",
                           "PATH=/usr/local/bin:/usr/bin:/bin", *cmd],
                          capture_output=True, text=True, timeout=120)


wait_http(url)
d = browser()
try:
    d.get(url)
    wait(d, "the busybox section", lambda: js(d, f"!!document.querySelector('{SEL}')"))
    err = js(d, 'document.getElementById("error").textContent')
    if err:
        fail("page error: " + err)

    if scenario == "op-up":
        wait(d, "busybox up", lambda: state(d) == "up" and "overall                   up" in part(d, "tree"))
        wait(d, "the audit records", lambda: "result=ok" in part(d, "audit"))
        wait(d, "the cluster view", lambda: "node1" in part(d, "cluster"))
        print("node:", js(d, 'document.getElementById("node").textContent'))
        print("state:", state(d))
        print("tree:\n" + part(d, "tree"))
        print("cluster:\n" + part(d, "cluster"))
        shot(d, "1-op-up-on-node1.png")

    elif scenario == "shell-change":
        wait(d, "busybox up", lambda: state(d) == "up")
        for cmd, want in (("stop", "down"), ("start", "up")):
            t0 = time.time()
            r = as_op("ferry", cmd, SVC)
            t1 = time.time()
            if r.returncode != 0:
                fail(f"ferry {cmd}: {r.stdout}{r.stderr}")
            wait(d, f"busybox {want} after ferry {cmd}",
                 lambda: state(d) == want and f"overall                   {want}" in part(d, "tree"),
                 timeout=5)
            t2 = time.time()
            after = max(0, round((t2 - t1) * 1000))
            print(f"measured: page shows '{want}' {after} ms after `ferry {cmd}` returned "
                  f"(command took {round((t1 - t0) * 1000)} ms)")
            steps = js(d, f"document.querySelectorAll('{SEL} .steps tbody tr').length")
            print(f"helper steps seen on the page: {steps}")
            if after > 1000:
                fail(f"the page took {after} ms (> 1 s) to show ferry {cmd}")
            if cmd == "stop":
                shot(d, "2-shell-stop-shows-down.png")

    elif scenario == "guest":
        wait(d, "busybox up", lambda: state(d) == "up")
        wait(d, "the audit refusal", lambda: "not authorized" in part(d, "audit"))
        print("audit:", part(d, "audit"))
        d.find_element(By.CSS_SELECTOR, f"{SEL} button.stop").click()
        wait(d, "the action to end", lambda: js(d, f"document.querySelector('{SEL}').dataset.action") in ("ok", "failed"))
        res = part(d, "result")
        print("result:", res)
        if js(d, f"document.querySelector('{SEL}').dataset.action") != "failed":
            fail("guest's stop did not fail")
        if "not authorized" not in res or "io.ferry." not in res:
            fail("the refusal does not name the polkit action")
        if "Traceback" in res or "panicked" in res:
            fail("a stack trace reached the page")
        time.sleep(0.3)
        if state(d) != "up":
            fail("state is " + state(d) + " after guest's refused stop")
        shot(d, "3-guest-refused.png")

    elif scenario == "relocate":
        wait(d, "busybox up", lambda: state(d) == "up")
        Select(d.find_element(By.CSS_SELECTOR, f"{SEL} select.target")).select_by_value("node2")
        t0 = time.time()
        d.find_element(By.CSS_SELECTOR, f"{SEL} button.relocate").click()
        rows_while_running = set()
        mid_shot = False
        while time.time() - t0 < 90:
            a = js(d, f"document.querySelector('{SEL}').dataset.action")
            n = js(d, f"document.querySelectorAll('{SEL} .steps tbody tr').length")
            if a == "running":
                rows_while_running.add(n)
                if n >= 4 and not mid_shot:
                    shot(d, "4-relocating.png")
                    mid_shot = True
            elif a in ("ok", "failed"):
                break
            time.sleep(0.02)
        res = part(d, "result")
        print("result:", res)
        print("steps:\n" + js(d, f"document.querySelector('{SEL} .steps').innerText"))
        if js(d, f"document.querySelector('{SEL}').dataset.action") != "ok":
            fail("relocation failed on the page")
        grew = sorted(x for x in rows_while_running if x > 0)
        print(f"step rows seen while running: {grew}")
        if len(grew) < 3:
            fail("the steps did not show one by one while the relocation ran")
        down = part(d, "downtime")
        print("downtime:", down)
        if not down.startswith("downtime "):
            fail("no downtime shown")
        print(f"measured: relocation from the page {round((time.time() - t0) * 1000)} ms, {down}")
        wait(d, "busybox up on node2 in the cluster view",
             lambda: any(l.split()[:2] == ["node2", "up"] for l in part(d, "cluster").splitlines()),
             timeout=15)
        wait(d, "busybox down on node1", lambda: state(d) == "down")
        print("cluster:\n" + part(d, "cluster"))
        shot(d, "5-relocated-up-on-node2.png")
    else:
        fail("unknown scenario " + scenario)
    print("OK", scenario)
finally:
    d.quit()

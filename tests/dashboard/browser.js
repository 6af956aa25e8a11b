// Drives Debian's headless Chromium with playwright-core against a running coordinator
// (started by tests/e2e/dashboard.rs, which passes the URLs, ids and token in the environment).
// Exits non-zero, naming the check, when something on a page is not as expected.
"use strict";
const { chromium } = require("playwright-core");
const fs = require("fs");
const path = require("path");

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing environment variable ${k}`);
  return v;
};
const BASE = env("BASE");
const SHOTS = env("SHOTS");
const [CHECKOUT, PASS_JOB, FAIL_JOB, SLOW_JOB, STUCK_JOB] =
  ["CHECKOUT", "PASS_JOB", "FAIL_JOB", "SLOW_JOB", "STUCK_JOB"].map(env);

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

(async () => {
  fs.mkdirSync(env("PROFILE"), { recursive: true });
  const browser = await chromium.launchPersistentContext(env("PROFILE"), {
    executablePath: "/usr/bin/chromium",
    headless: true,
    ignoreHTTPSErrors: true, // the rig's own CA; the browser profile does not know it
    viewport: { width: 1280, height: 860 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = browser.pages()[0] || (await browser.newPage());
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`script error: ${e}`));
  page.on("console", (m) => {
    // A blocked script or style (the Content-Security-Policy) shows up here.
    if (m.type() === "error" && !(m.location().url || "").endsWith("/favicon.ico")) {
      problems.push(`console error: ${m.text()} (${m.location().url})`);
    }
  });
  try {
    // Sign in: an unauthenticated page leads to the form; the token ends up in a cookie.
    await page.goto(`${BASE}/ui/checkouts`);
    check(page.url().endsWith("/ui/login"), "unauthenticated browser is sent to /ui/login");
    await page.fill("input[name=token]", env("TOKEN"));
    await Promise.all([page.waitForURL("**/ui/checkouts"), page.click("form button")]);
    const cookies = await browser.cookies();
    const c = cookies.find((c) => c.name === "labwire_ui");
    check(c && c.httpOnly && c.secure && c.sameSite === "Strict", "the cookie is HttpOnly, Secure, SameSite=Strict");
    check(!page.url().includes(env("TOKEN")), "the token is not in the URL");

    // Checkouts: the row with its tree, branch, commit and counts.
    const row = page.locator(`#checkouts tr[data-node-id="${CHECKOUT}"]`);
    await row.waitFor();
    const rowText = await row.innerText();
    check(rowText.includes("mainline") && rowText.includes("master") && rowText.includes("1f2e3d4c5b6a"),
      "checkout row shows tree, branch and commit");
    check(/1 pass/.test(rowText) && /1 fail/.test(rowText), `checkout row counts 1 pass and 1 fail (${rowText.replace(/\s+/g, " ")})`);
    await page.selectOption("select[name=tree]", "mainline");
    await Promise.all([page.waitForURL("**tree=mainline**"), page.click(".filter button")]);
    check(await page.locator(`#checkouts tr[data-node-id="${CHECKOUT}"]`).count() === 1, "filter by tree keeps the checkout");
    await page.waitForSelector("#live.on");
    await shot(page, "checkouts");

    // The checkout's node page: the tree with the jobs and their tests.
    await Promise.all([page.waitForURL(`**/ui/node/${CHECKOUT}`), page.click(`#checkouts a[href="/ui/node/${CHECKOUT}"]`)]);
    const tree = await page.locator("ul.tree").innerText();
    check(tree.includes("kunit-pass") && tree.includes("kunit-fail") && tree.includes("kunit-slow"), "tree lists the jobs");
    check(tree.includes("<img src=x onerror=alert(1)>"), "markup in a node name is shown as text");
    check(dialogs.length === 0, "no script from node data ran");
    const failLi = page.locator(`li[data-node-id="${FAIL_JOB}"]`);
    check((await failLi.locator("> [data-field=result]").innerText()) === "fail", "the failing job shows result fail");
    await shot(page, "node");

    // The failing job, then the failing test's line in its log.
    await Promise.all([page.waitForURL(`**/ui/node/${FAIL_JOB}`), failLi.locator(`> a[href="/ui/node/${FAIL_JOB}"]`).click()]);
    const hl = page.locator("#log .line.fail");
    check(await hl.count() === 1, "one failing line highlighted in the log");
    check((await hl.innerText()).trim() === "not ok 2 b", "the highlighted line is `not ok 2 b`");
    const href = await page.evaluate(() => [...document.querySelectorAll("ul.tree li")]
      .find((li) => li.querySelector(":scope > a").textContent === "b")
      .querySelector(":scope > a.faillink").getAttribute("href"));
    await page.click(`a.faillink[href="${href}"]`);
    await page.waitForFunction(() => location.hash.startsWith("#test-"));
    const target = page.locator(":target");
    check((await target.innerText()).trim() === "not ok 2 b" && (await target.getAttribute("class")).includes("fail"),
      "the failing test's link leads to its line in the log");
    await shot(page, "job-log");

    // Labs: the lab, connected, its devices by type, the busy one.
    await page.goto(`${BASE}/ui/labs`);
    const lab = await page.locator("section.lab[data-lab=lab-a]").innerText();
    check(lab.includes("connected") && !lab.includes("disconnected"), "lab-a is connected");
    check(lab.includes("lab-host") && lab.includes("host-pass") && lab.includes("host-fail"), "lab-a lists its devices by type");
    check(/busy\s+job\s+\d+/.test(lab), "the device running the slow job is busy");
    check(lab.includes("queue wait"), "the lab shows a queue wait estimate");
    await shot(page, "labs");

    // Queue: the job no device can run, and why.
    await page.goto(`${BASE}/ui/queue`);
    const q = await page.locator(`#queue tr[data-node-id="${STUCK_JOB}"]`).innerText();
    check(q.includes("needs-gpu") && q.includes("lab-a"), "the queue shows the stuck job per lab");
    check(/device|tag|match/i.test(q), `the queue says why it waits (${q.replace(/\s+/g, " ")})`);
    await shot(page, "queue");

    // Live: the slow job finishes while its checkout's page is open.
    await page.goto(`${BASE}/ui/node/${CHECKOUT}`);
    await page.waitForSelector("#live.on");
    const slowLi = page.locator(`li[data-node-id="${SLOW_JOB}"]`);
    check((await slowLi.locator("> [data-field=state]").innerText()) === "running", "the slow job is running when the page opens");
    await page.evaluate(() => { window.__notReloaded = true; });
    fs.writeFileSync(env("GO_FILE"), "go\n");
    await page.waitForFunction((id) => {
      const li = document.querySelector(`li[data-node-id="${id}"]`);
      const r = li && li.querySelector(":scope > [data-field=result]");
      return r && r.textContent === "pass";
    }, SLOW_JOB, { timeout: 30000 });
    await page.waitForFunction((id) => {
      const ul = document.querySelector(`ul[data-children-of="${id}"]`);
      return ul && ul.children.length > 0;
    }, SLOW_JOB, { timeout: 10000 });
    check(await page.evaluate(() => window.__notReloaded === true), "the page was updated without a reload");
    check((await slowLi.locator("> [data-field=state]").innerText()) === "done", "the slow job shows done, live");
    await page.waitForTimeout(1600); // let the highlight fade before the picture
    await shot(page, "live");
    check(problems.length === 0, `no script or console errors (${problems.join("; ")})`);
  } catch (e) {
    await shot(page, "failure").catch(() => {});
    console.error(e.stack || String(e));
    await browser.close();
    process.exit(1);
  }
  await browser.close();
  console.log("browser checks passed");
})();

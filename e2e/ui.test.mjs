// The web UI in headless Chromium against a real `mend serve` (see run.sh, which starts it):
// an operator finds a product the target rejected in the trash, fixes its payload in the
// browser, approves it, and watches it leave the trash and its process finish.
//
// Needs MEND_URL (the server) and TARGET_URL (target.mjs); writes screenshots to SCREENSHOTS.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const MEND = process.env.MEND_URL;
const TARGET = process.env.TARGET_URL;
const SHOTS = process.env.SCREENSHOTS || '';
assert.ok(MEND && TARGET, 'set MEND_URL and TARGET_URL (run e2e/run.sh)');

let context;
let page;
let profile;
const pageErrors = [];

before(async () => {
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'mend-e2e-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1360, height: 880 },
    colorScheme: 'light',
  });
  page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => pageErrors.push(e));
});

after(async () => {
  await context?.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
});

async function shot(name) {
  if (!SHOTS) return;
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.evaluate(() => document.querySelectorAll('.toast').forEach((t) => t.remove()));
  await page.screenshot({ path: path.join(SHOTS, name) });
}

// Runs a test body; on failure, saves what the page looked like.
const shotOnFailure = (name, body) => async () => {
  try {
    await body();
  } catch (e) {
    await shot(`failure-${name}.png`).catch(() => {});
    throw e;
  }
};

async function startViaApi(topology, data) {
  const r = await fetch(`${MEND}/api/topologies/${topology}/events/run`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(data),
  });
  const body = await r.text();
  assert.equal(r.status, 202, `start ${topology}: ${body}`);
  return JSON.parse(body).process_id;
}

let brokenProcess;

test('the topology page draws the graph and starts an event', { timeout: 60000 }, shotOnFailure('topology', async () => {
  // Something for the other views to show: a product that goes through, one whose category
  // must be synced first.
  await startViaApi('products', { id: 1, name: 'Desk lamp', sku: 'L-1', category_id: 1 });
  await startViaApi('products', { id: 2, name: 'Hammock', sku: 'H-2', category_id: 2 });

  await page.goto(`${MEND}/#/topologies/products`);
  await page.locator('#graph .gnode.node[data-node="push-product"]').waitFor();
  assert.ok(await page.locator('#graph .gnode.event').count() >= 1, 'the start event is drawn');
  assert.ok(await page.locator('#graph path.edge').count() >= 3, 'edges are drawn');
  assert.ok(await page.locator('#graph .gnode.node[data-node$=".check"]').count() >= 1, 'requires expands into a check');

  // Bad JSON cannot be sent; a product without `name` can, and the target will refuse it.
  await page.fill('#start-data', '{"id": 7,');
  await page.locator('.start .json-status.bad').waitFor();
  await page.fill('#start-data', JSON.stringify({ id: 7, sku: 'BIKE-7', price: 349, category_id: 1 }, null, 2));
  await page.locator('.start .json-status.good').waitFor();
  await page.click('.start button[type=submit]');
  const link = page.locator('.start-out a[href^="#/processes/"]');
  await link.waitFor();
  brokenProcess = (await link.getAttribute('href')).split('/').pop();
  assert.match(brokenProcess, /^[0-9a-f-]{36}$/);
  await shot('topology.png');
}));

test('a rejected product is fixed in the trash, approved, and its process completes', { timeout: 90000 }, shotOnFailure('trash', async () => {
  assert.ok(brokenProcess, 'the previous test started a process');

  // The trash list shows the entry of that process (the list refreshes itself).
  await page.goto(`${MEND}/#/trash`);
  const row = page.locator(`tr.clickable:has(a[href="#/processes/${brokenProcess}"])`);
  await row.waitFor({ timeout: 30000 });
  const messageId = await row.getAttribute('data-id');
  assert.match(await row.innerText(), /push-product/);
  assert.match(await row.innerText(), /422/);
  await shot('trash-list.png');

  // Its detail: the error, the payload, the attempts.
  await row.click();
  await page.locator('#payload').waitFor();
  assert.match(await page.locator('#trash-error').innerText(), /422/);
  const payload = JSON.parse(await page.inputValue('#payload'));
  assert.equal(payload.sku, 'BIKE-7');
  assert.equal(payload.name, undefined);
  assert.ok(await page.locator('.attempts li').count() >= 1, 'the attempt history is shown');

  // Invalid JSON is caught in the browser: nothing can be sent.
  await page.fill('#payload', '{"id": 7, "name": }');
  await page.locator('#payload ~ .json-status.bad').waitFor();
  assert.equal(await page.isDisabled('#btn-edit'), true, 'invalid JSON cannot be saved');

  // The fix: add the missing name.
  await page.fill('#payload', JSON.stringify({ ...payload, name: 'City bike' }, null, 2));
  await page.locator('#payload ~ .json-status.good').waitFor();
  await shot('trash.png');
  assert.equal(await page.isDisabled('#btn-edit'), false);
  await page.click('#btn-edit');

  // Back on the list, the entry is gone; the toast links to the process. A refused edit
  // shows a red toast instead: fail with what it says.
  const refused = await Promise.race([
    page.waitForURL(/#\/trash$/).then(() => null, () => null),
    page.locator('.toast.bad').first().waitFor().then(() => page.locator('.toast.bad').first().innerText(), () => null),
  ]);
  assert.equal(refused, null, `the edit was refused: ${refused}`);
  assert.match(page.url(), /#\/trash$/);
  await page.locator('.toast.good', { hasText: 'approved' }).waitFor();
  await page.waitForFunction((id) => {
    const body = document.querySelector('main .panel-body');
    return body && !body.textContent.startsWith('Loading') && !document.querySelector(`tr[data-id="${id}"]`);
  }, messageId);
  const gone = await fetch(`${MEND}/api/trash/${messageId}`);
  assert.equal(gone.status, 404, 'the message left the trash');

  // The process page shows it done, with the product delivered.
  await page.goto(`${MEND}/#/processes/${brokenProcess}`);
  await page.locator('#proc-state[data-state="done"]').waitFor({ timeout: 30000 });
  assert.equal((await page.locator('#proc-state').innerText()).trim(), 'done');
  await page.locator('.timeline .tl-node', { hasText: /^push-product$/ }).first().waitFor();
  await shot('process.png');

  const received = await (await fetch(`${TARGET}/received`)).json();
  assert.ok(received.some((p) => p.sku === 'BIKE-7' && p.name === 'City bike'), 'the target got the fixed product');
}));

test('the other views render without script errors', { timeout: 60000 }, shotOnFailure('views', async () => {
  for (const view of ['overview', 'processes', 'parked', 'limiter', 'heatmap']) {
    await page.goto(`${MEND}/#/${view}`);
    await page.locator('main .panel').first().waitFor();
    await page.waitForFunction(() => !document.querySelector('main .panel-body > .empty')?.textContent.startsWith('Loading'));
    if (view === 'heatmap') await page.locator('.heat canvas').waitFor();
    if (view === 'processes') await page.locator(`tr[data-id="${brokenProcess}"]`).waitFor();
  }
  await page.goto(`${MEND}/#/`);
  await page.waitForTimeout(1600);
  await shot('overview.png');
  assert.deepEqual(pageErrors.map(String), [], 'no uncaught error in the page');
}));

// The example page examples/live-table/ in headless Chromium (playwright-core driving Debian's
// /usr/bin/chromium) against a real hub: changes made over HTTP appear, a row that stops
// matching disappears, and after a hub restart the page catches up.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, rmSync, statSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Hub, until } from "./support/hub.mjs";
import { serveStatic } from "./support/static.mjs";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
/** The screenshot kept from the run (test-output/ is gitignored; CI may collect it). */
export const SCREENSHOT = join(pkg, "test-output", "live-table.png");

let hub, site, browser;

before(async () => {
  // Not a skip: CI installs Debian's chromium package, so a missing browser is a broken setup.
  if (!existsSync(CHROMIUM))
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium) or set CHROMIUM_PATH`);
  if (!existsSync(join(pkg, "dist/flowhub.browser.js"))) throw new Error("dist/flowhub.browser.js is missing: run npm run build");
  const { chromium } = await import("playwright-core");
  hub = await new Hub().start();
  site = await serveStatic(pkg);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  await site?.close();
  await hub?.dispose();
});

/** One HTTP call to address/address; resolves with the envelope's data. */
async function http(method, { id, data } = {}) {
  const url = `http://${hub.addr}/api/address/address/address/${id ?? ""}`;
  const res = await fetch(url, {
    method: "POST",
    headers: { "Flow-Request-Method": method, "content-type": "application/json" },
    body: data === undefined ? undefined : JSON.stringify(data),
  });
  const env = await res.json();
  assert.ok(env.success, `${method} ${url}: ${JSON.stringify(env)}`);
  return env.data;
}

/** The table's rows as [id, street, streetNumber, city]. */
const rows = (page) =>
  page.$$eval("#addresses tbody tr", (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
const ids = async (page) => (await rows(page)).map((r) => r[0]);
const state = (page) => page.$eval("#status", (s) => s.dataset.state);

test("the live table follows HTTP changes, drops rows that stop matching, and catches up after a hub restart", async () => {
  const city = "Envik-" + Math.random().toString(36).slice(2, 8);
  await http("CREATE", { data: { id: "a1", streetName: "Larss Gata", streetNumber: 6, city } });
  await http("CREATE", { data: { id: "a2", streetName: "Övre Åkerallén", streetNumber: 4, city } });
  await http("CREATE", { data: { id: "a3", streetName: "Storgatan", streetNumber: 9, city: "Götefred" } });

  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  const q = new URLSearchParams({ hub: hub.url, city, backoff: "3000" });
  await page.goto(`${site.url}/examples/live-table/?${q}`);
  const wait = (pred, what, ms = 10000) =>
    until(pred, ms, what).catch((e) => {
      throw new Error(`${e.message}\npage log:\n${logs.join("\n")}`);
    });

  // The snapshot: only the city's rows, ordered by streetNumber.
  await wait(async () => (await ids(page)).length === 2, "the two matching rows");
  assert.deepEqual(await rows(page), [
    ["a2", "Övre Åkerallén", "4", city],
    ["a1", "Larss Gata", "6", city],
  ]);
  assert.equal(await state(page), "connected");

  // A CREATE and an UPDATE over HTTP appear, in order.
  await http("CREATE", { data: { id: "a4", streetName: "Kyrkvägen", streetNumber: 1, city } });
  await wait(async () => (await ids(page)).join() === "a4,a2,a1", "the created row first");
  await http("UPDATE", { id: "a2", data: { streetNumber: 12 } });
  await wait(async () => (await ids(page)).join() === "a4,a1,a2", "the updated row moved last");
  assert.deepEqual((await rows(page))[2], ["a2", "Övre Åkerallén", "12", city]);

  // A row that starts matching enters; a row that stops matching leaves.
  await http("UPDATE", { id: "a3", data: { city } });
  await wait(async () => (await ids(page)).join() === "a4,a1,a3,a2", "a3 entered");
  await http("UPDATE", { id: "a1", data: { city: "Götefred" } });
  await wait(async () => (await ids(page)).join() === "a4,a3,a2", "a1 left");

  // The hub restarts on the same port and data directory; the page's first reconnect comes
  // after 1.5-3 s, so the writes just after the restart happen while it is still away.
  await hub.stop();
  await wait(async () => (await state(page)) === "reconnecting", "the page notices the drop");
  await hub.restart();
  await http("CREATE", { data: { id: "a5", streetName: "Hamnvägen", streetNumber: 7, city } });
  await http("UPDATE", { id: "a4", data: { city: "Götefred" } });
  await http("UPDATE", { id: "a3", data: { streetNumber: 2 } });
  assert.notEqual(await state(page), "connected", "the page was away during the writes");
  await wait(async () => (await ids(page)).join() === "a3,a5,a2", "the page caught up after the restart", 20000);
  await wait(async () => (await state(page)) === "connected", "connected again");
  assert.deepEqual(await rows(page), [
    ["a3", "Storgatan", "2", city],
    ["a5", "Hamnvägen", "7", city],
    ["a2", "Övre Åkerallén", "12", city],
  ]);
  // Same data directory, same epoch: the missed changes were replayed, not reloaded.
  assert.equal(await page.$eval("#resets", (e) => e.textContent), "0");

  // And it keeps following live changes after the restart.
  await http("DELETE", { id: "a5" });
  await wait(async () => (await ids(page)).join() === "a3,a2", "a5 deleted");

  // A hub with a wiped data directory (another epoch) cannot replay what the page missed: the
  // page says so (a reset) and reloads the table from a fresh snapshot.
  await hub.stop();
  rmSync(hub.dataDir, { recursive: true, force: true });
  mkdirSync(hub.dataDir, { recursive: true });
  await hub.restart();
  await http("CREATE", { data: { id: "b1", streetName: "Nya Torget", streetNumber: 3, city } });
  await wait(async () => (await ids(page)).join() === "b1", "the table reloaded after a reset", 20000);
  assert.equal(await page.$eval("#resets", (e) => e.textContent), "1");
  await wait(async () => (await state(page)) === "connected", "connected after the reset");
  await http("UPDATE", { id: "b1", data: { streetName: "Nya Torget (live)" } });
  await wait(async () => (await rows(page))[0]?.[1] === "Nya Torget (live)", "live again after the reset");

  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  assert.ok(statSync(SCREENSHOT).size > 0, "the screenshot is not empty");
  console.log(`screenshot: ${SCREENSHOT}`);
  assert.ok(!logs.some((l) => l.startsWith("pageerror")), logs.join("\n"));
  await page.close();
});

test("the live table over MessagePack in the browser; a frozen hub is noticed by the heartbeat and the page catches up", async () => {
  const city = "Mp-" + Math.random().toString(36).slice(2, 8);
  await http("CREATE", { data: { id: "m1", streetName: "Larss Gata", streetNumber: 6, city } });
  const page = await browser.newPage();
  const logs = [];
  const frames = { text: 0, binary: 0 };
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  page.on("websocket", (ws) => {
    const note = (f) => (typeof f.payload === "string" ? frames.text++ : frames.binary++);
    ws.on("framesent", note);
    ws.on("framereceived", note);
  });
  const q = new URLSearchParams({ hub: hub.url, city, backoff: "200", encoding: "msgpack", heartbeat: "300" });
  await page.goto(`${site.url}/examples/live-table/?${q}`);
  const wait = (pred, what, ms = 10000) =>
    until(pred, ms, what).catch((e) => {
      throw new Error(`${e.message}\npage log:\n${logs.join("\n")}`);
    });
  await wait(async () => (await ids(page)).join() === "m1", "the snapshot");
  await http("CREATE", { data: { id: "m2", streetName: "Övre Åkerallén", streetNumber: 4, city } });
  await wait(async () => (await ids(page)).join() === "m2,m1", "a live row");
  assert.deepEqual((await rows(page))[0], ["m2", "Övre Åkerallén", "4", city]);

  await hub.freeze();
  try {
    await wait(async () => (await state(page)) === "reconnecting", "the page notices the frozen hub", 20000);
  } finally {
    hub.thaw();
  }
  await wait(async () => (await state(page)) === "connected", "connected again", 30000);
  await http("UPDATE", { id: "m1", data: { streetNumber: 1 } });
  await wait(async () => (await ids(page)).join() === "m1,m2", "the change after the hub ran again");
  assert.equal(await page.$eval("#resets", (e) => e.textContent), "0");

  assert.ok(frames.binary > 0, "binary frames were used");
  assert.equal(frames.text, 0, "no text frame either way");
  assert.ok(!logs.some((l) => l.startsWith("pageerror")), logs.join("\n"));
  await page.close();
});

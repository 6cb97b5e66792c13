// Browser figures for BENCHMARKS.md (outside CI): the page's first load (navigation until the
// worker and the wasm module are ready) and a few LoRA steps of a real model in the page, on
// WebGPU (SwiftShader here) and on the wasm CPU engine, with tokens/s.
// `node tests/browser/bench.mjs MODEL.gguf [steps]` after `make wasm` (and `npm ci` here).

import { chromium } from "playwright-core";
import { copyFileSync, mkdirSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serve } from "../../www/serve.mjs";

const OUT = resolve(fileURLToPath(new URL(".", import.meta.url)), "output");
const model = process.argv[2];
const steps = Number(process.argv[3] ?? 3);
if (!model) throw new Error("usage: node tests/browser/bench.mjs MODEL.gguf [steps]");
mkdirSync(OUT, { recursive: true });
copyFileSync(model, join(OUT, basename(model)));

const FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-webgpu", "--disable-dev-shm-usage"];
const server = await serve(0);
const origin = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: FLAGS });
try {
  for (const device of ["gpu", "cpu"]) {
    const page = await browser.newPage();
    const t0 = Date.now();
    await page.goto(`${origin}/www/`);
    await page.waitForFunction(() => window.honeState.ready, null, { timeout: 120_000 });
    const firstLoad = Date.now() - t0;
    await page.fill("#model-url", `${origin}/tests/browser/output/${basename(model)}`);
    const t1 = Date.now();
    await page.click("#load-model-url");
    await page.waitForFunction(() => window.honeState.model || window.honeState.error, null, { timeout: 300_000 });
    const modelLoad = Date.now() - t1;
    await page.click("#use-example");
    await page.waitForFunction(() => window.honeState.dataset || window.honeState.error);
    await page.fill("#max_steps", String(steps));
    await page.fill("#per_device_train_batch_size", "1");
    await page.fill("#max_seq_len", "32");
    await page.selectOption("#device", device);
    const t2 = Date.now();
    await page.click("#start");
    await page.waitForFunction(() => window.honeState.done || window.honeState.error, null, { timeout: 1_800_000 });
    const s = await page.evaluate(() => window.honeState);
    const tps = await page.textContent("#tps");
    console.log(
      JSON.stringify({
        device: s.device,
        error: s.error || undefined,
        firstLoadMs: firstLoad,
        modelLoadMs: modelLoad,
        runMs: Date.now() - t2,
        steps,
        losses: s.losses.map((l) => +l[1].toFixed(4)),
        meanTokensPerSecond: Number(tps),
        // Steady state: the steps after the first (which compiles the GPU kernels).
        laterStepsTokensPerSecond:
          s.stepTimes.slice(1).reduce((n, t) => n + t[2], 0) /
          s.stepTimes.slice(1).reduce((n, t) => n + t[1], 0),
      }),
    );
    await page.close();
  }
} finally {
  await browser.close();
  server.close();
}

// End-to-end test of the demo page in Debian's Chromium (playwright-core), run by
// `make test-browser`. A tiny random GGUF model and a 24-row dataset; the page trains a few
// steps on WebGPU (SwiftShader), the loss falls, the downloaded adapter equals native
// `hone finetune`'s (same seed, data, options) within tolerance; a reload mid-run resumes from
// the OPFS checkpoint to the same adapter; with WebGPU disabled the CPU engine takes over (with
// the reason shown) and gives the same adapter; no network request leaves during training;
// bad input (a row missing a field, an unreadable model file) shows a specific message; a WebGPU
// device lost mid-run (a test-only hook) shows a specific message, keeps the OPFS checkpoint and
// the resumed run ends with the uninterrupted run's adapter; out of storage quota (DevTools'
// Storage.overrideQuotaForOrigin) shows a specific warning, the run goes on, and no half-written
// checkpoint is left for a reload to offer.
// Env: HONE_BIN (native hone), HONE_TINY_GGUF (tiny model), CHROMIUM (default /usr/bin/chromium).

import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync, copyFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serve } from "../../www/serve.mjs";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const OUT = resolve(HERE, "output");
const HONE = process.env.HONE_BIN;
const TINY = process.env.HONE_TINY_GGUF;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
if (!HONE || !TINY) throw new Error("set HONE_BIN and HONE_TINY_GGUF (make test-browser does)");

const FLAGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
  "--disable-dev-shm-usage",
];
const WEBGPU = ["--enable-unsafe-webgpu"];

// The run's options, the same for the page and the CLI.
const OPTS = {
  text_template: "{q} -> {a}",
  completion_only: true,
  lora_r: 4,
  lora_alpha: 8,
  learning_rate: 0.005,
  max_steps: 6,
  per_device_train_batch_size: 4,
  max_seq_len: 32,
  train_split: "train",
  seed: 7,
};
const EXTRA = { save_steps: 2, lr_scheduler_type: "linear", warmup_steps: 1 };

let failures = 0;
function check(cond, what) {
  console.log(`${cond ? "ok  " : "FAIL"} ${what}`);
  if (!cond) failures++;
}

/** Tensors of a safetensors file: {name: Float32Array}. */
function readSafetensors(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (t.dtype !== "F32") throw new Error(`${name}: dtype ${t.dtype}`);
    const [a, b] = t.data_offsets;
    out[name] = new Float32Array(bytes.slice(8 + n + a, 8 + n + b).buffer);
  }
  return out;
}

/** Files of a stored (uncompressed) zip: {name: Uint8Array}. */
function readZip(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const files = {};
  let at = 0;
  while (dv.getUint32(at, true) === 0x04034b50) {
    if (dv.getUint16(at + 8, true) !== 0) throw new Error("compressed zip entry");
    const size = dv.getUint32(at + 18, true);
    const nlen = dv.getUint16(at + 26, true);
    const xlen = dv.getUint16(at + 28, true);
    const name = new TextDecoder().decode(bytes.subarray(at + 30, at + 30 + nlen));
    const start = at + 30 + nlen + xlen;
    files[name] = bytes.slice(start, start + size);
    at = start + size;
  }
  return files;
}

/** Largest |a-b| / (max |b| of the tensor) over all tensors, and the names that differ. */
function compareAdapters(got, want) {
  const names = Object.keys(want).sort();
  if (JSON.stringify(Object.keys(got).sort()) !== JSON.stringify(names)) {
    return { worst: Infinity, note: `tensor names differ: ${Object.keys(got)} vs ${names}` };
  }
  let worst = 0;
  let where = "";
  for (const n of names) {
    const a = got[n];
    const b = want[n];
    let scale = 0;
    for (const v of b) scale = Math.max(scale, Math.abs(v));
    for (let i = 0; i < b.length; i++) {
      const d = Math.abs(a[i] - b[i]) / Math.max(scale, 1e-12);
      if (!(d <= worst)) {
        worst = d;
        where = n;
      }
    }
  }
  return { worst, note: where };
}

function dataset() {
  const words = ["red", "green", "blue", "black", "white", "pink"];
  const rows = [];
  for (let i = 0; i < 24; i++) {
    rows.push(JSON.stringify({ q: `${words[i % 6]} ${i}`, a: i % 2 ? "odd" : "even" }));
  }
  return rows.join("\n") + "\n";
}

async function fillRun(page, { modelUrl, dataPath }) {
  await page.fill("#model-url", modelUrl);
  await page.click("#load-model-url");
  await page.waitForFunction(() => window.honeState.model || window.honeState.error, null, { timeout: 120_000 });
  await page.setInputFiles("#data-file", dataPath);
  await page.waitForFunction(() => window.honeState.dataset || window.honeState.error);
  for (const [k, v] of Object.entries(OPTS)) {
    if (k === "text_template") await page.fill("#template", v);
    else if (k === "completion_only") await page.setChecked("#completion-only", v);
    else await page.fill(`#${k}`, String(v));
  }
  await setExtra(page, EXTRA);
}

/** The "More options" JSON. */
async function setExtra(page, extra) {
  await page.evaluate(() => (document.querySelector("details").open = true));
  await page.fill("#extra-options", JSON.stringify(extra));
}

/** The files in the page's OPFS folder of checkpoints: [[name, bytes, first 8 bytes]]. */
function opfsFiles(page) {
  return page.evaluate(async () => {
    const root = await navigator.storage.getDirectory();
    const dir = await root.getDirectoryHandle("hone").catch(() => null);
    const out = [];
    if (!dir) return out;
    for await (const [name, h] of dir.entries()) {
      const f = h.kind === "file" ? await h.getFile() : null;
      const head = f ? new TextDecoder().decode(await f.slice(0, 8).arrayBuffer()) : "";
      out.push([name, f ? f.size : -1, head]);
    }
    return out;
  });
}

async function downloadAdapter(page, name) {
  const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const path = join(OUT, name);
  await dl.saveAs(path);
  const zip = readZip(new Uint8Array(readFileSync(path)));
  return {
    config: JSON.parse(new TextDecoder().decode(zip["adapter/adapter_config.json"])),
    tensors: readSafetensors(zip["adapter/adapter_model.safetensors"]),
  };
}

async function main() {
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  copyFileSync(TINY, join(OUT, "tiny.gguf"));
  const dataPath = join(OUT, "data.jsonl");
  writeFileSync(dataPath, dataset());
  writeFileSync(join(OUT, "bad.jsonl"), '{"q": "a", "a": "x"}\n{"q": "b", "a": "y"}\n{"q": "c"}\n');
  writeFileSync(join(OUT, "broken.gguf"), "this is not a GGUF file\n");

  // The reference: native hone on the CPU engine.
  const args = ["finetune", "-m", join(OUT, "tiny.gguf"), "-d", dataPath, "-o", join(OUT, "native")];
  for (const [k, v] of Object.entries({ ...OPTS, ...EXTRA })) args.push(`--${k}`, String(v));
  args.push("--report_to", "none", "--device", "cpu", "--log_level", "warning");
  execFileSync(HONE, args, { stdio: ["ignore", "inherit", "inherit"] });
  const native = readSafetensors(
    new Uint8Array(readFileSync(join(OUT, "native/adapter/adapter_model.safetensors"))),
  );

  const server = await serve(0);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const pageUrl = `${origin}/www/`;
  const modelUrl = `${origin}/tests/browser/output/tiny.gguf`;
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...FLAGS, ...WEBGPU] });
  try {
    const ctx = await browser.newContext({ acceptDownloads: true });
    const page = await ctx.newPage();
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
    await page.goto(pageUrl);
    await page.waitForFunction(() => window.honeState.ready || window.honeState.error, null, { timeout: 120_000 });

    // Bad input: an unreadable model file, a row missing a field.
    await page.setInputFiles("#model-file", join(OUT, "broken.gguf"));
    await page.waitForFunction(() => window.honeState.error);
    const modelErr = await page.textContent("#error");
    check(await page.isVisible("#error"), "an unreadable model shows a visible error");
    check(/broken\.gguf/.test(modelErr) && /GGUF/i.test(modelErr), `it names the file: ${modelErr}`);
    await fillRun(page, { modelUrl, dataPath: join(OUT, "bad.jsonl") });
    const rowErr = await page.textContent("#error");
    check(/line 3/.test(rowErr) && /'a'/.test(rowErr), `a row missing a field names it and its line: ${rowErr}`);

    // Train on WebGPU.
    await fillRun(page, { modelUrl, dataPath });
    check(!(await page.isVisible("#error")), "the good model and dataset load without an error");
    const before = requests.length;
    await page.selectOption("#device", "gpu");
    await page.click("#start");
    await page.waitForFunction(() => window.honeState.done || window.honeState.error, null, {
      timeout: 300_000,
    });
    const s = await page.evaluate(() => window.honeState);
    check(!s.error, `the WebGPU run finishes without an error${s.error ? `: ${s.error}` : ""}`);
    check(/^gpu/.test(s.device ?? ""), `it ran on WebGPU: ${s.device}`);
    const losses = s.losses.map((l) => l[1]);
    console.log(`losses (WebGPU): ${losses.map((l) => l.toFixed(4)).join(" ")}`);
    check(losses.length === OPTS.max_steps, `${OPTS.max_steps} steps`);
    check(losses.at(-1) < losses[0], "the loss falls on WebGPU");
    check(requests.length === before, `no network request during training (${requests.length - before})`);
    const gpu = await downloadAdapter(page, "adapter-webgpu.zip");
    check(gpu.config.r === OPTS.lora_r && gpu.config.peft_type === "LORA", "the zip holds a PEFT config");
    const cg = compareAdapters(gpu.tensors, native);
    console.log(`WebGPU vs native CPU: max relative difference ${cg.worst.toExponential(2)} (${cg.note})`);
    check(cg.worst < 5e-3, "the WebGPU adapter equals native hone's (relative 5e-3)");
    await page.click("#generate");
    await page.waitForFunction(() => window.honeState.generated || window.honeState.error);
    const after = await page.textContent("#gen-after");
    check(after.length > 0 && !(await page.isVisible("#error")), `generation with the adapter: ${JSON.stringify(after)}`);
    await page.screenshot({ path: join(OUT, "page-after-training.png"), fullPage: true });

    // Reload mid-run and resume from the OPFS checkpoint.
    await page.click("#start");
    await page.waitForFunction(
      () => window.honeState.checkpoints.includes(2) || window.honeState.error,
      null,
      { timeout: 300_000 },
    );
    await page.reload();
    await page.waitForFunction(() => window.honeState.ready || window.honeState.error, null, { timeout: 120_000 });
    const offered = await page.isVisible("#resume-run");
    check(offered, "after a reload the page offers to resume");
    if (!offered) {
      console.log(await page.evaluate(() => JSON.stringify({ s: window.honeState, ls: localStorage.length })));
    }
    await page.click("#resume-run");
    await page.waitForFunction(() => window.honeState.done || window.honeState.error, null, {
      timeout: 300_000,
    });
    const r = await page.evaluate(() => window.honeState);
    check(!r.error && r.losses[0][0] > 1, `the run resumed after step 1 (first step now ${r.losses[0]?.[0]}${r.error ? `; error: ${r.error}` : ""})`);
    const resumed = await downloadAdapter(page, "adapter-resumed.zip");
    const cr = compareAdapters(resumed.tensors, gpu.tensors);
    console.log(`resumed vs uninterrupted (WebGPU): max relative difference ${cr.worst.toExponential(2)}`);
    check(cr.worst < 1e-4, "the resumed run ends with the uninterrupted run's adapter");
    // The WebGPU device is lost mid-run (test-only hook, after step 2 of a run that saves a
    // checkpoint every step): a specific message, the checkpoint survives, and resume finishes
    // the run on the engine the user picks then: here the CPU (wasm), as after a GPU that is gone
    // (and fast: only 2 steps run on SwiftShader).
    const tLost = Date.now();
    await setExtra(page, { ...EXTRA, save_steps: 1, _lose_device_after_steps: 2 });
    await page.selectOption("#device", "gpu");
    await page.click("#start");
    await page.waitForFunction(() => window.honeState.error || window.honeState.done, null, {
      timeout: 300_000,
    });
    const lostMsg = (await page.textContent("#error")) ?? "";
    check(
      (await page.isVisible("#error")) &&
        /stopped at step 3: .*GPU device was lost/.test(lostMsg) &&
        /checkpoint at step 2 is kept/.test(lostMsg) &&
        /Resume the interrupted run.*checkpoint at step 2/.test(lostMsg),
      `a lost GPU device shows a specific message: ${JSON.stringify(lostMsg)}`,
    );
    check(await page.isVisible("#resume-run"), "after the lost device the page offers to resume");
    const lostFiles = await opfsFiles(page);
    const lostCkpt = await page.evaluate(() => window.honeState.savedCheckpoint);
    check(
      lostFiles.length === 1 && lostFiles[0][2] === "HONECKPT" && lostCkpt?.step === 2 && lostCkpt.bytes === lostFiles[0][1],
      `the OPFS checkpoint of step 2 is intact: ${JSON.stringify(lostFiles)}, read back whole: ${JSON.stringify(lostCkpt)}`,
    );
    await page.selectOption("#device", "cpu");
    await page.click("#resume-run");
    await page.waitForFunction(() => window.honeState.done || window.honeState.error, null, {
      timeout: 300_000,
    });
    const l = await page.evaluate(() => window.honeState);
    const lostSteps = l.losses.map((x) => x[0]).join(",");
    check(
      !l.error && /^cpu/.test(l.device ?? "") && lostSteps === "1,2,3,4,5,6",
      `it resumed at step 3 on ${l.device} and finished (steps ${lostSteps})${l.error ? `; error: ${l.error}` : ""}`,
    );
    const afterLost = await downloadAdapter(page, "adapter-device-lost.zip");
    const cl = compareAdapters(afterLost.tensors, native);
    const clg = compareAdapters(afterLost.tensors, gpu.tensors);
    console.log(
      `2 steps on WebGPU + 4 resumed on the CPU vs native: max relative difference ${cl.worst.toExponential(2)} (vs the uninterrupted WebGPU run: ${clg.worst.toExponential(2)})`,
    );
    check(cl.worst < 5e-3, "the run resumed after the lost device ends with native hone's adapter (relative 5e-3, as WebGPU vs native)");
    const gpuSteps = l.stepTimes.filter((t) => t[0] <= 2).map((t) => t[1].toFixed(1));
    console.log(`(device-lost check: ${((Date.now() - tLost) / 1000).toFixed(1)} s; its WebGPU steps took ${gpuSteps.join(", ")} s)`);

    const outside = requests.filter((u) => !u.startsWith(origin) && !u.startsWith("blob:") && !u.startsWith("data:"));
    check(outside.length === 0, `every request went to the page's own server (${outside.slice(0, 3)})`);
    await ctx.close();
  } finally {
    await browser.close();
  }

  // WebGPU disabled: the CPU engine, with the reason.
  const cpuBrowser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
  try {
    const ctx = await cpuBrowser.newContext({ acceptDownloads: true });
    const page = await ctx.newPage();
    await page.goto(pageUrl);
    await page.waitForFunction(() => window.honeState.ready || window.honeState.error, null, { timeout: 120_000 });
    await fillRun(page, { modelUrl, dataPath });
    await page.click("#start");
    await page.waitForFunction(() => window.honeState.done || window.honeState.error, null, {
      timeout: 300_000,
    });
    const s = await page.evaluate(() => window.honeState);
    check(!s.error, `the CPU fallback run finishes${s.error ? `: ${s.error}` : ""}`);
    check(/^cpu/.test(s.device ?? "") && !!s.fallbackReason, `auto fell back to the CPU: ${s.device} (${s.fallbackReason})`);
    const shown = await page.textContent("#device-used");
    check(shown.includes(s.fallbackReason ?? "?"), `the page shows why: ${shown}`);
    const cpuLosses = s.losses.map((l) => l[1]);
    console.log(`losses (wasm CPU): ${cpuLosses.map((l) => l.toFixed(4)).join(" ")}`);
    check(cpuLosses.length === OPTS.max_steps && cpuLosses.at(-1) < cpuLosses[0], "the loss falls");
    const cpu = await downloadAdapter(page, "adapter-cpu.zip");
    const cc = compareAdapters(cpu.tensors, native);
    console.log(`wasm CPU vs native CPU: max relative difference ${cc.worst.toExponential(2)} (${cc.note})`);
    check(cc.worst < 3e-3, "the wasm CPU adapter equals native hone's (relative 3e-3)");

    // Out of storage quota: the origin gets 1 KiB (less than it already uses), so every
    // checkpoint write fails. The run is paused at once (the pause saves a checkpoint too).
    const tQuota = Date.now();
    const cdp = await ctx.newCDPSession(page);
    await cdp.send("Storage.overrideQuotaForOrigin", { origin, quotaSize: 1024 });
    await setExtra(page, { ...EXTRA, save_steps: 1 });
    await page.click("#start");
    await page.click("#pause");
    await page.waitForFunction(() => window.honeState.pausedAt != null || window.honeState.error, null, {
      timeout: 120_000,
    });
    const q = await page.evaluate(() => window.honeState);
    const quotaMsg = (await page.textContent("#warning")) ?? "";
    check(
      !q.error &&
        (await page.isVisible("#warning")) &&
        /Out of storage quota/.test(quotaMsg) &&
        new RegExp(`checkpoint at step ${q.pausedAt} was not saved`).test(quotaMsg) &&
        /press Resume/.test(quotaMsg) &&
        /Free space/.test(quotaMsg),
      `out of quota shows a specific warning (paused at step ${q.pausedAt}): ${JSON.stringify(quotaMsg)}`,
    );
    check(/no checkpoint saved/.test(await page.textContent("#notice")), "the pause says no checkpoint was saved");
    const quotaFiles = await opfsFiles(page);
    check(quotaFiles.length === 0, `no half-written checkpoint is left in OPFS: ${JSON.stringify(quotaFiles)}`);
    await page.click("#resume");
    await page.waitForFunction(() => window.honeState.done || window.honeState.error, null, { timeout: 300_000 });
    const qd = await page.evaluate(() => window.honeState);
    const qSteps = qd.losses.map((x) => x[0]).join(",");
    check(!qd.error && qSteps === "1,2,3,4,5,6", `the run goes on after the failed checkpoints and finishes (steps ${qSteps})`);
    const quotaAdapter = await downloadAdapter(page, "adapter-quota.zip");
    const cq = compareAdapters(quotaAdapter.tensors, cpu.tensors);
    check(cq.worst < 1e-6, `no training state was lost: the adapter equals the CPU run's (${cq.worst.toExponential(2)})`);
    // A reload after a failed checkpoint must not offer a resume that cannot work.
    // (paused, so that it cannot end, and delete its record, before the reload)
    await page.click("#start");
    await page.click("#pause");
    await page.waitForFunction(() => window.honeState.pausedAt != null || window.honeState.error);
    check((await page.evaluate(() => window.honeState.warnings.length)) > 0, "the second run warns too");
    await page.reload();
    await page.waitForFunction(() => window.honeState.ready || window.honeState.error, null, { timeout: 120_000 });
    check(
      (await page.evaluate(() => !!localStorage.getItem("hone-demo-session"))) &&
        !(await page.isVisible("#resume-run")) &&
        !(await page.isVisible("#error")),
      "after a reload with no checkpoint saved, the page offers no resume",
    );
    // A damaged checkpoint (as a cut-off write would leave) is checked on read and not offered.
    await cdp.send("Storage.overrideQuotaForOrigin", { origin });
    await page.evaluate(async () => {
      const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle("hone", { create: true });
      const w = await (await dir.getFileHandle("default.ckpt", { create: true })).createWritable();
      await w.write(new TextEncoder().encode("HONECKPT\x01\x00\x00\x00\xff\x00\x00\x00{"));
      await w.close();
    });
    await page.reload();
    await page.waitForFunction(() => window.honeState.ready || window.honeState.error, null, { timeout: 120_000 });
    const damaged = (await page.textContent("#warning")) ?? "";
    check(
      !(await page.isVisible("#resume-run")) && (await page.isVisible("#warning")) && /unreadable/.test(damaged),
      `a damaged checkpoint is not offered for resuming: ${JSON.stringify(damaged)}`,
    );
    check((await opfsFiles(page)).length === 0, "and it was deleted");
    console.log(`(out-of-quota check: ${((Date.now() - tQuota) / 1000).toFixed(1)} s)`);
    await ctx.close();
  } finally {
    await cpuBrowser.close();
    server.close();
  }
  console.log(failures ? `${failures} check(s) failed` : "all browser checks passed");
  process.exit(failures ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

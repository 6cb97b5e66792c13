// Diagnostic (not in make test): one training step of the tiny model in the page, on WebGPU or
// the CPU engine (DEV=gpu|cpu), printing the first-step loss. With LoRA B = 0 the first loss is
// the base model's forward alone, so GPU and CPU must agree. It showed the WebGPU attention bug
// (MSL=8: gpu 26.1692 vs cpu 28.6602); since the fix, gpu 28.660175 vs cpu 28.660165.
// Usage (after `make wasm test-browser` set things up):
//   TINY=~/.cache/hone/tiny-models/tiny-llama-q8_0.gguf DEV=gpu MSL=32 node tests/browser/gpu_first_step.mjs
import { chromium } from "playwright-core";
import { serve } from "../../www/serve.mjs";
import { fileURLToPath } from "node:url";
import { writeFileSync, copyFileSync, mkdirSync } from "node:fs";
const OUT = fileURLToPath(new URL("./output", import.meta.url));
mkdirSync(OUT, { recursive: true });
copyFileSync(process.env.TINY, OUT + "/dbg.gguf");
const words = ["red", "green", "blue", "black", "white", "pink"];
const rows = [];
for (let i = 0; i < 24; i++) rows.push(JSON.stringify({ q: `${words[i % 6]} ${i}`, a: i % 2 ? "odd" : "even" }));
writeFileSync(OUT + "/dbg.jsonl", rows.join("\n") + "\n");
const server = await serve(0);
const origin = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--headless=new","--no-sandbox","--disable-gpu","--enable-unsafe-webgpu","--no-first-run","--disable-dev-shm-usage", ...(process.env.XFLAGS?[process.env.XFLAGS]:[])] });
const page = await (await browser.newContext()).newPage();
page.on("console", (m) => console.log(`[console ${m.type()}] ${m.text()}`));
page.on("worker", (w) => { console.log("worker " + w.url()); w.on("console", (m) => console.log(`[worker ${m.type()}] ${m.text()}`)); });
page.on("crash", () => console.log("PAGE CRASH")); page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
await page.goto(`${origin}/www/`);
await page.waitForFunction(() => window.honeState.ready || window.honeState.error, null, { timeout: 120000 });
await page.fill("#model-url", `${origin}/tests/browser/output/dbg.gguf`);
await page.click("#load-model-url");
await page.waitForFunction(() => window.honeState.model || window.honeState.error, null, { timeout: 120000 });
await page.setInputFiles("#data-file", OUT + "/dbg.jsonl");
await page.waitForFunction(() => window.honeState.dataset || window.honeState.error);
await page.fill("#template", "{q} -> {a}");
await page.fill("#max_steps", "1"); await page.setChecked("#completion-only", true); await page.fill("#lora_r","4"); await page.fill("#lora_alpha","8"); await page.fill("#learning_rate","0.005"); await page.fill("#seed","7");
await page.fill("#per_device_train_batch_size", "4");
await page.fill("#max_seq_len", process.env.MSL ?? "32"); await page.fill("#train_split", "train");
await page.selectOption("#device", process.env.DEV ?? "gpu");
await page.click("#start");
await page.waitForFunction(() => window.honeState.done || window.honeState.error, null, { timeout: 300000 });
const st = await page.evaluate(() => window.honeState);
console.log(JSON.stringify({ device: st.device, error: st.error, losses: st.losses }));
await browser.close(); server.close();

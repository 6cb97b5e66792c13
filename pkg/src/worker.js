// hone's Web Worker: owns the wasm module, the model, the dataset and the run, so the page
// never freezes. Requests are {id, op, args}; replies are {id, ok, result | error}; streamed
// events are {id, event, data}. Training steps one optimizer step at a time and yields to the
// event loop between steps, so pause/resume/cancel messages arrive in time.

import init, {
  WasmModel,
  WasmDataset,
  WasmAdapter,
  RunPlan,
  startRun,
  checkpointInfo,
  lastPanic,
  defaultConfig,
} from "../wasm/hone_wasm.js";
import { zipStored } from "./zip.js";

const MODEL_CACHE = "hone-models-v1";
const OPFS_DIR = "hone";
/** The wasm32 heap ends at 4 GiB: the model file plus working memory must fit in it. */
export const WASM_HEAP_BYTES = 4 * 1024 ** 3;

let model = null;
let modelName = null;
let dataset = null;
let run = null;
/** The step of the checkpoint the run was resumed from (it is in OPFS), or null. */
let resumedFrom = null;
let control = { paused: false, cancelled: false, wake: null };

/** hone's message for an error thrown by wasm (a panic's message when it was one). */
function message(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    const p = lastPanic();
    return p ?? `hone crashed: ${e.message}`;
  }
  if (e && e.name === "QuotaExceededError") {
    return `out of storage quota in the browser's origin storage (OPFS): ${e.message}`;
  }
  return e instanceof Error ? e.message : String(e);
}

/** Bytes a model of `size` bytes needs in the wasm heap (file + working memory). */
export function heapNeeded(size) {
  return Math.ceil(size * 1.15) + 256 * 1024 ** 2;
}

function checkFits(size, name) {
  if (size == null) return;
  const need = heapNeeded(size);
  if (need > WASM_HEAP_BYTES) {
    const gib = (b) => (b / 1024 ** 3).toFixed(2);
    throw new Error(
      `${name} is too big for the browser: it needs about ${gib(need)} GiB of wasm memory and a tab has at most ${gib(WASM_HEAP_BYTES)} GiB; pick a smaller or more quantized model`,
    );
  }
}

/** Fetch `url` with progress, from Cache Storage when it is there. */
async function fetchModel(url, progress) {
  const cache = typeof caches !== "undefined" ? await caches.open(MODEL_CACHE) : null;
  let resp = cache ? await cache.match(url) : undefined;
  const cached = !!resp;
  if (!resp) {
    resp = await fetch(url);
    if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status} ${resp.statusText}`);
  }
  const total = Number(resp.headers.get("content-length")) || null;
  checkFits(total, url);
  const reader = resp.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    progress({ loaded, total, cached });
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  if (cache && !cached) {
    try {
      await cache.put(url, new Response(bytes, { headers: { "content-length": String(loaded) } }));
    } catch (e) {
      progress({ loaded, total, cached, warning: `the model was not cached: ${message(e)}` });
    }
  }
  return bytes;
}

async function opfsDir(create) {
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle(OPFS_DIR, { create });
}

function ckptName(runId) {
  return `${runId.replace(/[^A-Za-z0-9_-]/g, "_")}.ckpt`;
}

/**
 * Write a checkpoint atomically: createWritable writes a swap file and moves it over the
 * checkpoint only on close, so a failed write (out of quota) leaves the previous checkpoint as
 * it was; when there was none, the empty file `getFileHandle` made is removed again, so no
 * half-made checkpoint is ever where a resume reads (and reads check the bytes in full anyway).
 */
async function saveCheckpoint(runId, bytes) {
  const dir = await opfsDir(true);
  const name = ckptName(runId);
  const existed = await dir.getFileHandle(name).then(
    () => true,
    () => false,
  );
  let w = null;
  try {
    const fh = await dir.getFileHandle(name, { create: true });
    w = await fh.createWritable();
    await w.write(bytes);
    await w.close();
  } catch (e) {
    await w?.abort().catch(() => {});
    if (!existed) await dir.removeEntry(name).catch(() => {});
    throw e;
  }
}

/** Why a checkpoint write failed, what it means for the run and what to do. */
function checkpointWarning(step, e, paused) {
  const what = `the checkpoint at step ${step} was not saved`;
  if (e && e.name === "QuotaExceededError") {
    return (
      `Out of storage quota: ${what} (this site's storage in the browser, OPFS, is full). ` +
      `${paused ? "The run is paused and its state is kept in memory: press Resume to go on" : "Training goes on"}, ` +
      `but a reload cannot resume from step ${step}. Free space (clear other sites' data, or this site's cached models) for the next checkpoints.`
    );
  }
  return `${what}: ${message(e)}. Training ${paused ? "is paused and can go on" : "goes on"}, but a reload cannot resume from step ${step}.`;
}

/** The checkpoint of `runId` when it is whole: {step, bytes}, {unreadable: reason}, or null. */
async function checkedCheckpoint(runId) {
  const b = await loadCheckpoint(runId);
  if (!b) return null;
  try {
    return { ...JSON.parse(checkpointInfo(b)), bytes: b.length };
  } catch (e) {
    return { unreadable: message(e) };
  }
}

async function loadCheckpoint(runId) {
  try {
    const dir = await opfsDir(false);
    const fh = await dir.getFileHandle(ckptName(runId));
    return new Uint8Array(await (await fh.getFile()).arrayBuffer());
  } catch (e) {
    if (e && (e.name === "NotFoundError" || e.name === "TypeError")) return null;
    throw e;
  }
}

async function deleteCheckpoint(runId) {
  try {
    const dir = await opfsDir(false);
    await dir.removeEntry(ckptName(runId));
  } catch (e) {
    if (!e || e.name !== "NotFoundError") throw e;
  }
}

const ops = {
  async init() {
    await init();
    return {
      webgpu: typeof navigator !== "undefined" && !!navigator.gpu,
      defaults: JSON.parse(defaultConfig()),
      heapBytes: WASM_HEAP_BYTES,
    };
  },

  async loadModel({ url, bytes, name, size }, emit) {
    checkFits(size, name ?? url);
    if (url) bytes = await fetchModel(url, (p) => emit("progress", p));
    const label = name ?? (url ? url.split("/").pop() : "model.gguf");
    model?.free();
    model = null;
    model = WasmModel.fromGguf(bytes, label);
    modelName = label;
    return JSON.parse(model.info());
  },

  async loadDataset({ bytes, text, name, format }) {
    if (text != null) bytes = new TextEncoder().encode(text);
    dataset?.free();
    dataset = null;
    dataset = WasmDataset.parse(bytes, name, format ?? undefined);
    return { rows: dataset.rows, name };
  },

  async preview({ config, n }) {
    need();
    return JSON.parse(dataset.preview(model, JSON.stringify(config), n ?? 3));
  },

  /** {step, bytes} of a whole checkpoint, {unreadable: reason} of a damaged one, or null. */
  async hasCheckpoint({ runId }) {
    return checkedCheckpoint(runId);
  },

  async deleteCheckpoint({ runId }) {
    await deleteCheckpoint(runId);
    return true;
  },

  async start({ config, device, runId, resume }) {
    need();
    run?.free();
    run = null;
    const ckpt = resume ? await loadCheckpoint(runId) : null;
    if (resume && !ckpt) throw new Error(`no checkpoint of run '${runId}' in this browser's storage`);
    const plan = RunPlan.new(model, dataset, JSON.stringify(config), ckpt ?? undefined);
    const summary = plan.summary;
    const resolved = JSON.parse(plan.config);
    run = await startRun(plan, device ?? "auto");
    resumedFrom = ckpt ? Number(run.step) : null;
    control = { paused: false, cancelled: false, wake: null };
    return {
      device: run.device,
      fallbackReason: run.fallbackReason ?? null,
      step: Number(run.step),
      totalSteps: Number(run.totalSteps),
      summary,
      config: resolved,
      resumed: !!ckpt,
    };
  },

  /** Train until done, paused or cancelled, streaming each step's stats. */
  async train({ runId }, emit) {
    if (!run) throw new Error("no run: call start first");
    let tokens = 0;
    let steps = 0;
    let saved = resumedFrom; // the step of the last checkpoint in OPFS
    const t0 = performance.now();
    while (!run.done) {
      if (control.cancelled) return { stopped: "cancelled", step: Number(run.step) };
      if (control.paused) {
        const step = Number(run.step);
        const ok = await saveCheckpoint(runId, await run.checkpoint()).then(
          () => true,
          (e) => {
            emit("warning", { message: checkpointWarning(step, e, true), step });
            return false;
          },
        );
        if (ok) saved = step;
        emit("paused", { step, saved: ok });
        await new Promise((r) => (control.wake = r));
        control.wake = null;
        continue;
      }
      const ts = performance.now();
      let out;
      try {
        out = JSON.parse(await run.trainStep());
      } catch (e) {
        const msg = message(e);
        if (!/device was lost/i.test(msg)) throw e;
        const at = Number(run.step) + 1;
        throw new Error(
          `WebGPU stopped at step ${at}: ${msg}. ` +
            (saved != null
              ? `The checkpoint at step ${saved} is kept in this browser's storage (OPFS).`
              : "No checkpoint of this run was saved (save_steps): start again."),
        );
      }
      const dt = (performance.now() - ts) / 1000;
      for (const ev of out.events) {
        if (ev.event === "step") {
          tokens += ev.input_tokens;
          steps += 1;
          const elapsed = (performance.now() - t0) / 1000;
          emit("step", {
            ...ev,
            seconds: dt,
            tokensPerSecond: ev.input_tokens / Math.max(dt, 1e-9),
            meanTokensPerSecond: tokens / Math.max(elapsed, 1e-9),
            totalSteps: out.totalSteps,
            etaSeconds: ((out.totalSteps - ev.step) * elapsed) / steps,
          });
        } else {
          emit(ev.event, ev);
        }
      }
      if (out.checkpoint) {
        const bytes = run.takeCheckpoint();
        try {
          await saveCheckpoint(runId, bytes);
          saved = out.step;
          emit("checkpoint", { step: out.step, bytes: bytes.length });
        } catch (e) {
          emit("warning", { message: checkpointWarning(out.step, e, false), step: out.step });
        }
      }
      // Let pause / cancel messages in (the CPU engine's steps never yield on their own).
      await new Promise((r) => setTimeout(r, 0));
    }
    return { stopped: "done", step: Number(run.step), adapterFrom: run.adapterFrom };
  },

  async adapterZip() {
    if (!run) throw new Error("no run: train first");
    const a = await run.adapter();
    try {
      return zipStored([
        { name: "adapter/adapter_config.json", data: a.configJson() },
        { name: "adapter/adapter_model.safetensors", data: a.safetensors() },
      ]);
    } finally {
      a.free();
    }
  },

  async adapterFiles() {
    if (!run) throw new Error("no run: train first");
    const a = await run.adapter();
    try {
      return { config: a.configJson(), safetensors: a.safetensors() };
    } finally {
      a.free();
    }
  },

  async generate({ prompt, options, withAdapter }, emit) {
    if (!model) throw new Error("no model loaded");
    const cb = (piece) => {
      emit("token", piece);
      return true;
    };
    const opts = JSON.stringify(options ?? {});
    if (withAdapter) {
      if (!run) throw new Error("no adapter yet: train first");
      const a = await run.adapter();
      try {
        return model.generateWithAdapter(a, prompt, opts, cb);
      } finally {
        a.free();
      }
    }
    return model.generate(prompt, opts, cb);
  },
};

function need() {
  if (!model) throw new Error("no model loaded: load a model first");
  if (!dataset) throw new Error("no dataset loaded: load a dataset first");
}

self.onmessage = async (e) => {
  const { id, op, args } = e.data;
  if (op === "pause") {
    control.paused = true;
    return;
  }
  if (op === "resume") {
    control.paused = false;
    control.wake?.();
    return;
  }
  if (op === "cancel") {
    control.cancelled = true;
    control.paused = false;
    control.wake?.();
    return;
  }
  const f = ops[op];
  if (!f) {
    self.postMessage({ id, ok: false, error: `unknown operation '${op}'` });
    return;
  }
  const emit = (event, data) => self.postMessage({ id, event, data });
  try {
    const result = await f(args ?? {}, emit);
    const transfer = result instanceof Uint8Array ? [result.buffer] : [];
    self.postMessage({ id, ok: true, result }, transfer);
  } catch (err) {
    self.postMessage({ id, ok: false, error: message(err) });
  }
};

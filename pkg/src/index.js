// hone in the browser: the main-thread API. Everything heavy runs in a Web Worker
// (worker.js: the wasm module, the model, the run); these methods send it requests and return
// promises. Option names are the CLI's (`hone finetune`), e.g. {lora_r: 8, learning_rate: 1e-3}.

/** The wasm32 heap limit (4 GiB). */
export const WASM_HEAP_BYTES = 4 * 1024 ** 3;

/** Bytes a model file of `size` bytes needs in the wasm heap (file + working memory). */
export function heapNeeded(size) {
  return Math.ceil(size * 1.15) + 256 * 1024 ** 2;
}

/** An error from hone (the message is hone's). */
export class HoneError extends Error {
  constructor(message) {
    super(message);
    this.name = "HoneError";
  }
}

function formatOf(name) {
  const ext = (name.split(".").pop() || "").toLowerCase();
  return ["jsonl", "json", "csv", "tsv", "txt", "ndjson"].includes(ext)
    ? ext === "txt"
      ? "text"
      : ext
    : undefined;
}

export class Hone {
  /** Start the worker and the wasm module. */
  static async create({ workerUrl } = {}) {
    const url = workerUrl ?? new URL("./worker.js", import.meta.url);
    const worker = new Worker(url, { type: "module" });
    const h = new Hone(worker);
    h.info = await h.#call("init");
    return h;
  }

  #worker;
  #next = 1;
  #pending = new Map();

  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = (e) => this.#onMessage(e.data);
    worker.onerror = (e) => {
      const err = new HoneError(`the hone worker failed: ${e.message ?? "unknown error"}`);
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
    };
  }

  #onMessage(m) {
    const p = this.#pending.get(m.id);
    if (!p) return;
    if (m.event) {
      p.onEvent?.(m.event, m.data);
      return;
    }
    this.#pending.delete(m.id);
    if (m.ok) p.resolve(m.result);
    else p.reject(new HoneError(m.error));
  }

  #call(op, args, onEvent, transfer = []) {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, onEvent });
      this.#worker.postMessage({ id, op, args }, transfer);
    });
  }

  /**
   * Load a GGUF model from a URL (cached in Cache Storage), a File/Blob or bytes.
   * `onProgress({loaded, total, cached})` follows a download. A model too big for the wasm heap
   * is refused before downloading when its size is known.
   */
  async loadModel(source, { onProgress, name } = {}) {
    if (typeof source === "string") {
      return this.#call("loadModel", { url: source, name }, (ev, d) => {
        if (ev === "progress") onProgress?.(d);
      });
    }
    if (source instanceof Blob) {
      const label = name ?? source.name ?? "model.gguf";
      const need = heapNeeded(source.size);
      if (need > WASM_HEAP_BYTES) {
        throw new HoneError(
          `${label} is too big for the browser: it needs about ${(need / 1024 ** 3).toFixed(2)} GiB of wasm memory and a tab has at most 4.00 GiB; pick a smaller or more quantized model`,
        );
      }
      const bytes = new Uint8Array(await source.arrayBuffer());
      return this.#call("loadModel", { bytes, name: label, size: source.size }, null, [bytes.buffer]);
    }
    const bytes = source instanceof Uint8Array ? source : new Uint8Array(source);
    return this.#call("loadModel", { bytes, name: name ?? "model.gguf" });
  }

  /**
   * Load a dataset from a File, a URL, or an array of row objects (JSONL, JSON array, CSV,
   * TSV or text; `format` when the name does not say). Returns {rows, name}.
   */
  async loadDataset(source, { format, name } = {}) {
    if (Array.isArray(source)) {
      const text = source.map((r) => JSON.stringify(r)).join("\n");
      return this.#call("loadDataset", { text, name: name ?? "rows.jsonl", format: "jsonl" });
    }
    if (typeof source === "string") {
      const resp = await fetch(source);
      if (!resp.ok) throw new HoneError(`${source}: HTTP ${resp.status} ${resp.statusText}`);
      const bytes = new Uint8Array(await resp.arrayBuffer());
      const label = name ?? source.split("/").pop();
      return this.#call("loadDataset", { bytes, name: label, format: format ?? formatOf(label) });
    }
    const bytes = new Uint8Array(await source.arrayBuffer());
    const label = name ?? source.name ?? "data.jsonl";
    return this.#call("loadDataset", { bytes, name: label, format: format ?? formatOf(label) });
  }

  /** The first `n` training rows as the run renders them: [{line, prompt, completion}]. */
  preview(options, n = 3) {
    return this.#call("preview", { config: options, n });
  }

  /** The checkpoint of `runId` in this browser's storage (OPFS), checked in full: {step, bytes},
   * {unreadable: reason} when it is damaged, or null. */
  hasCheckpoint(runId = "default") {
    return this.#call("hasCheckpoint", { runId });
  }

  /** Delete the checkpoint of `runId`. */
  deleteCheckpoint(runId = "default") {
    return this.#call("deleteCheckpoint", { runId });
  }

  /**
   * Fine-tune with `options` (the CLI's option names). `device`: auto (WebGPU when there is an
   * adapter, else the CPU engine, with the reason), gpu or cpu. `resume`: continue from the
   * run's checkpoint in OPFS. `onProgress(event, data)` gets `start`, `step` (step, loss, lr,
   * grad_norm, tokensPerSecond, etaSeconds), `eval`, `checkpoint`, `paused`, `warning`.
   * Returns a handle with pause(), resume(), cancel() and `done` (a promise).
   */
  async finetune(options, { device = "auto", runId = "default", resume = false, onProgress } = {}) {
    const started = await this.#call("start", { config: options, device, runId, resume });
    onProgress?.("start", started);
    const done = this.#call("train", { runId }, (ev, d) => onProgress?.(ev, d));
    return {
      started,
      done,
      pause: () => this.#worker.postMessage({ op: "pause" }),
      resume: () => this.#worker.postMessage({ op: "resume" }),
      cancel: () => this.#worker.postMessage({ op: "cancel" }),
    };
  }

  /** Generate after `prompt`, streamed to `onToken`; `adapter: true` applies the trained one. */
  generate(prompt, { adapter = false, onToken, ...options } = {}) {
    return this.#call("generate", { prompt, options, withAdapter: adapter }, (ev, d) => {
      if (ev === "token") onToken?.(d);
    });
  }

  /** The trained adapter, PEFT files zipped (adapter/adapter_config.json + .safetensors). */
  async adapterZip() {
    const bytes = await this.#call("adapterZip");
    return new Blob([bytes], { type: "application/zip" });
  }

  /** The trained adapter's PEFT files as bytes: {config, safetensors}. */
  adapterFiles() {
    return this.#call("adapterFiles");
  }

  /** Stop the worker. */
  terminate() {
    this.#worker.terminate();
  }
}

// The demo page: model, dataset, options, live training, before/after generation, adapter
// download. All of hone runs in the worker behind `Hone` (pkg/src/index.js).
import { Hone } from "../pkg/src/index.js";

const $ = (id) => document.getElementById(id);
const EXAMPLE_URL = new URL("../examples/polarity.jsonl", import.meta.url).href;
const SESSION_KEY = "hone-demo-session";

/** What tests and curious people can read: the page's state. */
const state = (window.honeState = {
  ready: false,
  model: null,
  dataset: null,
  losses: [],
  /** [step, seconds, input tokens] of each step. */
  stepTimes: [],
  evals: [],
  device: null,
  fallbackReason: null,
  running: false,
  done: false,
  checkpoints: [],
  /** The checkpoint the page offers to resume from: {step, bytes}. */
  savedCheckpoint: null,
  warnings: [],
  error: null,
});

let hone = null;
let handle = null;
let datasetSource = null; // {name, text} of the loaded dataset, kept for resuming after reload

function showError(msg) {
  state.error = msg;
  const el = $("error");
  el.textContent = msg;
  el.hidden = !msg;
  if (msg) el.focus?.();
}

/** A problem the run goes on through (a checkpoint not saved, the model not cached): the
 * latest is shown, with how many came before it. */
function warn(msg) {
  if (msg) state.warnings.push(msg);
  const el = $("warning");
  const earlier = state.warnings.length - 1;
  el.textContent = msg ? `${msg}${earlier > 0 ? `\n(${earlier} earlier warning${earlier > 1 ? "s" : ""} of this run)` : ""}` : "";
  el.hidden = !msg;
}

function notice(msg) {
  const el = $("notice");
  el.textContent = msg;
  el.hidden = !msg;
}

/** Run `f`, showing its error on the page (never only in the console). */
async function guarded(f) {
  showError("");
  try {
    return await f();
  } catch (e) {
    showError(e?.message ?? String(e));
    return undefined;
  } finally {
    refreshButtons();
  }
}

function refreshButtons() {
  const ready = !!(hone && state.model && state.dataset);
  $("start").disabled = !ready || state.running;
  $("pause").disabled = !state.running || state.paused;
  $("resume").disabled = !state.running || !state.paused;
  $("cancel").disabled = !state.running;
  $("generate").disabled = !hone || !state.model || state.running;
  $("download").disabled = !state.trained || state.running;
}

function options() {
  const num = (id) => Number($(id).value);
  let extra = {};
  const text = $("extra-options").value.trim();
  if (text) {
    try {
      extra = JSON.parse(text);
    } catch (e) {
      throw new Error(`More options: not valid JSON (${e.message})`);
    }
  }
  return {
    text_template: $("template").value,
    completion_only: $("completion-only").checked,
    lora_r: num("lora_r"),
    lora_alpha: num("lora_alpha"),
    learning_rate: num("learning_rate"),
    max_steps: num("max_steps"),
    per_device_train_batch_size: num("per_device_train_batch_size"),
    max_seq_len: num("max_seq_len"),
    train_split: $("train_split").value,
    seed: num("seed"),
    ...extra,
  };
}

const FIELDS = ["lora_r", "lora_alpha", "learning_rate", "max_steps", "per_device_train_batch_size", "max_seq_len", "train_split", "seed"];

/** Put saved options back into the form (the inverse of `options()`). */
function applyOptions(opts) {
  const extra = { ...opts };
  $("template").value = extra.text_template ?? "";
  $("completion-only").checked = !!extra.completion_only;
  delete extra.text_template;
  delete extra.completion_only;
  for (const f of FIELDS) {
    if (f in extra) $(f).value = String(extra[f]);
    delete extra[f];
  }
  $("extra-options").value = JSON.stringify(extra);
}

async function loadModel(source, name) {
  const prog = $("model-progress");
  $("model-status").textContent = "Loading…";
  state.model = null;
  try {
    const info = await hone.loadModel(source, {
      name,
      onProgress: (p) => {
        if (p.warning) warn(p.warning);
        prog.hidden = false;
        prog.max = p.total ?? 1;
        prog.value = p.total ? p.loaded : 0;
        $("model-status").textContent = `${p.cached ? "From cache" : "Downloading"}: ${(p.loaded / 1e6).toFixed(1)} MB${p.total ? ` of ${(p.total / 1e6).toFixed(1)} MB` : ""}`;
      },
    });
    state.model = { ...info, url: typeof source === "string" ? source : null };
    $("model-status").textContent = `${info.name}: ${info.architecture}, ${info.layers} layers, hidden ${info.hiddenSize}, vocabulary ${info.vocabSize}, ${(info.weightBytes / 1e6).toFixed(1)} MB of weights.`;
  } catch (e) {
    $("model-status").textContent = "No model loaded.";
    throw e;
  } finally {
    prog.hidden = true;
  }
  await updatePreview();
}

async function loadDataset(source, name) {
  state.dataset = null;
  $("preview").replaceChildren();
  $("data-status").textContent = "Loading…";
  try {
    let text = null;
    if (typeof source === "string") {
      const r = await fetch(source);
      if (!r.ok) throw new Error(`${source}: HTTP ${r.status}`);
      text = await r.text();
    } else {
      text = await source.text();
    }
    const d = await hone.loadDataset(new Blob([text]), { name });
    datasetSource = { name, text };
    state.dataset = d;
    $("data-status").textContent = `${d.name}: ${d.rows} rows.`;
  } catch (e) {
    $("data-status").textContent = "No dataset loaded.";
    throw e;
  }
  // A row the template cannot render is reported here (and again by Start, which refuses it).
  await updatePreview();
}

async function updatePreview() {
  if (!state.model || !state.dataset) return;
  const rows = await hone.preview(options(), 3);
  $("preview").replaceChildren(
    ...rows.map((r) => {
      const li = document.createElement("li");
      const b = document.createElement("b");
      b.textContent = r.completion;
      li.append(`row ${r.line}: ${r.prompt}`, b);
      return li;
    }),
  );
}

function drawChart() {
  const c = $("loss-chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const pts = state.losses;
  if (pts.length === 0) return;
  const pad = 30;
  const maxStep = Math.max(state.totalSteps ?? 1, pts[pts.length - 1][0]);
  const all = [...pts.map((p) => p[1]), ...state.evals.map((p) => p[1])];
  const lo = Math.min(...all);
  const hi = Math.max(...all);
  const x = (s) => pad + ((c.width - 2 * pad) * s) / maxStep;
  const y = (l) => c.height - pad - ((c.height - 2 * pad) * (l - lo)) / Math.max(hi - lo, 1e-9);
  g.strokeStyle = "#c5ccd6";
  g.beginPath();
  g.moveTo(pad, pad);
  g.lineTo(pad, c.height - pad);
  g.lineTo(c.width - pad, c.height - pad);
  g.stroke();
  g.fillStyle = "#4a5563";
  g.font = "11px system-ui";
  g.fillText(hi.toFixed(3), 2, pad);
  g.fillText(lo.toFixed(3), 2, c.height - pad);
  g.fillText(`step ${maxStep}`, c.width - pad - 40, c.height - 8);
  g.strokeStyle = "#2f6fcb";
  g.lineWidth = 2;
  g.beginPath();
  pts.forEach(([s, l], i) => (i ? g.lineTo(x(s), y(l)) : g.moveTo(x(s), y(l))));
  g.stroke();
  g.fillStyle = "#d97706";
  for (const [s, l] of state.evals) g.fillRect(x(s) - 3, y(l) - 3, 6, 6);
}

function fmtTime(s) {
  if (!Number.isFinite(s)) return "–";
  return s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(0)} s`;
}

function onProgress(ev, d) {
  if (ev === "start") {
    state.device = d.device;
    state.fallbackReason = d.fallbackReason;
    state.totalSteps = d.totalSteps;
    $("device-used").textContent = d.fallbackReason ? `${d.device} (${d.fallbackReason})` : d.device;
    $("step-info").textContent = `${d.step} / ${d.totalSteps}`;
    notice(d.resumed ? `Resumed from the checkpoint at step ${d.step}. ${d.summary}` : d.summary);
  } else if (ev === "step") {
    state.losses.push([d.step, d.loss]);
    state.stepTimes.push([d.step, d.seconds, d.input_tokens]);
    $("step-info").textContent = `${d.step} / ${d.totalSteps}`;
    $("loss-info").textContent = d.loss.toFixed(4);
    $("tps").textContent = d.meanTokensPerSecond.toFixed(1);
    $("eta").textContent = fmtTime(d.etaSeconds);
    drawChart();
  } else if (ev === "eval") {
    state.evals.push([d.step, d.loss]);
    drawChart();
  } else if (ev === "checkpoint") {
    state.checkpoints.push(d.step);
  } else if (ev === "paused") {
    state.pausedAt = d.step;
    notice(`Paused at step ${d.step} (${d.saved ? "checkpoint saved" : "no checkpoint saved: see the warning"}).`);
  } else if (ev === "warning") {
    warn(d.message);
  }
}

function saveSession(opts, device) {
  try {
    localStorage.setItem(
      SESSION_KEY,
      JSON.stringify({ modelUrl: state.model?.url, options: opts, device, dataset: datasetSource }),
    );
  } catch (e) {
    state.warnings.push(`the run cannot be resumed after a reload: ${e.message}`);
  }
}

async function train(resume, saved = null) {
  const opts = saved?.options ?? options();
  const device = saved?.device ?? $("device").value;
  state.running = true;
  state.paused = false;
  state.pausedAt = null;
  state.done = false;
  state.warnings = [];
  warn("");
  if (!resume) {
    state.losses = [];
    state.evals = [];
    state.checkpoints = [];
    state.stepTimes = [];
  }
  refreshButtons();
  try {
    saveSession(opts, device);
    handle = await hone.finetune(opts, { device, resume, onProgress });
    if (state.paused) handle.pause(); // Pause was pressed while the run was starting
    const end = await handle.done;
    state.trained = true;
    if (end.stopped === "done") {
      state.done = true;
      notice(`Done: ${end.step} steps; the adapter is from ${end.adapterFrom}.`);
      await hone.deleteCheckpoint();
      localStorage.removeItem(SESSION_KEY);
      $("resume-run").hidden = true;
    } else {
      notice(`Cancelled at step ${end.step}.`);
    }
  } catch (e) {
    const msg = e?.message ?? String(e);
    const saved = await hone.hasCheckpoint().catch(() => null);
    if (saved?.step != null) {
      state.savedCheckpoint = saved;
      $("resume-run").hidden = false;
      throw new Error(
        `${msg}\nPress "Resume the interrupted run" to continue from the checkpoint at step ${saved.step} (on the device chosen above: WebGPU again, or CPU (wasm) if the GPU keeps failing).`,
      );
    }
    throw e;
  } finally {
    state.running = false;
    handle = null;
  }
}

async function resumeInterrupted() {
  const s = JSON.parse(localStorage.getItem(SESSION_KEY) ?? "null");
  if (!s) throw new Error("nothing to resume: the page has no record of an interrupted run");
  applyOptions(s.options);
  if (!state.model) {
    if (!s.modelUrl) throw new Error("the run used a local model file: load it again, then press Resume");
    await loadModel(s.modelUrl);
  }
  if (!state.dataset) {
    if (!s.dataset) throw new Error("the run's dataset was not kept: load it again, then press Resume");
    await loadDataset(new Blob([s.dataset.text]), s.dataset.name);
  }
  // The device chosen now (set to the run's at page load): after a lost GPU, CPU is an option.
  await train(true, { ...s, device: $("device").value });
}

async function generateBoth() {
  const prompt = $("prompt").value;
  const opts = { max_new_tokens: 16 };
  for (const [id, adapter] of [
    ["gen-before", false],
    ["gen-after", true],
  ]) {
    const out = $(id);
    if (adapter && !state.trained) {
      out.textContent = "(train first)";
      continue;
    }
    out.textContent = "";
    const text = await hone.generate(prompt, { ...opts, adapter, onToken: (t) => (out.textContent += t) });
    if (!text) out.textContent = "(nothing: the model ended the text at once)";
  }
  state.generated = (state.generated ?? 0) + 1;
}

async function download() {
  const blob = await hone.adapterZip();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "hone-adapter.zip";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function wire() {
  $("load-model-url").onclick = () => guarded(() => loadModel($("model-url").value));
  $("model-file").onchange = (e) =>
    guarded(() => e.target.files[0] && loadModel(e.target.files[0], e.target.files[0].name));
  $("data-file").onchange = (e) =>
    guarded(() => e.target.files[0] && loadDataset(e.target.files[0], e.target.files[0].name));
  $("use-example").onclick = () => guarded(() => loadDataset(EXAMPLE_URL, "polarity.jsonl"));
  const drop = $("drop");
  drop.ondragover = (e) => {
    e.preventDefault();
    drop.classList.add("over");
  };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) guarded(() => loadDataset(f, f.name));
  };
  for (const id of ["template", "completion-only", "train_split", "max_seq_len"]) {
    $(id).onchange = () => guarded(updatePreview);
  }
  $("start").onclick = () => guarded(() => train(false));
  $("resume-run").onclick = () => guarded(resumeInterrupted);
  $("pause").onclick = () => {
    handle?.pause();
    state.paused = true;
    refreshButtons();
  };
  $("resume").onclick = () => {
    handle?.resume();
    state.paused = false;
    notice("");
    refreshButtons();
  };
  $("cancel").onclick = () => handle?.cancel();
  $("generate").onclick = () => guarded(generateBoth);
  $("download").onclick = () => guarded(download);
}

wire();
guarded(async () => {
  hone = await Hone.create();
  if (!hone.info.webgpu) $("device-used").textContent = "CPU (this browser has no WebGPU)";
  const session = JSON.parse(localStorage.getItem(SESSION_KEY) ?? "null");
  const saved = session ? await hone.hasCheckpoint() : null;
  if (saved?.unreadable) {
    // Never offer a resume that would fail: say so, and clear the damaged checkpoint.
    await hone.deleteCheckpoint();
    localStorage.removeItem(SESSION_KEY);
    warn(`The interrupted run's checkpoint in this browser is unreadable (${saved.unreadable}), so it cannot be resumed and was deleted: start a new run.`);
  } else if (saved) {
    state.savedCheckpoint = saved;
    if (session.device) $("device").value = session.device;
    $("resume-run").hidden = false;
    notice(`An interrupted run has a checkpoint at step ${saved.step} in this browser: press "Resume the interrupted run".`);
  }
  state.ready = true;
});

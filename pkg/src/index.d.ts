// Types of hone's browser API (src/index.js).

/** The wasm32 heap limit (4 GiB). */
export declare const WASM_HEAP_BYTES: number;
/** Bytes a model file of `size` bytes needs in the wasm heap. */
export declare function heapNeeded(size: number): number;

/** An error from hone; the message is hone's own (file, row, option named). */
export declare class HoneError extends Error {}

export interface ModelInfo {
  name: string;
  architecture: string;
  layers: number;
  hiddenSize: number;
  vocabSize: number;
  maxPositions: number;
  hasChatTemplate: boolean;
  weightBytes: number;
}

export interface DownloadProgress {
  loaded: number;
  total: number | null;
  cached: boolean;
  warning?: string;
}

/** Options with the CLI's names (`hone finetune --help`), e.g. lora_r, learning_rate. */
export type FinetuneOptions = Record<string, unknown>;

export interface PreviewRow {
  line: number;
  prompt: string;
  completion: string;
}

export interface RunStart {
  device: string;
  fallbackReason: string | null;
  step: number;
  totalSteps: number;
  summary: string;
  config: FinetuneOptions;
  resumed: boolean;
}

export interface StepProgress {
  step: number;
  epoch: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens: number;
  input_tokens: number;
  seconds: number;
  tokensPerSecond: number;
  meanTokensPerSecond: number;
  totalSteps: number;
  etaSeconds: number;
}

export interface EvalProgress {
  step: number;
  loss: number;
  perplexity: number;
  best: boolean;
}

export type ProgressEvent =
  | ["start", RunStart]
  | ["step", StepProgress]
  | ["eval", EvalProgress]
  | ["checkpoint", { step: number; bytes: number }]
  | ["paused", { step: number; saved: boolean }]
  /** A checkpoint that was not saved (e.g. out of storage quota): the run goes on. */
  | ["warning", { message: string; step?: number }]
  | ["early_stop", { step: number; best_step: number }];

export interface FinetuneHandle {
  started: RunStart;
  /** Resolves when the run ends or is cancelled. */
  /** How the run ended; `adapterFrom` says which step the adapter is from (the best evaluation's with `load_best_model_at_end`). */
  done: Promise<{ stopped: "done" | "cancelled"; step: number; adapterFrom?: string }>;
  pause(): void;
  resume(): void;
  cancel(): void;
}

export interface GenerateOptions {
  adapter?: boolean;
  onToken?: (piece: string) => void;
  max_new_tokens?: number;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  repetition_penalty?: number;
  seed?: number;
  stop?: string[];
}

export declare class Hone {
  static create(opts?: { workerUrl?: string | URL }): Promise<Hone>;
  info: { webgpu: boolean; defaults: FinetuneOptions; heapBytes: number };
  loadModel(
    source: string | Blob | ArrayBuffer | Uint8Array,
    opts?: { onProgress?: (p: DownloadProgress) => void; name?: string },
  ): Promise<ModelInfo>;
  loadDataset(
    source: string | Blob | Record<string, unknown>[],
    opts?: { format?: "jsonl" | "json" | "csv" | "tsv" | "text"; name?: string },
  ): Promise<{ rows: number; name: string }>;
  preview(options: FinetuneOptions, n?: number): Promise<PreviewRow[]>;
  /** The run's checkpoint in OPFS, checked in full: its step, or why it is unreadable. */
  hasCheckpoint(
    runId?: string,
  ): Promise<{ step: number; bytes: number } | { unreadable: string } | null>;
  deleteCheckpoint(runId?: string): Promise<boolean>;
  finetune(
    options: FinetuneOptions,
    opts?: {
      device?: "auto" | "gpu" | "cpu";
      runId?: string;
      resume?: boolean;
      onProgress?: (...event: ProgressEvent) => void;
    },
  ): Promise<FinetuneHandle>;
  generate(prompt: string, opts?: GenerateOptions): Promise<string>;
  adapterZip(): Promise<Blob>;
  adapterFiles(): Promise<{ config: Uint8Array; safetensors: Uint8Array }>;
  terminate(): void;
}

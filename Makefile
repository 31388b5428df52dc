# Two commands: `make demo` and `make test`. Each builds .venv on its own first.
# On a machine without a GPU the CPU build of torch is installed before the project,
# so pip never pulls the multi-GB CUDA wheels.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
# The tested package versions (constraints.txt, made on CPython 3.11): applied when $(PY) is 3.11;
# `make install CONSTRAINTS=` resolves afresh, as does any other Python (some pins need 3.11).
PY_VERSION := $(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
CONSTRAINTS ?= $(if $(filter 3.11,$(PY_VERSION)),constraints.txt)
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# The CPU build of torch, installed first: its version from the constraints when they apply (one place
# to move it, `make lock`), else this release.
TORCH_CPU := $(if $(CONSTRAINTS),torch,torch==2.13.0)

.PHONY: demo test install lint lock clean-venv browser gpu-wheels

# --no-compile: pip would byte-compile every module of every package (~50 s of the ~120 s build);
# one import of what the stages, tests and labeler use compiles only those (~20 s), also where
# PYTHONDONTWRITEBYTECODE is set.
WARM_IMPORTS := rlhf_stack.cli, rlhf_stack.ppo.trainer, rlhf_stack.sft, rlhf_stack.reward.stage, \
	rlhf_stack.dpo.stage, rlhf_stack.evaluation.evaluate, rlhf_stack.pipeline.runner, data_tools.labeler.app, \
	transformers, trl, peft, datasets, evaluate, accelerate, accelerate.commands.launch, pytest, httpx, uvicorn; \
	from transformers import LlamaForCausalLM, LlamaForSequenceClassification

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@$(if $(CONSTRAINTS),,echo "note: no constraints file: resolving the newest versions pyproject.toml allows (untested set)")
ifneq ($(HAS_GPU),1)
	$(BIN)/pip install -q --no-compile $(PIP_C) $(TORCH_CPU)
endif
	$(BIN)/pip install -q --no-compile $(PIP_C) -e '.[dev]'
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -W ignore -c "import $(WARM_IMPORTS)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf-stack run recipes/quickstart.yaml

# The labeler's browser tests drive Debian's chromium through playwright (never playwright's
# own browser download, which cannot work offline). Installed here when missing and we are root.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the two labeler browser tests will be skipped"; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q --durations=10 tests

lint: $(STAMP)
	$(BIN)/ruff check rlhf_stack data_tools tests benchmarks

# Pin what .venv holds now (after `make install CONSTRAINTS=` and a green `make test`): the header stays.
lock: $(STAMP)
	{ grep '^#' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed -E 's/\+(cpu|cu[0-9]+)$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean-venv:
	rm -rf $(VENV)

# Every wheel benchmarks/gpu_suite.py needs on a GPU machine without network (trl 1.12.0 for the TRL
# side, the project's dependencies except torch and its CUDA libraries), into benchmarks/wheels/.
# Run where there is network; GPU_PYTHON=3.12 when the GPU machine's CPython differs from this one.
GPU_PYTHON ?=
gpu-wheels:
	$(PY) benchmarks/gpu_wheels.py $(if $(GPU_PYTHON),--python-version $(GPU_PYTHON))

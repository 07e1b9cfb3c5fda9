# Idempotent entry points: the virtual environment is built on first use and
# rebuilt only when the dependency pins change.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.sertk-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo test bench clean-demo

venv: $(STAMP)

$(STAMP): setup.py tools/requirements.txt tools/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c tools/constraints.txt torch==2.14.1 torchaudio==2.11.0
	$(PIP) install -q -c tools/constraints.txt -r tools/requirements.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

demo: venv
	cd egs/mini_emo && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ./run.sh

test: venv
	$(PY) -m pytest -q tests

bench: venv
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean-demo:
	rm -rf egs/mini_emo/data egs/mini_emo/exp egs/mini_emo/dump

# The two commands of the README: `make test` and `make demo` (and `make lab`). All set up .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lab bench gpu-check clean-demo

install: $(STAMP)

# Reinstall only when pyproject.toml changed (or the venv is missing). pip checks each download against
# the index's sha256; a download damaged in transit fails that check (seen once in CI, on Ray's 79 MB
# wheel), so a failed install is tried once more, without pip's cache.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,ray]' || \
	  { echo "pip install failed; trying once more without pip's cache" >&2; \
	    $(PY) -m pip install -q --no-cache-dir -e '.[dev,ray]'; }
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (agpnet)" >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Synthetic data -> demo sweep (papermill) -> HTML report at reports/demo/index.html
demo: $(STAMP)
	$(PY) -m agpnet synth --out data/synth --seed 0
	$(PY) -m agpnet sweep sweeps/demo.yaml --out runs/demo
	$(PY) -m agpnet report runs/demo --out reports/demo
	@echo "Report: reports/demo/index.html"

# JupyterLab from the venv on notebooks/viewer.ipynb, with the demo runs ready: the first time this makes
# the synthetic dataset and runs the demo sweep (as `make demo`, about 5 min on CPU); later the sweep
# finds its cells done. The notebooks' runs_dir "runs" finds runs/ from notebooks/ (agpnet.runfinder).
# As root (a container) JupyterLab needs --allow-root, which is then passed.
lab: $(STAMP)
	test -d data/synth || $(PY) -m agpnet synth --out data/synth --seed 0
	$(PY) -m agpnet sweep sweeps/demo.yaml --out runs/demo
	$(PY) -m jupyterlab notebooks/viewer.ipynb $$(test "$$(id -u)" = 0 && echo --allow-root)

bench: $(STAMP)
	$(PY) benchmarks/metrics_speed.py
	$(PY) benchmarks/throughput.py

# On a machine with a CUDA GPU: the CUDA tests and every GPU measurement, most important first (about
# 15 min on an H200; where one command may run only 10 min, run it in parts: see its header), logs in gpu_check/
gpu-check: $(STAMP)
	PY=$(PY) bash benchmarks/gpu_check.sh

clean-demo:
	rm -rf data/synth runs/demo reports/demo

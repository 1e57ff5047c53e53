# The README's Quick start: `make demo` and `make test`, each from a fresh clone.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test clean

# torch is pinned to the CPU wheel that ships with this machine; installing it first keeps
# pip from resolving a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m rnnkit.kernels  # builds rnnkit/csrc once (about 20 s), so no run pays for it later
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rnnkit train text

# The report's browser test needs Chromium (Debian's package); where it cannot be installed
# the test skips and says why.
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test of report.html will skip"
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache

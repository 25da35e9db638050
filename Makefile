# Two commands for a fresh machine: `make demo` (the main job, on the embedded emulator) and
# `make test` (ruff, mypy on the package, the docs site built --strict, pytest). Both create .venv
# with pip when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision come first, pinned to the builds this project is tested with; on other
# machines override, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.cogseg-installed

.PHONY: demo test lint docs bench bench-gpu soak clean test-browser notebook test-labelstudio

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cogseg demo --out demo_out

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The documentation site (mkdocs-material, API reference by mkdocstrings) into build/site/;
# offline: no plugin fetches anything at build time.
export NO_MKDOCS_2_WARNING := 1

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir build/site

test: lint
	$(BIN)/mkdocs build --strict --site-dir build/site
	$(BIN)/python -m pytest

# The review page in headless Chromium (Selenium); not part of `make test`. Installs Debian's
# chromium and chromium-driver when missing (apt-get, with sudo unless root) and the `browser`
# extra; screenshots go to build/review/.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(STAMP)
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[browser]"
	COGSEG_REVIEW_SCREENSHOTS=build/review $(BIN)/python -m pytest -m browser tests/browser

# The Label Studio export against a real Label Studio server on loopback (SQLite in a temporary
# folder); not part of `make test`. Label Studio and its Django pins get a virtual environment
# of their own, LS_VENV, kept between runs.
LS_VENV ?= build/labelstudio-venv
LS_SPEC ?= label-studio==1.23.*
test-labelstudio: $(STAMP)
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --disable-pip-version-check "$(LS_SPEC)"
	COGSEG_LABELSTUDIO_VENV=$(LS_VENV) $(BIN)/python -m pytest -m labelstudio tests/labelstudio

# Execute the benchmarking notebook and commit it with its outputs (tables and plots).
notebook: $(STAMP)
	$(BIN)/python -m notebooks.make_notebook --execute

# Every benchmark, then the tables of docs/benchmarks.md and README.md from the result files.
bench: $(STAMP)
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks table

# Every GPU figure (local SAM 2.1 labelling, batched text detection, CUDA mask decode, a
# local-model Ray actor) in at most 8 minutes on one GPU; without one it says so and exits 0.
bench-gpu: $(STAMP)
	$(BIN)/python -m benchmarks.gpu
	$(BIN)/python -m benchmarks table

soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak
	$(BIN)/python -m benchmarks table

clean:
	rm -rf $(VENV) demo_out .mypy_cache .ruff_cache .pytest_cache

# Ultralytics (AGPL-3.0: never a dependency of the package) in a venv of its own, without the
# system's packages: one epoch of yolo11n-seg from its yaml (offline, from scratch, CPU) on the
# demo's YOLO export, its loader and polygon2mask against our masks. Not part of `make test`.
ULTRALYTICS_VENV ?= build/ultralytics-venv
.PHONY: test-ultralytics test-ray-serve
# `cogseg serve --ray` as a user starts it (a Ray cluster of its own, SIGTERM, exit 0) and the
# ingress killed with jobs accepted; the quicker Ray Serve tests are part of `make test`.
test-ray-serve: $(STAMP)
	$(BIN)/python -m pytest -m ray_cluster tests/service

test-ultralytics:
	test -x $(ULTRALYTICS_VENV)/bin/python || $(PYTHON) -m venv $(ULTRALYTICS_VENV)
	$(ULTRALYTICS_VENV)/bin/python -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(ULTRALYTICS_VENV)/bin/python -m pip install -q --disable-pip-version-check ultralytics \
		-e ".[emulator]" "pytest>=8" "pytest-timeout>=2.3" "pyyaml>=6"
	YOLO_OFFLINE=1 YOLO_CONFIG_DIR=build/ultralytics-config \
		$(ULTRALYTICS_VENV)/bin/python -m pytest -m ultralytics tests/ultralytics

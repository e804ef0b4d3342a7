# Every target sets up .venv with pip when it is missing (torch comes from this machine's disk copy).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test claim long bench lint clean screenshots validate-bids

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rtdecode demo

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

# Tests too long for the 10-minute suite (marker long): SIGKILLs all over the decoder's write path, the GPU projections,
# calibration killed and resumed bit for bit, two-process (accelerate) training.
long: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m long

# MindEye2's claim on the simulator in a fair fight: five new people, pretrained / scrambled-code / scratch arms,
# each tuned on calibration data only (6 to 8 minutes on 2 lightly loaded cores; docs/calibration.md).
claim: $(STAMP)
	$(BIN)/python -m pytest -q -s -m claim tests/test_calibration_claim.py

bench: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/rtdecode bench preprocess --json | tee benchmarks/results/preprocess.json
	$(BIN)/rtdecode bench endurance --json | tee benchmarks/results/endurance.json
	$(BIN)/rtdecode bench simulate --json | tee benchmarks/results/simulate.json
	$(BIN)/rtdecode bench glm --json | tee benchmarks/results/glm.json
	$(BIN)/rtdecode bench decoder --json | tee benchmarks/results/decoder.json
	$(BIN)/rtdecode bench wire --json | tee benchmarks/results/wire.json
	$(BIN)/rtdecode bench console --json | tee benchmarks/results/console.json
	# the scanner side, the decoder and a busy process together, at TR pace (about 4 minutes)
	$(BIN)/rtdecode bench contention --json | tee benchmarks/results/contention.json
	$(BIN)/rtdecode bench betas --seeds 0 1 2 --out benchmarks/results/betas

# The demo's session through the full BIDS validator (Node from the system, the validator from npm).
validate-bids: $(STAMP)
	test -f demo-output/sessions/dataset_description.json || QT_QPA_PLATFORM=offscreen $(BIN)/rtdecode demo --headless --out demo-output
	test -x $(BIN)/bids-validator-deno || $(BIN)/python -m pip install --quiet 'bids-validator-deno>=3.0,<4'
	$(BIN)/bids-validator-deno demo-output/sessions
	$(BIN)/bids-validator-deno demo-output/sessions/derivatives/rtdecode

# docs/screenshots come from the demo's visit: a calibrated model decoding a real-time run.
screenshots: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/rtdecode demo --headless --out demo-output
	cp demo-output/screenshots/console.png demo-output/screenshots/alignment.png demo-output/screenshots/display.png demo-output/realtime_grid.png docs/screenshots/

# ruff, then the layering contracts in pyproject.toml ([tool.importlinter]; docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check rtdecode calibration gui models tests
	$(BIN)/lint-imports --no-logo --no-cache

clean:
	rm -rf $(VENV) demo-output .pytest_cache

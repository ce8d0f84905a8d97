# Every target sets up what it needs: a .venv at the repo root with the package installed (editable).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SB3_STAMP := $(VENV)/.installed-sb3-stamp

.PHONY: install test soak demo bench endurance samples clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# the [sb3] extra (stable-baselines3 and PyTorch, ~5 GB) for the tests of the integrations and the example;
# `make demo` needs only the base install
$(SB3_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,sb3]'
	touch $@

test: $(STAMP) $(SB3_STAMP)
	$(PY) -m pytest -q --durations=25

# the long versions of the integration tests (marker `soak`): see docs/performance.md for their figures
soak: $(STAMP) $(SB3_STAMP)
	$(PY) -m pytest -q -m soak

demo: $(STAMP)
	$(VENV)/bin/ppo-telemetry demo

bench: $(STAMP) $(SB3_STAMP)
	$(PY) bench/codec_validate.py
	$(PY) bench/watch_drift_cores.py
	$(PY) bench/learning.py
	$(PY) bench/telemetry_overhead.py
	$(PY) bench/sb3_overhead.py
	$(PY) bench/kafka_validator.py
	$(PY) bench/confluent_validator.py
	$(PY) bench/metrics_overhead.py
	$(PY) bench/alert_latency.py
	$(PY) bench/signal_quality.py

endurance: $(STAMP)
	$(PY) bench/endurance.py

samples: $(STAMP)
	$(PY) -m ppo_telemetry.samples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

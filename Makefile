# The two commands of the README:
#   make demo   - install what the demo needs and open a live monitor (JupyterLab)
#   make test   - install everything the tests need (chromium included) and run them all
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=
HTTP_PORT ?= 8888

.PHONY: demo test install-app install-test chromium bench

install-app:
	$(PIP) install --quiet --disable-pip-version-check -e '.[app]'

install-test:
	$(PIP) install --quiet --disable-pip-version-check -e '.[test,browser,app]'

# Debian's chromium, for the browser tests (playwright drives it; no browser download).
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
		echo "chromium: $$(command -v chromium)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && echo "chromium installed"; \
	else \
		echo "chromium: not installed and no apt-get here; browser tests will be skipped"; \
	fi

demo: install-app
	$(PYTHON) -m astropix_nbmonitor.cli demo --http-port $(HTTP_PORT)

# pytest exits 5 when it ran no test: that is a failure here, never a pass.
test: install-test chromium
	@$(PYTHON) -m pytest -p no:cacheprovider --nbval --nbval-current-env tests notebooks $(PYTEST_ARGS); \
	rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no test: failing"; exit 1; fi; \
	exit $$rc

# Every benchmark, one after the other (about 16 minutes); figures in benchmarks/README.md.
bench: install-test
	$(PYTHON) benchmarks/bench_decode.py
	$(PYTHON) benchmarks/bench_udp.py
	$(PYTHON) benchmarks/bench_monitor.py
	$(PYTHON) benchmarks/bench_cpu.py
	$(PYTHON) benchmarks/bench_stop.py
	$(PYTHON) benchmarks/bench_hub.py
	$(PYTHON) benchmarks/bench_windows.py
	$(PYTHON) benchmarks/soak.py
	$(PYTHON) benchmarks/soak.py --hits-per-readout 32
	$(PYTHON) benchmarks/bench_browser.py --chips 1,4,16
	$(PYTHON) benchmarks/bench_marks.py
	$(PYTHON) benchmarks/bench_night.py

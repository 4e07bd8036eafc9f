# The two commands of the README. Each sets up what it needs on a fresh machine (Python 3.11).
PYTHON ?= python3
VENV := .venv

.PHONY: run test

# Install and run the service on its embedded defaults (SQLite in ./data, console provider).
run:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/python sms_bulk_app.py

# Install and run the tests; those that keep data run on SQLite and again on a throwaway
# PostgreSQL server, in the same session (tests/conftest.py). As root with apt-get, Debian's nginx
# and systemd are installed for the tests that check nginx.conf and the unit with the real tools, its postgresql for the PostgreSQL tests
# (Debian keeps initdb in /usr/lib/postgresql/<version>/bin, off PATH), and nodejs and npm for the
# SMSC simulator of the SMPP tests (tests/smsc, its packages from its lock file), and chromium with
# its driver for the console's browser tests; elsewhere those tests are skipped (in CI they fail
# instead). pytest-xdist runs them TEST_JOBS at a time, an idle runner taking tests from a busy one:
# most wait on real processes, not on the CPU.
TEST_JOBS ?= 4
test:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	@missing=""; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing for the deployment, PostgreSQL, SMPP and browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if command -v npm >/dev/null; then npm ci --prefix tests/smsc --no-audit --no-fund --loglevel=error; fi
	$(VENV)/bin/ruff check .
	PATH="$$PATH:/usr/sbin" $(VENV)/bin/python -m pytest -q -n $(TEST_JOBS) --dist worksteal

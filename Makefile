# The two commands of the README. Each sets up what it needs on a fresh machine (Python 3.11).
PYTHON ?= python3
VENV := .venv

.PHONY: run test

# Install and run the service on its embedded defaults (SQLite in ./data, console provider).
run:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/python sms_bulk_app.py

# Install and run the tests. As root with apt-get, Debian's nginx and systemd are installed for
# the tests that check nginx.conf and the unit with the real tools, and its postgresql for the
# tests on a throwaway PostgreSQL server (Debian keeps initdb in /usr/lib/postgresql/<version>/bin,
# off PATH); elsewhere those tests are skipped (in CI they fail instead).
test:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	@missing=""; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing for the deployment and PostgreSQL tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(VENV)/bin/ruff check .
	PATH="$$PATH:/usr/sbin" $(VENV)/bin/python -m pytest -q

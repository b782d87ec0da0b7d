# Convenience targets; everything here is also plain pip/pytest (see CONTRIBUTING.md).
PYTHON ?= python

.PHONY: build debug asan tsan test bench clean

build:
	$(PYTHON) -m pip install -e '.[test]'

debug:
	SHARDFLOW_DEBUG=1 $(PYTHON) -m pip install -e '.[test]'

asan:
	SHARDFLOW_SANITIZE=address,undefined $(PYTHON) -m pip install -e '.[test]'

tsan:
	SHARDFLOW_SANITIZE=thread $(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest

bench:
	$(PYTHON) -m shardflow bench

clean:
	rm -rf build dist src/*.egg-info src/shardflow/*.so

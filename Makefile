# grrl: the two commands are `make demo` and `make test`; both bootstrap everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help setup test demo lint clean

help:
	@echo "make demo   run the main job on the embedded default (bootstraps the workspace)"
	@echo "make test   run every package's tests (bootstraps the workspace)"
	@echo "make setup  only bootstrap: .venv, ROS 2 wheels, colcon build, env.sh"
	@echo "make lint   ruff over the repository"

setup:
	@scripts/setup.sh

test: setup
	@scripts/run_tests.sh

demo: setup
	@scripts/demo.sh

lint: setup
	@source env.sh && ruff check .

clean:
	rm -rf build install log env.sh

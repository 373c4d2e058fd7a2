# agentguard.hardening: the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
PYTEST ?= $(VENV)/bin/python -m pytest

.PHONY: help bootstrap demo test unit netns compat sanity lint build ee molecule lab-images lab-up lab-down clean

help:
	@echo "make demo   - build the lab, harden its agent host with playbooks/harden_agent.yml, show the proof"
	@echo "make test   - every test: unit, namespace integration, ansible-test sanity, ansible-lint, build, EE, Molecule"
	@echo "parts: make unit | netns | compat | sanity | lint | build | ee | molecule | lab-up | lab-down"

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	@bash scripts/demo.sh

test: bootstrap
	@bash scripts/test.sh

unit: bootstrap
	$(PYTEST) -q -n auto tests/unit

netns: bootstrap
	@bash scripts/netns.sh

compat: bootstrap
	@bash scripts/compat.sh

sanity: bootstrap
	@bash scripts/sanity.sh

lint: bootstrap
	@bash scripts/lint.sh

build: bootstrap
	@bash scripts/build.sh

ee: bootstrap
	@bash scripts/ee.sh

molecule: bootstrap
	@bash scripts/molecule.sh

lab-images: bootstrap
	@bash lab/images.sh bookworm

lab-up: bootstrap
	@bash lab/lab.sh up

lab-down:
	@bash lab/lab.sh down

clean:
	rm -rf .cache/sanity tests/output agentguard-hardening-*.tar.gz

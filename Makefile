# The two commands of README.md. Both install what a fresh Debian machine lacks:
# cmake (pingora-core's zlib-ng build needs it) and, for the tests, the real clients.

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BUILD_DEPS := cmake
TEST_DEPS := skopeo podman curl tar gzip docker.io containerd iproute2 buildah debootstrap chromium

.PHONY: run test build-deps test-deps

run: build-deps
	cargo run --release -- serve

test: build-deps test-deps
	cargo test

build-deps:
	@./.ci/apt-ensure $(BUILD_DEPS)

test-deps:
	@./.ci/apt-ensure $(TEST_DEPS)
	@# The browser test's npm packages (playwright-core, axe-core), where npm is.
	@[ -d tests/ui/node_modules ] || ! command -v npm > /dev/null || npm ci --no-audit --no-fund --prefix tests/ui

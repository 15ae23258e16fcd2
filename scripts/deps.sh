#!/usr/bin/env bash
# Installs the Debian bookworm packages verdictd needs to build, test and run, if any is missing.
set -euo pipefail

PACKAGES=(
  cmake g++ make pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libcurl4-openssl-dev libsqlite3-dev libgtest-dev libgmock-dev
  libcpp-httplib-dev nlohmann-json3-dev libspdlog-dev
  libssl-dev python3-grpcio python3-protobuf sqlite3 openssl
  libpq-dev postgresql-15
  python3-yaml  # lint.DeployFilesAreHonest reads deploy/*.yaml
  # client/go and its test (tests/go): Go 1.19 with Debian's grpc-go 1.33, built in GOPATH mode
  # against /usr/share/gocode. golang-github-golang-protobuf-1-5-dev is named because without it
  # apt picks the protobuf 1.3 shim, and the binary panics on its first response.
  golang-go golang-google-grpc-dev golang-google-protobuf-dev protoc-gen-go protoc-gen-go-grpc
  golang-github-golang-protobuf-1-5-dev
  # client/java and its test (tests/java): Debian's grpc-java 1.41 with its code generator, and
  # the dependencies libgrpc-java does not pull in itself; netty-tcnative for TLS, since Debian's
  # netty has no JDK ALPN; JUnit 4 for its test.
  openjdk-17-jdk-headless libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java
  libnetty-java libperfmark-java libgoogle-gson-java libgoogle-common-protos-java
  libanimal-sniffer-java libgeronimo-annotation-1.3-spec-java libnetty-tcnative-java
  libnetty-tcnative-jni libguava-java junit4
  # deploy/prometheus: promtool checks and tests the alerting rules, and an e2e test scrapes
  # verdictd with a real Prometheus server on loopback.
  prometheus
)

# Extra packages for optional checks, named by argument. `deps.sh fuzz` (fuzz/run.sh): clang with
# its libFuzzer/ASan runtimes, and llvm-symbolizer to name the frames of a crash. The sanitizer
# builds (scripts/sanitize.sh) use g++, whose ASan/UBSan/TSan runtimes come with g++ itself.
# `deps.sh clang` (scripts/thread_safety.sh): clang alone, for its -Wthread-safety analysis.
# `deps.sh bench` (bench/run_all.sh): h2load.
FUZZ_PACKAGES=(clang-14 libclang-rt-14-dev llvm-14)
for extra in "$@"; do
  case "$extra" in
    fuzz) PACKAGES+=("${FUZZ_PACKAGES[@]}") ;;
    clang) PACKAGES+=(clang-14) ;;
    bench) PACKAGES+=(nghttp2-client) ;;  # h2load, the load generator of bench/
    *)
      echo "deps.sh: unknown extra '$extra' (known: fuzz, clang, bench)" >&2
      exit 2
      ;;
  esac
done

# client/node's npm packages, exactly as its committed package-lock.json pins them (npm ci), into
# client/node/node_modules (ignored by git); again only when the lock file changed.
install_node_modules() {
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/client/node"
  if [ -f "$dir/node_modules/.package-lock.json" ] &&
     [ ! "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    return 0
  fi
  echo "Installing client/node's npm packages (npm ci)" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# The Node.js client's test (client/node) needs node and npm: Debian's, unless a node with its
# own npm (e.g. NodeSource's package) is already there.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  install_node_modules
  exit 0
fi

echo "Installing missing Debian packages: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_node_modules

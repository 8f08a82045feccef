#!/usr/bin/env bash
# Everything the project needs, idempotent and quick when already done:
#   - .venv with the pinned Python packages (pyproject.toml + constraints.txt)
#   - redis-server (Debian package) for the shared profile and its tests
#   - node and npm (Debian packages when missing) and, with npm ci, the pinned AsyncAPI parser
#     in tests/asyncapi that validates docs/schemas/asyncapi.json (tests/unit/test_asyncapi_parser.py)
#   - chromium and chromium-driver (Debian packages), the console's browser tests
#   - Zipkin's server (a jar from Maven Central, through mvn; Java and Maven from Debian when
#     missing), the trace test's backend
#   - Kafka's broker (pinned jars from Maven Central, through mvn) and PostgreSQL (Debian
#     package), the postgres-kafka profile's backends
#   - rabbitmq-server (Debian package), the postgres-rabbitmq profile's broker
#   - podman, buildah, runc and debootstrap (Debian packages), the container tests
#   - the Dapr runtime and CLI (scripts/install-dapr.sh; skipped when in place)
#   - kustomize (pinned, from the Go module proxy) and Dapr's CRDs in the Go module cache, for
#     the Kubernetes manifests' tests (scripts/install-deploy-tools.sh; skipped when in place)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '[setup] %s\n' "$*"; }

python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "[setup] ERROR: Python >= 3.11 is needed ($python is $("$python" --version 2>&1))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  say "installing Python packages into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server (Debian package)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
    # The package's own service is not used: the project starts redis-server itself.
    service redis-server stop >/dev/null 2>&1 || true
  else
    say "WARNING: redis-server is missing; install it (apt-get install redis-server) for the redis profile"
  fi
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing nodejs and npm (Debian packages)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm) >/dev/null
  else
    say "WARNING: node/npm are missing; install them (apt-get install nodejs npm) for the AsyncAPI test"
  fi
fi
if command -v npm >/dev/null 2>&1; then
  # npm ci empties node_modules first, so an older stamp goes with it. --ignore-scripts: the
  # parser is plain JavaScript; the one install script in its tree only reports usage.
  node_stamp=tests/asyncapi/node_modules/.installed-$(sha256sum <tests/asyncapi/package-lock.json | cut -c1-16)
  if [ ! -e "$node_stamp" ]; then
    say "installing the AsyncAPI parser (npm ci in tests/asyncapi)"
    (cd tests/asyncapi && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    touch "$node_stamp"
  fi
fi

# The console's browser tests (tests/integration/console) drive Debian's chromium with its
# chromedriver; nothing is downloaded at test time.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium and chromium-driver (Debian packages) for the console's browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
  else
    say "WARNING: chromium/chromedriver are missing; install them (apt-get install chromium chromium-driver) for the browser tests"
  fi
fi

# Java and Maven from Debian's packages when missing; $1 = what needs them, $2 = what for.
java_and_maven() {
  if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing Java and Maven (Debian packages) for $1"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless maven) >/dev/null
    else
      say "WARNING: java/mvn are missing; install them (apt-get install default-jre-headless maven) for $2"
    fi
  fi
}

# Zipkin's server: the trace backend the trace test starts (tests/integration/test_traces.py),
# an executable jar from Maven Central (pinned and checked in scripts/versions.env), run by
# Java 17+. Skipped when the right jar is in place.
# shellcheck source=versions.env
source scripts/versions.env
zipkin_dir="${XDG_CACHE_HOME:-$HOME/.cache}/dapr-workflow-worker/zipkin"
zipkin_jar="$zipkin_dir/zipkin-server-$ZIPKIN_VERSION-exec.jar"
if ! { [ -s "$zipkin_jar" ] && echo "$ZIPKIN_SHA256  $zipkin_jar" | sha256sum -c --status; }; then
  java_and_maven "Zipkin's server" "the trace test"
  if command -v mvn >/dev/null 2>&1; then
    say "installing Zipkin server $ZIPKIN_VERSION (io.zipkin:zipkin-server exec jar, through mvn)"
    mkdir -p "$zipkin_dir"
    rm -f "$zipkin_jar"  # a damaged one: mvn would leave it in place
    mvn -q -B dependency:copy -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" \
      -DoutputDirectory="$zipkin_dir" >/dev/null \
      || { echo "[setup] ERROR: mvn could not fetch io.zipkin:zipkin-server:$ZIPKIN_VERSION (exec jar) from Maven Central" >&2; exit 1; }
    if ! echo "$ZIPKIN_SHA256  $zipkin_jar" | sha256sum -c --status; then
      rm -f "$zipkin_jar"
      echo "[setup] ERROR: $zipkin_jar does not have the SHA-256 in scripts/versions.env" >&2
      exit 1
    fi
  fi
fi

# Kafka's broker for the postgres-kafka profile (scripts/run.sh --profile postgres-kafka and
# its tests): kafka_2.13 and its runtime dependencies, copied by mvn from Maven Central into a
# cache folder per version (scripts/kafka/pom.xml), the set checked against KAFKA_LIB_SHA256.
# Skipped when that folder is complete. Run by Java 17+ (above).
kafka_lib="${XDG_CACHE_HOME:-$HOME/.cache}/dapr-workflow-worker/kafka/$KAFKA_VERSION/lib"
kafka_digest() { (cd "$1" && sha256sum -- *.jar | sha256sum | cut -d' ' -f1); }
if ! { [ -e "$kafka_lib/.complete" ] && [ "$(kafka_digest "$kafka_lib")" = "$KAFKA_LIB_SHA256" ]; }; then
  java_and_maven "Kafka's broker" "the postgres-kafka profile"
  if command -v mvn >/dev/null 2>&1; then
    say "installing Kafka $KAFKA_VERSION (org.apache.kafka:kafka_2.13 and its dependencies, through mvn)"
    rm -rf "$kafka_lib"  # a partial or damaged one: start over
    mkdir -p "$kafka_lib"
    mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies -Dkafka.version="$KAFKA_VERSION" \
      -DincludeScope=runtime -DoutputDirectory="$kafka_lib" >/dev/null \
      || { echo "[setup] ERROR: mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central" >&2; exit 1; }
    if [ "$(kafka_digest "$kafka_lib")" != "$KAFKA_LIB_SHA256" ]; then
      echo "[setup] ERROR: the jars in $kafka_lib do not have the digest in scripts/versions.env (KAFKA_LIB_SHA256)" >&2
      rm -rf "$kafka_lib"
      exit 1
    fi
    touch "$kafka_lib/.complete"
  else
    say "WARNING: mvn is missing; install it (apt-get install maven) for the postgres-kafka profile"
  fi
fi
# PostgreSQL for the same profile: Debian's server (initdb and postgres are run by
# scripts/devstack.py; the package's own cluster service is not used).
if [ ! -x /usr/lib/postgresql/15/bin/postgres ] && ! command -v postgres >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing postgresql (Debian package) for the postgres-kafka profile"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null
    service postgresql stop >/dev/null 2>&1 || true
  else
    say "WARNING: PostgreSQL is missing; install it (apt-get install postgresql) for the postgres-kafka profile"
  fi
fi

# RabbitMQ for the postgres-rabbitmq profile: Debian's server (3.10 on Debian 12), run by
# scripts/devstack.py with a node, an epmd and a data folder of its own; the package's own
# service is not used.
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing rabbitmq-server (Debian package) for the postgres-rabbitmq profile"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server) >/dev/null
    service rabbitmq-server stop >/dev/null 2>&1 || true
  else
    say "WARNING: rabbitmq-server is missing; install it (apt-get install rabbitmq-server) for the postgres-rabbitmq profile"
  fi
fi

# Containers (tests/integration/test_container.py, test_pod.py): podman with buildah and runc
# (crun fails on these machines' hybrid cgroups), and debootstrap, which builds the images'
# base from Debian's packages (no container registry is reachable here; scripts/containers.py).
if ! command -v podman >/dev/null 2>&1 || ! command -v buildah >/dev/null 2>&1 \
  || ! command -v runc >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing podman, buildah, runc and debootstrap (Debian packages) for the container tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      podman buildah runc debootstrap) >/dev/null
  else
    say "WARNING: podman/buildah/runc/debootstrap are missing; install them (as root) for the container tests"
  fi
fi

bash scripts/install-dapr.sh
# kustomize and Dapr's CRDs for the Kubernetes manifests' tests (tests/deploy)
bash scripts/install-deploy-tools.sh
say "ready"

# Shared set-up helpers for scripts/demo and scripts/test (sourced, not run).

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs Debian packages that are missing (apt-get update once, first).
ensure_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# InfluxDB 1.x server (influxd) and its CLI.
ensure_influxdb() {
    command -v influxd >/dev/null 2>&1 || ensure_packages influxdb influxdb-client
}

# PostgreSQL server binaries (initdb, postgres, in /usr/lib/postgresql/*/bin)
# for the progress-store tests, which make their own throwaway cluster.
ensure_postgresql() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || ensure_packages postgresql
}

# InfluxDB 3 Core (the server binary kept in ../shared/influxdb3, for the 3.x
# compatibility tests): unpacked into the cache, its path exported as
# OHLCD_INFLUXDB3 for the tests.
ensure_influxdb3() {
    local install="../shared/influxdb3/install"
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}/influxdb3-core"
    OHLCD_INFLUXDB3="$("$install" "$cache")"
    export OHLCD_INFLUXDB3
    echo "==> InfluxDB 3 Core: $OHLCD_INFLUXDB3"
}

# The Rust toolchain (preinstalled on our machines; rustup otherwise).
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] || {
            echo "cargo not found: install Rust from https://rustup.rs" >&2
            exit 1
        }
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
}

# Node.js and npm (for the chart library and the browser test).
ensure_node() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || ensure_packages nodejs npm
}

# Headless Chromium for the browser test (Debian package; no browser download).
ensure_chromium() {
    command -v chromium >/dev/null 2>&1 || ensure_packages chromium
}

# The chart page's npm dependencies (lightweight-charts, playwright-core), locked.
ensure_web_deps() {
    ensure_node
    if [ ! -d web/node_modules/lightweight-charts ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
        echo "==> npm ci (web/)"
        (cd web && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

# Prometheus and promtool (Debian's package), for the alert rules' tests. On a
# host that runs systemd the package also starts a Prometheus service.
ensure_prometheus() {
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || ensure_packages prometheus
}

# cargo-deb, which builds the Debian package (scripts/package).
ensure_cargo_deb() {
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "==> cargo install cargo-deb"
        cargo install cargo-deb --locked --quiet
    fi
}

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

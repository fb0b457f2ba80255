#!/usr/bin/env bash
# The peers that come as Debian packages (redis-server, rabbitmq-server), for the tests and
# benchmarks that run them side by side with fastfanout: installed when this runs as root
# with apt-get and they are missing; otherwise nothing happens and those tests skip with
# their one-line reason. FASTFANOUT_NO_APT=1 skips this step. Never fails the caller.
set -uo pipefail
packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 ||
    packages+=(rabbitmq-server)
[ ${#packages[@]} = 0 ] && exit 0
if [ "${FASTFANOUT_NO_APT:-0}" = 1 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "peers: not installing ${packages[*]} (needs root and apt-get); their tests skip" >&2
    exit 0
fi
echo "peers: installing ${packages[*]} from Debian's packages (about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { timeout 300 apt-get update -qq >/dev/null 2>&1 || true; } ||
   ! timeout 300 apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1; then
    echo "peers: apt-get could not install ${packages[*]}; their tests skip" >&2
fi
# A package's own service is not wanted: the tests start their servers on loopback ports.
for service in redis-server rabbitmq-server epmd; do
    if command -v service >/dev/null 2>&1; then
        service "$service" stop >/dev/null 2>&1 || true
    fi
done
exit 0

#!/usr/bin/env bash
# Installs and starts a local Docker engine with gVisor (runsc) registered.
# Idempotent: does nothing that is already done. Needs root (CI and dev machines are).
set -euo pipefail

log() { printf '[engine] %s\n' "$*" >&2; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
[ -x /usr/bin/runsc ] || need_pkgs+=(runsc)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# gVisor needs --network=none here: runsc refuses to start in the root netns otherwise.
# --oci-seccomp makes gVisor enforce the container's seccomp profile on the job's system
# calls (controller/sandbox/seccomp.py); without it runsc ignores the profile, and the
# executor refuses to run jobs under it.
want='{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--oci-seccomp"]}}}'
mkdir -p /etc/docker
config_changed=0
if [ ! -f /etc/docker/daemon.json ] || ! grep -q '"--oci-seccomp"' /etc/docker/daemon.json; then
  printf '%s\n' "$want" > /etc/docker/daemon.json
  config_changed=1
fi

if docker info >/dev/null 2>&1; then
  if [ "$config_changed" = 1 ]; then
    log "reloading dockerd to register runsc"
    kill -HUP "$(pidof dockerd)"
    sleep 1
  fi
else
  log "starting dockerd"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then break; fi
  sleep 1
done
docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/dockerd.log"; exit 1; }
docker info --format '{{json .Runtimes}}' | grep -q runsc || { log "runsc is not registered with dockerd"; exit 1; }
log "docker $(docker version --format '{{.Server.Version}}') ready, runtimes: $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')"

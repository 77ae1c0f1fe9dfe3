#!/bin/bash
# Checks the deployment files in deploy/: Kubernetes manifests parse and carry what a cluster
# needs (apiVersion, kind, metadata.name; workers mount the token Secret and advertise their pod
# IP; the coordinator keeps its RocksDB on a volume claim), the Slurm launcher is valid bash (and
# shellcheck-clean when shellcheck is installed), the systemd units start the daemons with a
# token file and are hardened, and the Containerfile runs as a non-root user.
# Usage: deploy_test.sh SOURCE_DIR
set -euo pipefail
SRC=$1
fail() { echo "FAIL: $*"; exit 1; }
/usr/bin/python3 - "$SRC/deploy/k8s" <<'PY' || fail "Kubernetes manifests"
import glob, sys, yaml
docs = []
for f in sorted(glob.glob(sys.argv[1] + "/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        if d is None: continue
        for key in ("apiVersion", "kind", "metadata"):
            assert key in d, f"{f}: {d.get('kind')} lacks {key}"
        assert d["metadata"].get("name"), f"{f}: unnamed {d['kind']}"
        docs.append(d)
kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
for need in [("StatefulSet", "moec-coordinator"), ("Service", "moec-coordinator"),
             ("Deployment", "moec-worker"), ("DaemonSet", "moec-worker-gpu"),
             ("Secret", "moec-token"), ("Namespace", "moec")]:
    assert need in kinds, f"missing {need}"
for d in docs:
    if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
        spec = d["spec"]["template"]["spec"]
        secrets = [v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v]
        assert "moec-token" in secrets, f"{d['metadata']['name']} does not mount the token"
        args = " ".join(spec["containers"][0]["args"])
        assert "--token-file=" in args, d["metadata"]["name"]
        if "worker" in d["metadata"]["name"]:
            assert "--advertise-host=$(POD_IP)" in args, "workers must advertise their pod IP"
    if d["kind"] == "StatefulSet":
        assert d["spec"]["volumeClaimTemplates"], "the coordinator needs a persistent volume"
    if d["kind"] == "DaemonSet":
        limits = d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" in limits, "GPU workers must request GPUs"
print(f"{len(docs)} Kubernetes objects ok")
PY
bash -n "$SRC/deploy/slurm/moec-slurm.sh" || fail "moec-slurm.sh is not valid bash"
if command -v shellcheck > /dev/null; then
  shellcheck -S warning "$SRC/deploy/slurm/moec-slurm.sh" "$SRC/tests/e2e/netns_e2e_test.sh" \
    "$SRC"/tests/quality/*.sh "$SRC"/deploy/*.sh ||
    fail "shellcheck"
fi
for unit in moec-coordinator moec-worker; do
  f="$SRC/deploy/systemd/$unit.service"
  grep -q "^ExecStart=/usr/local/bin/$unit " "$f" || fail "$unit: no ExecStart"
  grep -q -- "--token-file" "$f" || fail "$unit: no token file"
  grep -q "^User=moec" "$f" || fail "$unit: runs as root"
  grep -q "^ProtectSystem=strict" "$f" || fail "$unit: not hardened"
  grep -q "^WantedBy=multi-user.target" "$f" || fail "$unit: no [Install]"
done
grep -q "^USER moec" "$SRC/deploy/Containerfile" || fail "the container runs as root"
grep -q "^FROM debian:12" "$SRC/deploy/Containerfile" || fail "Containerfile base"
# The README's two set-up commands work as root and as a user with sudo: they are the scripts
# themselves (no `sudo` in front, which fails where root has no sudo), and the package step run
# by an unprivileged user asks for nothing when every package is there.
cmds=$(sed -n 's/^    \(.*deploy\/[a-z]*\.sh.*\)$/\1/p' "$SRC/README.md")
[ "$cmds" = "$(printf 'deploy/test.sh\ndeploy/demo.sh')" ] || fail "README set-up commands: $cmds"
for s in test demo; do
  grep -q "^deploy/ensure-packages.sh" "$SRC/deploy/$s.sh" || fail "$s.sh does not use ensure-packages.sh"
done
if [ "$(id -u)" -eq 0 ] && "$SRC/deploy/setup-debian.sh" --check > /dev/null 2>&1; then
  setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/bin:/bin \
    "$SRC/deploy/ensure-packages.sh" > /dev/null || fail "ensure-packages.sh as an unprivileged user"
fi
echo "deploy files ok"

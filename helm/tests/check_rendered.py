#!/usr/bin/env python3
"""Assertions over one `helm template` rendering of the weiling-relay chart (run by scripts/check-helm).

It merges the chart's values.yaml with the scenario's values files the way Helm does (a null deletes a
default), derives what the manifests must contain, and checks the rendering against it:
probes, shutdown arithmetic, Pod Security "restricted" fields, the config checksum, the ConfigMap's
relay.toml (every key known to config/default.toml, every value as given, no secret in it), env names,
the Secret wiring, and the optional Ingress/HPA/PDB/ServiceMonitor/NetworkPolicy.
With --relay-bin it also runs `weiling-relay check-config` on the rendered relay.toml and the pod's env.

Prints one line per failed check and a final `checks: N passed, M failed`; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11: scripts/check-helm installs tomli in its venv
    import tomli as tomllib

import yaml

CONFIG_PATH = "/etc/weiling-relay/relay.toml"
SHORTCUT_ENV = {
    "WEILING_RELAY_APP_ID": "app-id",
    "WEILING_RELAY_APP_SECRET": "app-secret",
    "WEILING_RELAY_TOKEN": "token",
    "WEILING_RELAY_ENCODING_AES_KEY": "encoding-aes-key",
}
SECRET_ENV = {
    **SHORTCUT_ENV,
    "WEILING_RELAY__AMQP__URL": "amqp-url",
    "WEILING_RELAY__SECURITY__SIGN_RECORDS_KEY": "sign-records-key",
}
# Shape-valid stand-ins for secrets the chart only references (existingSecret): used for check-config.
DUMMY_SECRET = {
    "app-id": "wloa0123456789abcdef",
    "app-secret": "dummy-app-secret",
    "token": "Tok3nTok3nTok3nTok3n",
    "encoding-aes-key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "amqp-url": "amqp://relay:dummy@rabbitmq:5672/%2f",
}
# Keys of values `config.<section>` that the chart passes by environment, not in relay.toml.
ENV_OWNED = {("server", "port"), ("server", "bindAddress"), ("server", "drainDeadlineMs"), ("server", "drainGraceMs")}
# The only kinds without a bundled schema that kubernetes-validate may skip; checked here instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# The data key of the Grafana dashboard ConfigMap (the other ConfigMap holds relay.toml).
DASHBOARD_KEY = "weiling-relay.json"


class Checker:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def check(self, cond: bool, what: str) -> bool:
        if cond:
            self.passed += 1
        else:
            self.failed.append(what)
            print(f"  FAIL: {what}")
        return cond


def merge(base: dict, override: dict) -> dict:
    """Helm's coalescing: maps merge recursively, other values replace, null deletes."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def dig(obj, *path, default=None):
    for p in path:
        if isinstance(obj, dict) and p in obj:
            obj = obj[p]
        elif isinstance(obj, list) and isinstance(p, int) and p < len(obj):
            obj = obj[p]
        else:
            return default
    return obj


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chart", required=True, type=Path)
    ap.add_argument("--values", action="append", default=[], type=Path)
    ap.add_argument("--rendered", required=True, type=Path)
    ap.add_argument("--default-toml", required=True, type=Path)
    ap.add_argument("--multi-app-example", type=Path, help="relay.toml to check-config in multi-app mode")
    ap.add_argument("--relay-bin", default="", help="weiling-relay binary for check-config; empty = skip")
    args = ap.parse_args()
    c = Checker()

    values = yaml.safe_load((args.chart / "values.yaml").read_text())
    for f in args.values:
        values = merge(values, yaml.safe_load(f.read_text()) or {})
    cfg = values["config"]
    multi_app = bool(dig(cfg, "existingSecretFile", "name"))
    sec = values["secret"]
    creates_secret = not multi_app and not sec.get("existingSecret") and sec.get("create")
    secret_name = sec.get("existingSecret") or None

    docs = [d for d in yaml.safe_load_all(args.rendered.read_text()) if d]
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    dashboards = [d for d in by_kind.get("ConfigMap", []) if DASHBOARD_KEY in (d.get("data") or {})]
    by_kind["ConfigMap"] = [d for d in by_kind.get("ConfigMap", []) if d not in dashboards]
    if not by_kind["ConfigMap"]:
        del by_kind["ConfigMap"]
    one = lambda kind: (by_kind.get(kind) or [None])[0]  # noqa: E731

    # --- which objects exist ---------------------------------------------------------------------
    expect = {
        "Deployment": True,
        "Service": True,
        "ServiceAccount": values["serviceAccount"]["create"],
        "ConfigMap": not multi_app,
        "Secret": creates_secret,
        "Ingress": values["ingress"]["enabled"],
        "HorizontalPodAutoscaler": values["autoscaling"]["enabled"],
        "PodDisruptionBudget": values["podDisruptionBudget"]["enabled"],
        "ServiceMonitor": values["serviceMonitor"]["enabled"],
        "PrometheusRule": values["prometheusRule"]["enabled"],
        "NetworkPolicy": values["networkPolicy"]["enabled"],
    }
    for kind, wanted in expect.items():
        n = len(by_kind.get(kind, []))
        c.check(n == (1 if wanted else 0), f"{kind}: expected {1 if wanted else 0} object(s), rendered {n}")
    c.check(set(by_kind) <= set(expect), f"unexpected kinds rendered: {sorted(set(by_kind) - set(expect))}")
    for d in docs:
        if "/" in d["apiVersion"] and d["apiVersion"].split("/")[0].endswith("coreos.com"):
            c.check((d["apiVersion"], d["kind"]) in CRD_KINDS, f"unknown CRD {d['apiVersion']} {d['kind']}")

    dep = one("Deployment")
    if dep is None:
        return report(c)
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    ctr = spec["containers"][0]
    c.check(len(spec["containers"]) == 1, "one container")
    sel = dep["spec"]["selector"]["matchLabels"]
    c.check(all(pod["metadata"]["labels"].get(k) == v for k, v in sel.items()), "pod labels match the selector")

    # --- replicas ------------------------------------------------------------------------------
    if values["autoscaling"]["enabled"]:
        c.check("replicas" not in dep["spec"], "no Deployment.replicas under an HPA")
    else:
        c.check(dep["spec"].get("replicas") == values["replicaCount"], "replicas = replicaCount")

    # --- probes --------------------------------------------------------------------------------
    ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
    c.check(ports.get("http") == cfg["server"]["port"], "container port `http` = config.server.port")
    c.check(dig(ctr, "livenessProbe", "httpGet", "path") == "/healthz", "liveness probe GET /healthz")
    c.check(dig(ctr, "livenessProbe", "httpGet", "port") == "http", "liveness probe on port http")
    c.check(dig(ctr, "readinessProbe", "httpGet", "path") == "/readyz", "readiness probe GET /readyz")
    c.check(dig(ctr, "readinessProbe", "httpGet", "port") == "http", "readiness probe on port http")
    if values["startupProbe"]["enabled"]:
        c.check(dig(ctr, "startupProbe", "httpGet", "path") == "/healthz", "startup probe GET /healthz")
    else:
        c.check("startupProbe" not in ctr, "no startup probe when disabled")

    # --- env -----------------------------------------------------------------------------------
    env = {e["name"]: e for e in ctr.get("env", [])}
    c.check(len(env) == len(ctr.get("env", [])), "no duplicate env names")
    default_toml = tomllib.loads(args.default_toml.read_text())
    for name, e in env.items():
        m = re.fullmatch(r"WEILING_RELAY__([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
        if m:
            section, key = m.group(1).lower(), m.group(2).lower()
            c.check(key in default_toml.get(section, {}), f"env {name} names the config key {section}.{key}")
        else:
            c.check(name in SHORTCUT_ENV or name == "RUST_LOG" or name in {x["name"] for x in values["extraEnv"]},
                    f"env {name} is a known variable")
        if name in SECRET_ENV:
            ref = dig(e, "valueFrom", "secretKeyRef")
            c.check(ref is not None and "value" not in e, f"env {name} comes from a Secret, never a literal")
            if ref:
                c.check(ref["key"] == SECRET_ENV[name], f"env {name} reads key {SECRET_ENV[name]}")
                want = secret_name or dep["metadata"]["name"]
                c.check(ref["name"] == want, f"env {name} reads Secret {want}")
    listen = dig(env, "WEILING_RELAY__SERVER__LISTEN", "value", default="")
    c.check(listen == f"{cfg['server']['bindAddress']}:{cfg['server']['port']}", "LISTEN env = bindAddress:port")
    drain_ms = int(dig(env, "WEILING_RELAY__SERVER__DRAIN_DEADLINE_MS", "value", default="0"))
    c.check(drain_ms == cfg["server"]["drainDeadlineMs"], "DRAIN_DEADLINE_MS env = config.server.drainDeadlineMs")
    grace_ms = int(dig(env, "WEILING_RELAY__SERVER__DRAIN_GRACE_MS", "value", default="-1"))
    c.check(grace_ms == cfg["server"]["drainGraceMs"], "DRAIN_GRACE_MS env = config.server.drainGraceMs")
    if multi_app:
        c.check(not (set(env) & set(SECRET_ENV)), "multi-app: no single-app secret env (they would replace [[apps]])")
    else:
        c.check(set(SHORTCUT_ENV) | {"WEILING_RELAY__AMQP__URL"} <= set(env), "single-app: every secret env set")
    if values["logLevel"]:
        c.check(dig(env, "RUST_LOG", "value") == values["logLevel"], "RUST_LOG = logLevel")

    # --- shutdown arithmetic -------------------------------------------------------------------
    sleep = values["shutdown"]["preStopSleepSeconds"]
    grace = spec.get("terminationGracePeriodSeconds", 30)
    shutdown_s = (grace_ms + drain_ms) / 1000
    c.check(grace > shutdown_s + sleep,
            f"terminationGracePeriodSeconds {grace} > preStop {sleep} s + drain grace and deadline {shutdown_s:g} s")
    c.check(grace == sleep + math.ceil(shutdown_s) + values["shutdown"]["graceMarginSeconds"],
            "terminationGracePeriodSeconds = preStop + ceil(drain grace + deadline) + margin")
    if sleep > 0:
        c.check(dig(ctr, "lifecycle", "preStop", "sleep", "seconds") == sleep, f"preStop sleeps {sleep} s")
    else:
        c.check("lifecycle" not in ctr, "no preStop hook when preStopSleepSeconds = 0")

    # --- security context (Pod Security Standards: restricted) ---------------------------------
    psc, csc = spec.get("securityContext", {}), ctr.get("securityContext", {})
    c.check(spec.get("automountServiceAccountToken") is False, "pod automountServiceAccountToken: false")
    c.check(psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot") is True, "runAsNonRoot: true")
    c.check(dig(psc, "seccompProfile", "type") == "RuntimeDefault", "pod seccompProfile RuntimeDefault")
    c.check(dig(csc, "seccompProfile", "type") == "RuntimeDefault", "container seccompProfile RuntimeDefault")
    c.check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    c.check(csc.get("privileged") is False, "privileged: false")
    c.check(dig(csc, "capabilities", "drop") == ["ALL"], "capabilities.drop: [ALL]")
    c.check(not dig(csc, "capabilities", "add"), "no capabilities added")
    c.check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem: true")
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        want = values["securityContext"].get(field)
        got = psc.get(field)
        c.check(got == want, f"pod {field} = {want}")
        if got is not None:
            c.check(got > 0, f"pod {field} is not root")
    c.check(not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), "no host namespaces")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    c.check(not any("hostPath" in v for v in vols.values()), "no hostPath volume")
    mounts = {m["mountPath"]: m for m in ctr.get("volumeMounts", [])}
    c.check("emptyDir" in vols.get(dig(mounts, "/tmp", "name", default=""), {}), "/tmp is an emptyDir")
    res = ctr.get("resources", {})
    c.check(bool(dig(res, "requests", "cpu")) and bool(dig(res, "requests", "memory")), "cpu/memory requests")
    c.check(bool(dig(res, "limits", "memory")), "memory limit")

    # --- config file -----------------------------------------------------------------------------
    c.check(ctr.get("args") == ["serve", "--config", CONFIG_PATH], f"args = serve --config {CONFIG_PATH}")
    cm_mount = mounts.get(CONFIG_PATH, {})
    c.check(cm_mount.get("readOnly") is True and cm_mount.get("subPath") == "relay.toml", "relay.toml mounted read-only")
    cvol = vols.get(cm_mount.get("name", ""), {})
    if multi_app:
        ref = cfg["existingSecretFile"]
        c.check(dig(cvol, "secret", "secretName") == ref["name"], "multi-app: config volume is the user's Secret")
        c.check(dig(cvol, "secret", "items", 0, "key") == ref["key"], "multi-app: the Secret's key is mounted")
    else:
        c.check(dig(cvol, "configMap", "name") == dig(one("ConfigMap"), "metadata", "name"), "config volume = ConfigMap")
    checksum = dig(pod, "metadata", "annotations", "checksum/config", default="")
    c.check(re.fullmatch(r"[0-9a-f]{64}", checksum) is not None, "pod annotation checksum/config (sha256)")
    if creates_secret:
        c.check(re.fullmatch(r"[0-9a-f]{64}", dig(pod, "metadata", "annotations", "checksum/secret", default="")) is not None,
                "pod annotation checksum/secret when the chart renders the Secret")

    relay_toml = None
    cm = one("ConfigMap")
    if cm is not None:
        text = cm["data"]["relay.toml"]
        try:
            relay_toml = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            c.check(False, f"ConfigMap relay.toml parses as TOML: {e}")
        if relay_toml is not None:
            c.check("apps" not in relay_toml, "ConfigMap has no [[apps]]")
            c.check("url" not in relay_toml.get("amqp", {}), "ConfigMap has no amqp.url")
            c.check("sign_records_key" not in relay_toml.get("security", {}), "ConfigMap has no sign_records_key")
            c.check(not re.search(r"(?m)^\s*(app_secret|token|encoding_aes_key)\s*=", text), "ConfigMap has no app secret keys")
            for section, table in relay_toml.items():
                if section == "events":
                    continue
                for key in table:
                    c.check(key in default_toml.get(section, {}), f"ConfigMap key {section}.{key} exists in config/default.toml")
            for section, table in cfg.items():
                if section in ("existingSecretFile", "events"):
                    continue
                for key, want in table.items():
                    if (section, key) in ENV_OWNED:
                        c.check(snake(key) not in relay_toml.get(section, {}), f"{section}.{snake(key)} left to env")
                        continue
                    got = relay_toml.get(section, {}).get(snake(key))
                    c.check(got == want, f"relay.toml {section}.{snake(key)} = {want!r} (got {got!r})")
            c.check(relay_toml.get("events") == cfg.get("events", {}), "relay.toml [events] = config.events")
    # No secret value may appear outside the Secret.
    secret_doc = one("Secret")
    if secret_doc is not None:
        data = {k: base64.b64decode(v).decode() for k, v in secret_doc.get("data", {}).items()}
        for vkey, skey in (("appId", "app-id"), ("appSecret", "app-secret"), ("token", "token"),
                           ("encodingAesKey", "encoding-aes-key"), ("amqpUrl", "amqp-url"),
                           ("signRecordsKey", "sign-records-key")):
            if sec.get(vkey):
                c.check(data.get(skey) == sec[vkey], f"Secret key {skey} = secret.{vkey}")
        others = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
        for skey, val in data.items():
            if skey != "app-id":
                c.check(val not in others, f"secret {skey} appears only in the Secret")

    # --- Service, Ingress, HPA, PDB, ServiceMonitor, NetworkPolicy ---------------------------------
    svc = one("Service")
    c.check(dig(svc, "spec", "selector") == sel, "Service selector = pod selector")
    c.check(dig(svc, "spec", "ports", 0, "targetPort") == "http" and dig(svc, "spec", "ports", 0, "name") == "http",
            "Service port http → targetPort http")
    ing = one("Ingress")
    if ing is not None:
        tls_hosts = {h for t in ing["spec"].get("tls", []) for h in t.get("hosts", [])}
        for rule in ing["spec"]["rules"]:
            c.check(rule["host"] in tls_hosts, f"Ingress host {rule['host']} has TLS")
            for p in rule["http"]["paths"]:
                c.check(p["path"].startswith("/weiling/callback"), f"Ingress exposes only the callback path ({p['path']})")
                c.check(dig(p, "backend", "service", "name") == svc["metadata"]["name"], "Ingress backend = Service")
                c.check(dig(p, "backend", "service", "port", "name") == "http", "Ingress backend port http")
    hpa = one("HorizontalPodAutoscaler")
    if hpa is not None:
        c.check(hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]},
                "HPA targets the Deployment")
        c.check(hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], "HPA min ≤ max")
    pdb = one("PodDisruptionBudget")
    if pdb is not None:
        c.check(pdb["spec"]["selector"]["matchLabels"] == sel, "PDB selector = pod selector")
        c.check(("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"]), "PDB has exactly one bound")
    sm = one("ServiceMonitor")
    if sm is not None:
        ep = dig(sm, "spec", "endpoints", 0, default={})
        c.check(ep.get("port") == "http" and ep.get("path") == "/metrics", "ServiceMonitor scrapes /metrics on port http")
        c.check(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()),
                "ServiceMonitor selects the Service")
        c.check(set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints"}, "ServiceMonitor spec fields known")
        c.check(set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"},
                "ServiceMonitor endpoint fields known")
    c.check(len(dashboards) == (1 if values["dashboard"]["enabled"] else 0),
            f"dashboard ConfigMap: expected {1 if values['dashboard']['enabled'] else 0}, rendered {len(dashboards)}")
    for board in dashboards:
        shipped = json.loads((args.chart / "files" / "dashboard.json").read_text())
        try:
            rendered = json.loads(board["data"][DASHBOARD_KEY])
        except ValueError:
            rendered = None
        c.check(rendered == shipped, "dashboard ConfigMap holds files/dashboard.json unchanged")
        labels = board["metadata"].get("labels", {})
        c.check(all(labels.get(k) == v for k, v in values["dashboard"]["labels"].items()),
                "dashboard ConfigMap carries the sidecar's label")
        c.check(bool(values["dashboard"]["labels"]), "dashboard ConfigMap has a label for the sidecar to select")
        for panel in (rendered or {}).get("panels", []):
            c.check(bool(panel.get("targets")) and all(t.get("expr") for t in panel["targets"]),
                    f"dashboard panel {panel.get('title')!r} has queries")
    rule = one("PrometheusRule")
    if rule is not None:
        shipped = yaml.safe_load((args.chart / "files" / "alerts.yaml").read_text())
        c.check(rule["spec"] == shipped, "PrometheusRule spec is files/alerts.yaml unchanged")
        labels = rule["metadata"].get("labels", {})
        c.check(all(labels.get(k) == v for k, v in values["prometheusRule"]["labels"].items()),
                "PrometheusRule carries its extra labels")
    np = one("NetworkPolicy")
    if np is not None:
        c.check(np["spec"]["podSelector"]["matchLabels"] == sel, "NetworkPolicy selects the pods")
        for rule in np["spec"].get("ingress", []):
            c.check(rule.get("ports") == [{"port": "http", "protocol": "TCP"}], "NetworkPolicy admits only port http")

    # --- the relay itself accepts the configuration -----------------------------------------------
    if args.relay_bin:
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        secret_data = {}
        if secret_doc is not None:
            secret_data = {k: base64.b64decode(v).decode() for k, v in secret_doc.get("data", {}).items()}
        for name, e in env.items():
            if "value" in e:
                run_env[name] = e["value"]
            elif (ref := dig(e, "valueFrom", "secretKeyRef")) is not None:
                val = secret_data.get(ref["key"], DUMMY_SECRET.get(ref["key"]))
                if val is not None:
                    run_env[name] = val
        with tempfile.TemporaryDirectory() as tmp:
            if multi_app:
                conf = args.multi_app_example
            else:
                conf = Path(tmp) / "relay.toml"
                conf.write_text(cm["data"]["relay.toml"])
            proc = subprocess.run([args.relay_bin, "check-config", "--config", str(conf)], env=run_env,
                                  capture_output=True, text=True, timeout=60)
            ok = c.check(proc.returncode == 0, f"weiling-relay check-config accepts the rendered config: {proc.stderr.strip()[-400:]}")
            if ok:
                merged = tomllib.loads(proc.stdout)
                c.check(merged["server"]["listen"] == listen, "check-config: server.listen from the chart")
                c.check(merged["server"]["drain_deadline_ms"] == drain_ms, "check-config: drain deadline from the chart")
                c.check(merged["server"].get("drain_grace_ms") == grace_ms, "check-config: drain grace from the chart")
                c.check(len(merged.get("apps", [])) >= 1, "check-config: at least one app")
                c.check("dummy" not in proc.stdout and "not-real" not in proc.stdout, "check-config masks secrets")
    return report(c)


def report(c: Checker) -> int:
    print(f"checks: {c.passed} passed, {len(c.failed)} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A stand-in ClusterProfile access provider (KEP-5339) for the fleet tests.

Run as a client-go exec credential plugin with provideClusterInfo: true. It
reads the cluster the ClusterProfile describes from KUBERNETES_EXEC_INFO and,
from that cluster's `client.authentication.k8s.io/exec` extension, the file
the test wrote its credentials to: {"clientCertificateData": PEM,
"clientKeyData": PEM}. Real providers fetch a token instead (a synced
secret, a cloud IAM call); the exchange with the client is the same.
"""
import json
import os
import sys

info = json.loads(os.environ.get("KUBERNETES_EXEC_INFO") or "{}")
cluster = (info.get("spec") or {}).get("cluster") or {}
config = cluster.get("config") or {}
path = config.get("credentialsFile")
if not path:
    sys.exit("access-provider stand-in: the cluster's exec extension names no credentialsFile")
with open(path) as f:
    creds = json.load(f)
json.dump(
    {
        "apiVersion": info.get("apiVersion", "client.authentication.k8s.io/v1"),
        "kind": "ExecCredential",
        "status": creds,
    },
    sys.stdout,
)

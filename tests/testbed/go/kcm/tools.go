//go:build tools

// Package tools records the commands the test bed builds from this module.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
